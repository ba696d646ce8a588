"""`permrl prepare`: write a prepared store (the format: `permrl.data.prepared`).

Each worker process opens the source again by its spec and fills its chunk of the store
(memory-mapped images.npy, or one clips/NNNNNN.npy per video); the store is written into
DIR.partial and renamed when whole. An interrupted run leaves DIR.partial with the chunks it
finished (progress.json); running the same command again fills only the missing ones.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from permrl.data.images import resize_short_side, resize_square
from permrl.data.sources import open_source
from permrl.data.video_sources import open_video_source
from permrl.files import write_atomic

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


def _start_or_resume(partial: Path, plan: dict[str, Any], setup: Any) -> dict[str, list[int]]:
    """The chunks DIR.partial already holds ({start: unreadable items}) when an interrupted
    `permrl prepare` with the same source, size, count and chunking left it; otherwise a
    fresh DIR.partial (`setup(partial)`) and {}."""
    progress = partial / "progress.json"
    if progress.is_file():
        try:
            state = json.loads(progress.read_text())
        except ValueError:  # torn by the interruption: start again
            state = {}
        if state.get("plan") == plan:
            return state["done"]
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    setup(partial)
    return {}


def _write_store(out: str | Path, source: Any, source_spec: str, size: int, workers: int,
                 progress: Any, fill: Any, setup: Any) -> tuple[Path, dict[str, Any]]:
    """Fill DIR.partial with `fill` over chunks of the source in `workers` processes (after
    `setup(partial)`), with readable.npy and labels.npy; returns it and meta.json's content.
    Each finished chunk is recorded in DIR.partial/progress.json, so a rerun of an interrupted
    `permrl prepare` (same source, size and chunking) fills only the chunks still missing."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    partial = out.with_name(out.name + ".partial")
    n = len(source)
    plan = {"source": source_spec, "size": size, "count": n, "chunk": CHUNK,
            "kind": setup.__name__}  # what is written: images.npy, or clips
    done = _start_or_resume(partial, plan, setup)
    chunks = [(i, min(n, i + CHUNK)) for i in range(0, n, CHUNK) if str(i) not in done]
    if done:
        print(f"permrl prepare: resuming {partial}: {len(done)} chunks of {CHUNK} items done, "
              f"{len(chunks)} to go", file=sys.stderr)
        if progress is not None:
            progress(n - sum(b - a for a, b in chunks))

    def finished(a: int, b: int, unreadable: list[int]) -> None:
        done[str(a)] = unreadable
        write_atomic(partial / "progress.json", json.dumps({"plan": plan, "done": done}))
        if progress is not None:
            progress(b - a)

    if workers <= 1:
        for a, b in chunks:
            finished(a, b, fill(source_spec, str(partial), size, a, b))
    else:  # spawned, not forked: a fork of a process with torch's threads can deadlock
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            futures = [pool.submit(fill, source_spec, str(partial), size, a, b)
                       for a, b in chunks]
            for future, (a, b) in zip(futures, chunks, strict=True):
                finished(a, b, future.result())
    unreadable = sorted(i for items in done.values() for i in items)
    readable = np.ones(n, dtype=bool)
    readable[unreadable] = False
    np.save(partial / "readable.npy", readable)
    np.save(partial / "labels.npy", np.asarray(source.labels, dtype=np.int64))
    (partial / "progress.json").unlink()
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
    def clips_folder(partial: Path) -> None:
        (partial / "clips").mkdir()

    partial, meta = _write_store(out, source, source_spec, size, workers, progress,
                                 _fill_videos, clips_folder)
    meta["frames"] = [int(np.load(partial / "clips" / f"{i:06d}.npy", mmap_mode="r").shape[0])
                      for i in range(len(source))]
    return _finish_store(partial, out, meta)


__all__ = ["prepare_images", "prepare_videos"]
