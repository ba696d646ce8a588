"""Prepared stores: every image (video) decoded and resized once, so that workers only crop.

The spatial task's loader decodes each full image (an ImageNet JPEG: ~3-4 ms), resizes it so
that its shorter side is `round(image_size * 256 / 225)` (256 px at the paper preset), keeps
the centre square, and crops the puzzle from it (`permrl.data.batches.PuzzleBatches`). The
decode and resize depend on nothing but the image, so `permrl prepare` does them once and
writes the squares into one uint8 array on disk (`images.npy`, memory-mapped when read):
training from `prepared:DIR` then reads ~196 KB per image instead of decoding a JPEG, and its
tiles are exactly the raw path's (a square already of the right size is not resized again).
Cost: size^2 x 3 bytes per image (ImageNet at 256 px: ~250 GB); for another preset or tile
size, prepare again (`--preset` / `--size`).

DIR holds images.npy (N, S, S, 3) uint8, readable.npy (N,) bool (an unreadable source image
stays unreadable: counted and skipped by the loader as before), labels.npy, meta.json (the
source spec, S, the classes, the unreadable items). It is written into DIR.partial and renamed
when complete, so a DIR that exists is whole.

Videos (`permrl prepare --videos`, `prepared-videos:DIR`): every frame decoded once, resized
so that its shorter side is S (128 by default), one uint8 array per video (clips/NNNNNN.npy,
memory-mapped: a clip reads only its u frames). A clip's crop box (a fraction of the shorter
side) is then cut from the S px frame instead of the full one: the same clip up to that resize.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from permrl.data.image_source import ImageSource, SourceError
from permrl.data.images import resize_short_side, resize_square

CHUNK = 256  # images per worker task


def _fill(source_spec: str, out: str, size: int, start: int, stop: int) -> list[int]:
    """Decode, resize and store items start..stop-1 of the source; returns the unreadable."""
    from permrl.data.sources import open_source

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
    from permrl.data.sources import open_source

    source = open_source(source_spec)

    def images_file(partial: Path) -> None:
        np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                                  shape=(len(source), size, size, 3)).flush()

    partial, meta = _write_store(out, source, source_spec, size, workers, progress, _fill,
                                 images_file)
    return _finish_store(partial, out, meta)


class _PreparedItems(Sequence):
    """Rows of the memory-mapped store; an unreadable item is a callable giving None."""

    def __init__(self, images: np.ndarray, readable: np.ndarray) -> None:
        self.images, self.readable = images, readable

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.images[i] if self.readable[i] else _unreadable


def _unreadable() -> None:
    return None


def _read_meta(spec: str, folder: Path, option: str = "") -> dict[str, Any]:
    if not (folder / "meta.json").is_file():
        raise SourceError(f"source {spec!r}: {folder} is not a prepared store (no meta.json); "
                          f"write one with permrl prepare {option}".rstrip())
    return json.loads((folder / "meta.json").read_text())


def _notes(spec: str, meta: dict[str, Any]) -> list[str]:
    unreadable = len(meta["unreadable"])
    return [f"{spec}: {meta['source']} prepared at {meta['size']} px, {unreadable} "
            "unreadable"] if unreadable else []


def prepared_source(spec: str, path: str) -> ImageSource:
    """`prepared:DIR`, a store written by `permrl prepare`."""
    folder = Path(path)
    meta = _read_meta(spec, folder)
    images = np.load(folder / "images.npy", mmap_mode="r")
    items = _PreparedItems(images, np.load(folder / "readable.npy"))
    return ImageSource(spec, items, np.load(folder / "labels.npy"), meta["classes"],
                       _notes(spec, meta))


def _fill_videos(source_spec: str, out: str, size: int, start: int, stop: int) -> list[int]:
    """Decode every frame of videos start..stop-1, shorter side to `size`; the unreadable."""
    from permrl.data.video_sources import open_video_source

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
    from permrl.data.video_sources import open_video_source

    source = open_video_source(source_spec)
    partial, meta = _write_store(out, source, source_spec, size, workers, progress,
                                 _fill_videos, lambda partial: (partial / "clips").mkdir())
    meta["frames"] = [int(np.load(partial / "clips" / f"{i:06d}.npy", mmap_mode="r").shape[0])
                      for i in range(len(source))]
    return _finish_store(partial, out, meta)


class _NpyClip:
    """One prepared video: its frame count known, its frames memory-mapped when read."""

    def __init__(self, path: str, frames: int) -> None:
        self.path, self.frames = path, frames

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, wanted: Any) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")[wanted]


def prepared_video_source(spec: str, path: str) -> Any:
    """`prepared-videos:DIR`, a store written by `permrl prepare --videos`."""
    from permrl.data.video_sources import VideoSource

    folder = Path(path)
    meta = _read_meta(spec, folder, "--videos ")
    clips = [_NpyClip(str(folder / "clips" / f"{i:06d}.npy"), n)
             for i, n in enumerate(meta["frames"])]
    return VideoSource(spec, clips, np.load(folder / "labels.npy"), meta["classes"],
                       _notes(spec, meta))


__all__ = ["prepare_images", "prepare_videos", "prepared_source", "prepared_video_source"]
