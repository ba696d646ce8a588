"""Image sources named by strings `KIND:PATH[?key=value&...]`, and a Dataset over them.

Kinds: folder:/dir, fashion-mnist[:/dir], demo-photos, dead-leaves, demo, voc2007:/dir (see
open_source).
Every kind takes `?limit=N` (first N items). Whole-source problems raise SourceError; single
unreadable images load as None and are counted by the caller (SkipCounter). ImageSource and
SourceError live in permrl.data.image_source (voc.py needs them and nothing else from here);
import them from this module.

Why this long: the one place where an image source spec becomes a source: every kind's
opener, its options and its one-line errors, side by side.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import torch
from torch.utils.data import Dataset

from permrl.data.builtin import DEMO_SUBSETS, dead_leaves, demo_photo, demo_photo_crops
from permrl.data.image_source import ImageSource, SourceError
from permrl.data.images import IMAGE_EXTENSIONS, resize_square
from permrl.data.prepared import prepared_source
from permrl.data.voc import open_voc2007

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's dataset-fashion-mnist package puts the IDX files."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

DEMO_MIX_CROPS = 64
"""Crops per photo of the demo-photos train region in the `demo` mix."""

SOURCE_KINDS: tuple[str, ...] = (
    "folder", "fashion-mnist", "demo-photos", "dead-leaves", "demo", "voc2007", "prepared",
)  # fmt: skip


class _Concat(Sequence):
    """Items of several sources one after the other."""

    def __init__(self, parts: Sequence[Sequence[Any]]) -> None:
        self.parts = list(parts)
        self.ends = np.cumsum([len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        j = bisect.bisect_right(self.ends, i)
        return self.parts[j][i - (self.ends[j - 1] if j else 0)]


class _DeadLeavesItems(Sequence):
    """Lazy dead-leaves images: item i is generated from the seed sequence (seed, i)."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.count, self.size, self.seed = count, size, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        if not -self.count <= i < self.count:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i % self.count])
        return dead_leaves(self.size, rng)


def concat_sources(sources: Sequence[ImageSource], name: str) -> ImageSource:
    """Sources one after another; labels kept only if all have the same non-empty classes."""
    same = all(s.classes and s.classes == sources[0].classes for s in sources)
    labels = np.concatenate([s.labels for s in sources]) if same else None
    notes = [note for s in sources for note in s.notes]
    return ImageSource(
        name, _Concat([s.items for s in sources]), labels,
        sources[0].classes if same else (), notes,
    )  # fmt: skip


# Sources by kind -----------------------------------------------------------------------------


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _image_files(folder: str) -> list[str]:
    """Image files below folder, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(files):
            if not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
    return found


def _folder_source(spec: str, path: str) -> ImageSource:
    if not path:
        raise SourceError(f"image source {spec!r}: folder needs a path, e.g. folder:/data/images")
    if not os.path.exists(path):
        raise SourceError(f"image source {spec!r}: path does not exist: {path}")
    if not os.path.isdir(path):
        raise SourceError(f"image source {spec!r}: not a folder: {path}")
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as err:
        raise SourceError(f"image source {spec!r}: cannot list {path}: {err.strerror}") from None
    subdirs = [e for e in entries if e.is_dir(follow_symlinks=False) and not _is_hidden(e.name)]
    classes, files, labels = [], [], []
    for entry in subdirs:
        found = _image_files(entry.path)
        if found:
            files += found
            labels += [len(classes)] * len(found)
            classes.append(entry.name)
    notes = []
    if classes:
        loose = [
            e for e in entries
            if e.is_file() and not _is_hidden(e.name)
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        ]  # fmt: skip
        if loose:
            noun = "image" if len(loose) == 1 else "images"
            notes.append(
                f"{spec}: ignored {len(loose)} {noun} directly in {path} "
                "(its sub-folders are the classes)"
            )
        return ImageSource(spec, files, np.array(labels, dtype=np.int64), classes, notes)
    files = _image_files(path)
    if not files:
        raise SourceError(f"image source {spec!r}: no image files (.jpg, .png, ...) in {path}")
    return ImageSource(spec, files)


_IDX_DTYPES = {0x08: np.uint8}


def _read_idx(spec: str, path: str, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with `ndim` dimensions (gzip or plain)."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError) as err:
        raise SourceError(f"image source {spec!r}: cannot read {path}: {err}") from None
    bad = f"image source {spec!r}: {path} is not an IDX file of {ndim}-d unsigned bytes"
    if len(data) < 4 + 4 * ndim or data[0:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise SourceError(f"{bad} (bad magic number)")
    if data[3] != ndim:
        raise SourceError(f"{bad} (it has {data[3]} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = 4 + 4 * ndim
    if len(data) - body != int(np.prod(dims)):
        raise SourceError(f"{bad} (size {len(data) - body} bytes, header says {dims})")
    return np.frombuffer(data, dtype=np.uint8, offset=body).reshape(dims)


def _find_idx(spec: str, folder: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise SourceError(f"image source {spec!r}: missing {stem}.gz (or {stem}) in {folder}")


def _fashion_mnist_source(spec: str, path: str, subset: str) -> ImageSource:
    folder = path or FASHION_MNIST_DIR
    if not os.path.isdir(folder):
        hint = " (install the Debian package dataset-fashion-mnist)" if not path else ""
        raise SourceError(f"image source {spec!r}: path does not exist: {folder}{hint}")
    prefix = "train" if subset == "train" else "t10k"
    images = _read_idx(spec, _find_idx(spec, folder, f"{prefix}-images-idx3-ubyte"), 3)
    labels = _read_idx(spec, _find_idx(spec, folder, f"{prefix}-labels-idx1-ubyte"), 1)
    if len(images) != len(labels):
        raise SourceError(f"image source {spec!r}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise SourceError(f"image source {spec!r}: label {labels.max()} out of range 0..9")
    return ImageSource(spec, images, labels.astype(np.int64), FASHION_MNIST_CLASSES)


def _demo_photos_source(spec: str, subset: str, crops: int, seed: int) -> ImageSource:
    try:
        items = demo_photo_crops(subset, crops_per_photo=crops, seed=seed)
        for name in items.class_names:  # fail here, not in a worker, if a photo is missing
            demo_photo(name)
    except (OSError, KeyError) as err:
        raise SourceError(f"image source {spec!r}: {err}") from None
    return ImageSource(spec, items, items.labels, items.class_names)


@functools.lru_cache(maxsize=2)
def _rendered_dead_leaves(count: int, size: int, seed: int) -> np.ndarray:
    """All `count` images rendered once into one read-only array (same pixels as the lazy items)."""
    items = _DeadLeavesItems(count, size, seed)
    bank = np.stack([items[i] for i in range(count)])
    bank.setflags(write=False)
    return bank


def _dead_leaves_source(
    spec: str, count: int, size: int, seed: int, render: bool = False
) -> ImageSource:
    """Lazy (generated when loaded, ~2 ms at 128 px), or rendered once up front with `render`
    (the demo mix: generation would otherwise cost more than the training step it feeds)."""
    if render:
        return ImageSource(spec, _rendered_dead_leaves(count, size, seed))
    return ImageSource(spec, _DeadLeavesItems(count, size, seed))


# Parsing -------------------------------------------------------------------------------------

_OPTIONS: dict[str, dict[str, Any]] = {
    "folder": {},
    "fashion-mnist": {"subset": ("train", "test")},
    "demo-photos": {"subset": DEMO_SUBSETS, "crops": 16, "seed": 0},
    "dead-leaves": {"count": 10000, "size": 128, "seed": 0},
    "demo": {"count": 4000, "size": 128, "seed": 0},
    "voc2007": {
        "subset": ("trainval", "test", "train", "val"),
        "mode": ("objects", "images"),
        "min_pixels": 10000,
    },
    "prepared": {},
}
"""Options of each kind with their defaults: a tuple lists the choices, its first the default."""

_TAKES_PATH = {"folder", "fashion-mnist", "voc2007", "prepared"}


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """Split an image source `KIND:PATH?k=v&...` into (kind, path, options with defaults)."""
    return split_spec(spec, "image", _OPTIONS, _TAKES_PATH)


def split_spec(
    spec: str, what: str, table: dict[str, dict[str, Any]], takes_path: set[str]
) -> tuple[str, str, dict[str, Any]]:
    """`KIND:PATH?k=v&...` checked against `table` (kind -> options; a tuple lists the
    choices, its first the default, else an integer default); `?limit=N` is always allowed."""
    head, _, query = spec.strip().partition("?")
    kind, colon, path = head.partition(":")
    kind = kind.strip().lower()
    if kind not in table:
        hint = f" (for a folder write folder:{head})" if "/" in head and not colon else ""
        raise SourceError(
            f"unknown {what} source kind {kind!r} in {spec!r}; allowed kinds: "
            f"{', '.join(table)}{hint}"
        )
    if path and kind not in takes_path:
        raise SourceError(f"{what} source {spec!r}: kind {kind!r} takes no path")
    allowed = table[kind] | {"limit": None}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise SourceError(f"{what} source {spec!r}: bad options {query!r}, use ?k=v&k=v") from None
    options: dict[str, Any] = {k: (v[0] if isinstance(v, tuple) else v) for k, v in allowed.items()}
    seen = set()
    for key, value in pairs:
        if key not in allowed:
            raise SourceError(
                f"{what} source {spec!r}: unknown option {key!r} for {kind}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        if key in seen:
            raise SourceError(f"{what} source {spec!r}: option {key!r} given twice")
        seen.add(key)
        choices = allowed[key]
        if isinstance(choices, tuple):
            if value not in choices:
                raise SourceError(
                    f"{what} source {spec!r}: {key} must be one of {', '.join(choices)}, "
                    f"not {value!r}"
                )
            options[key] = value
            continue
        smallest = 0 if key == "seed" else 1
        if not value.isdigit() or int(value) < smallest:
            raise SourceError(
                f"{what} source {spec!r}: {key} must be an integer >= {smallest}, not {value!r}"
            )
        options[key] = int(value)
    return kind, os.path.expanduser(path), options


def open_source(spec: str) -> ImageSource:
    """Open an image source from its spec string; raises SourceError with a one-line message.

    folder:/dir                 images below /dir (recursive, sorted); if /dir has
                                sub-folders holding images, each is a class (ImageFolder style)
                                and images directly in /dir are ignored (noted in .notes)
    fashion-mnist[:/dir]        IDX files, default /usr/share/datasets/fashion-mnist;
                                ?subset=train|test
    demo-photos                 crops of scikit-image's photos; ?subset=train|gallery|query,
                                ?crops=16 per photo, ?seed=0
    dead-leaves                 procedural images; ?count=10000&size=128&seed=0
    demo                        dead-leaves (rendered once into memory) + demo-photos train
                                crops (64 per photo), unlabelled; ?count=4000&size=128&seed=0
    voc2007:/dir                Pascal VOC 2007 (/dir/VOCdevkit/VOC2007 or /dir = VOC2007);
                                ?subset=trainval|test|train|val, ?mode=objects (box crops,
                                labelled; ?min_pixels=10000) | images (whole, multi-label
                                in .targets); see permrl.data.voc
    prepared:/dir               a store written by `permrl prepare` (decoded, resized
                                squares; see permrl.data.prepared)
    Any kind: ?limit=N keeps the first N items.
    """
    kind, path, opt = parse_spec(spec)
    makers: dict[str, Callable[[], ImageSource]] = {
        "folder": lambda: _folder_source(spec, path),
        "fashion-mnist": lambda: _fashion_mnist_source(spec, path, opt["subset"]),
        "demo-photos": lambda: _demo_photos_source(spec, opt["subset"], opt["crops"], opt["seed"]),
        "dead-leaves": lambda: _dead_leaves_source(spec, opt["count"], opt["size"], opt["seed"]),
        "demo": lambda: concat_sources(
            [
                _dead_leaves_source(spec, opt["count"], opt["size"], opt["seed"], render=True),
                _demo_photos_source(spec, "train", DEMO_MIX_CROPS, opt["seed"]),
            ],
            spec,
        ),
        "voc2007": lambda: open_voc2007(
            spec, path, opt["subset"], opt["mode"], opt["min_pixels"]
        ),
        "prepared": lambda: prepared_source(spec, path),
    }
    source = makers[kind]()
    if opt["limit"] is not None:
        source = source.head(opt["limit"])
    return source


# Counting skips, and a Dataset ---------------------------------------------------------------


class SkipCounter:
    """Counts unreadable images and remembers the first one, for one warning line."""

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def add(self, description: str) -> None:
        """Count one skipped image."""
        if self.first is None:
            self.first = description
        self.count += 1

    def extend(self, descriptions: Sequence[str]) -> None:
        """Count several skipped images (e.g. a collated batch's "skipped")."""
        for d in descriptions:
            self.add(d)

    def warning_line(self) -> str:
        """`permrl: skipped N unreadable image(s) (first: ...)`, or "" when none."""
        if not self.count:
            return ""
        noun = "image" if self.count == 1 else "images"
        return f"permrl: skipped {self.count} unreadable {noun} (first: {self.first})"


class ImageDataset(Dataset):
    """Square uint8 tensors (3, size, size) from an ImageSource.

    crop="center" is deterministic; crop="random" draws the crop offsets from a generator
    seeded by (seed, torch.randint) so torch.manual_seed and DataLoader worker seeding make
    it reproducible. Unreadable items come back with image None and "skipped" set.
    """

    def __init__(self, source: ImageSource, size: int, crop: str = "random", seed: int = 0) -> None:
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', not {crop!r}")
        self.source, self.size, self.crop, self.seed = source, size, crop, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        label = int(self.source.labels[i])
        img = self.source.load(i)
        if img is None:
            return {"image": None, "index": i, "label": label, "skipped": self.source.describe(i)}
        rng = None
        if self.crop == "random":
            draw = int(torch.randint(0, 2**62, ()).item())
            rng = np.random.default_rng([self.seed, draw])
        square = resize_square(img, self.size, self.crop, rng)
        image = torch.from_numpy(square).permute(2, 0, 1).contiguous()
        return {"image": image, "index": i, "label": label}


def collate_images(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable items of a batch; skipped ones only add to "skipped".

    Returns images uint8 (B, 3, S, S) (shape (0, 3, 0, 0) if none was readable), index and
    label int64 (B,), skipped: list of descriptions.
    """
    good = [b for b in batch if b["image"] is not None]
    if good:
        images = torch.stack([b["image"] for b in good])
    else:
        images = torch.zeros((0, 3, 0, 0), dtype=torch.uint8)
    return {
        "images": images,
        "index": torch.tensor([int(b["index"]) for b in good], dtype=torch.int64),
        "label": torch.tensor([int(b["label"]) for b in good], dtype=torch.int64),
        "skipped": [b["skipped"] for b in batch if b["image"] is None],
    }
