"""The image source type and its error, shared by the source kinds (sources.py, voc.py).

An ImageSource is a finite, indexable collection of images with optional integer labels;
whole-source problems raise SourceError. Import both from permrl.data.sources, the public entry
point; they live here so that the modules defining source kinds need not import each other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from permrl.data.images import decode_image
from permrl.errors import UserError


class SourceError(UserError):
    """A problem with a whole image source (bad spec, missing path, nothing readable)."""


def item_labels(labels: Sequence[int] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    """(n,) int64 class indices of a source's items; -1 (unlabelled) when `labels` is None."""
    out = (np.full(n, -1, dtype=np.int64) if labels is None
           else np.asarray(labels, dtype=np.int64).reshape(-1))
    if len(out) != n:
        raise ValueError(f"{len(out)} labels for {n} {what}")
    return out


class ImageSource:
    """A finite, indexable collection of images with optional integer labels.

    items[i] is a file path (decoded lazily), an image array (H, W[, 3], uint8) or a callable
    returning one (or None). labels: int64, -1 where unlabelled; classes: the label names
    (empty when unlabelled). notes: remarks worth showing the user (e.g. ignored files).
    """

    def __init__(
        self,
        name: str,
        items: Sequence[Any],
        labels: np.ndarray | None = None,
        classes: Sequence[str] = (),
        notes: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.items = items
        n = len(items)
        self.labels = item_labels(labels, n, "items")
        self.classes = list(classes)
        self.notes = list(notes)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ImageSource({self.name!r}, {len(self)} items, {len(self.classes)} classes)"

    def load(self, i: int) -> np.ndarray | None:
        """Image i as uint8 (H, W, 3), or None if it cannot be read."""
        item = self.items[i]
        if isinstance(item, (str, os.PathLike)):
            return decode_image(item)
        if callable(item):
            item = item()
            if item is None:
                return None
        arr = np.asarray(item, dtype=np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return arr

    def describe(self, i: int) -> str:
        """A human-readable id of item i: its path, or `name[i]` for generated items."""
        item = self.items[i]
        if isinstance(item, (str, os.PathLike)):
            return os.fspath(item)
        return f"{self.name}[{i}]"

    def head(self, n: int) -> ImageSource:
        """A source of the first n items (all if n >= len)."""
        keep = min(max(n, 0), len(self))
        return ImageSource(
            self.name, _Slice(self.items, keep), self.labels[:keep], self.classes, self.notes
        )


class _Slice(Sequence):
    """The first n items of a sequence, without copying it."""

    def __init__(self, items: Sequence[Any], n: int) -> None:
        self.base, self.n = items, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return self.base[i % self.n]
