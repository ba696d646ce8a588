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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from permrl.data.image_source import ImageSource, SourceError


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


class _NpyClip:
    """One prepared video: its frame count known, its frames memory-mapped when read."""

    def __init__(self, path: str, frames: int) -> None:
        self.path, self.frames = path, frames

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, wanted: Any) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")[wanted]


def prepared_videos(spec: str, path: str) -> tuple[list[Any], np.ndarray, list[str],
                                                   list[str]]:
    """`prepared-videos:DIR`, a store written by `permrl prepare --videos`: its memory-mapped
    clips, labels, classes and notes (`permrl.data.video_sources` makes the VideoSource)."""
    folder = Path(path)
    meta = _read_meta(spec, folder, "--videos ")
    clips = [_NpyClip(str(folder / "clips" / f"{i:06d}.npy"), n)
             for i, n in enumerate(meta["frames"])]
    return clips, np.load(folder / "labels.npy"), meta["classes"], _notes(spec, meta)


__all__ = ["prepared_source", "prepared_videos"]
