"""`permrl prepare`: write a prepared store (the format: `permrl.data.prepared`).

Each worker process opens the source again by its spec and fills its chunk of the store
(memory-mapped images.npy, or one clips/NNNNNN.npy per video); the store is written into
DIR.partial and renamed when whole.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from permrl.data.images import resize_short_side, resize_square
from permrl.data.sources import open_source
from permrl.data.video_sources import open_video_source

CHUNK = 256  # images per worker task


def _fill(source_spec: str, out: str, size: int, start: int, stop: int) -> list[int]:
    """Decode, resize and store items start..stop-1 of the source; returns the unreadable."""
    source = open_source(source_spec)
    images = np.load(os.path.join(out, "images.npy"), mmap_mode="r+")
    unreadable = []
    for i in range(start, stop):
        img = source.load(i)
        if img is None:
            unreadable.append(i)
            continue
        images[i] = resize_square(img, size, crop="center")
    images.flush()
    return unreadable


def _write_store(out: str | Path, source: Any, source_spec: str, size: int, workers: int,
                 progress: Any, fill: Any, setup: Any) -> tuple[Path, dict[str, Any]]:
    """Fill DIR.partial with `fill` over chunks of the source in `workers` processes (after
    `setup(partial)`), with readable.npy and labels.npy; returns it and meta.json's content."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    setup(partial)
    n = len(source)
    chunks = [(i, min(n, i + CHUNK)) for i in range(0, n, CHUNK)]
    unreadable: list[int] = []
    if workers <= 1:
        for a, b in chunks:
            unreadable += fill(source_spec, str(partial), size, a, b)
            if progress is not None:
                progress(b - a)
    else:  # spawned, not forked: a fork of a process with torch's threads can deadlock
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            futures = [pool.submit(fill, source_spec, str(partial), size, a, b)
                       for a, b in chunks]
            for future, (a, b) in zip(futures, chunks, strict=True):
                unreadable += future.result()
                if progress is not None:
                    progress(b - a)
    readable = np.ones(n, dtype=bool)
    readable[unreadable] = False
    np.save(partial / "readable.npy", readable)
    np.save(partial / "labels.npy", np.asarray(source.labels, dtype=np.int64))
    return partial, {"source": source_spec, "size": size, "count": n,
                     "classes": list(source.classes),
                     "unreadable": [source.describe(i) for i in unreadable]}


def _finish_store(partial: Path, out: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    partial.rename(out)
    return meta


def prepare_images(source_spec: str, out: str | Path, size: int, workers: int = 1,
                   progress: Any = None) -> dict[str, Any]:
    """Write the prepared store of `source_spec` at `size` px into `out` (see the module
    docstring); `workers` processes decode in parallel. Returns meta.json's content."""
    source = open_source(source_spec)

    def images_file(partial: Path) -> None:
        np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                                  shape=(len(source), size, size, 3)).flush()

    partial, meta = _write_store(out, source, source_spec, size, workers, progress, _fill,
                                 images_file)
    return _finish_store(partial, out, meta)


def _fill_videos(source_spec: str, out: str, size: int, start: int, stop: int) -> list[int]:
    """Decode every frame of videos start..stop-1, shorter side to `size`; the unreadable."""
    source = open_video_source(source_spec)
    unreadable = []
    for i in range(start, stop):
        frames = None
        for _ in range(2):  # a header's count may be too high: the read corrects it once
            count = source.frame_count(i)
            if not count:
                break
            frames = source.read_frames(i, range(count))
            if frames is not None:
                break
        if frames is None:
            unreadable.append(i)
            frames = np.zeros((0, size, size, 3), dtype=np.uint8)
        else:
            frames = np.stack([resize_short_side(f, size) for f in frames])
        np.save(os.path.join(out, "clips", f"{i:06d}.npy"), frames)
    return unreadable


def prepare_videos(source_spec: str, out: str | Path, size: int = 128, workers: int = 1,
                   progress: Any = None) -> dict[str, Any]:
    """Write the prepared store of a video source (see the module docstring)."""
    source = open_video_source(source_spec)
    partial, meta = _write_store(out, source, source_spec, size, workers, progress,
                                 _fill_videos, lambda partial: (partial / "clips").mkdir())
    meta["frames"] = [int(np.load(partial / "clips" / f"{i:06d}.npy", mmap_mode="r").shape[0])
                      for i in range(len(source))]
    return _finish_store(partial, out, meta)


__all__ = ["prepare_images", "prepare_videos"]
