"""A prepared image store: every image decoded and resized once, so that workers only crop.

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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from permrl.data.image_source import ImageSource, SourceError
from permrl.data.images import resize_square

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


def prepare_images(source_spec: str, out: str | Path, size: int, workers: int = 1,
                   progress: Any = None) -> dict[str, Any]:
    """Write the prepared store of `source_spec` at `size` px into `out` (see the module
    docstring); `workers` processes decode in parallel. Returns meta.json's content."""
    from permrl.data.sources import open_source

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    source = open_source(source_spec)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    n = len(source)
    np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8,
                              shape=(n, size, size, 3)).flush()
    chunks = [(i, min(n, i + CHUNK)) for i in range(0, n, CHUNK)]
    unreadable: list[int] = []
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_fill, source_spec, str(partial), size, a, b) for a, b in chunks]
        for future, (a, b) in zip(futures, chunks, strict=True):
            unreadable += future.result()
            if progress is not None:
                progress(b - a)
    readable = np.ones(n, dtype=bool)
    readable[unreadable] = False
    np.save(partial / "readable.npy", readable)
    np.save(partial / "labels.npy", np.asarray(source.labels, dtype=np.int64))
    meta = {"source": source_spec, "size": size, "count": n, "classes": source.classes,
            "unreadable": [source.describe(i) for i in unreadable]}
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    partial.rename(out)
    return meta


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


def prepared_source(spec: str, path: str) -> ImageSource:
    """`prepared:DIR`, a store written by `permrl prepare`."""
    folder = Path(path)
    if not (folder / "meta.json").is_file():
        raise SourceError(f"image source {spec!r}: {path} is not a prepared store (no "
                          "meta.json); write one with permrl prepare")
    meta = json.loads((folder / "meta.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="r")
    readable = np.load(folder / "readable.npy")
    labels = np.load(folder / "labels.npy")
    notes = [f"{spec}: {meta['source']} prepared at {meta['size']} px, "
             f"{len(meta['unreadable'])} unreadable"] if meta["unreadable"] else []
    return ImageSource(spec, _PreparedItems(images, readable), labels, meta["classes"], notes)


__all__ = ["prepare_images", "prepared_source"]
