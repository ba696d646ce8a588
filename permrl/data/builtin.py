"""Built-in data that needs no download: the demo photographs and dead-leaves images.

* Demo photographs (DEMO_PHOTO_NAMES): natural photos shipped inside scikit-image's wheel, read
  with Pillow straight from the package folder (no network, scikit-image is not imported),
  each resized and centre-cropped to 256 x 256 (demo_photo). DEMO_REGIONS cuts every photo
  into three disjoint regions, one per subset of DEMO_SUBSETS (train, gallery, query);
  demo_photo_crops gives seeded random square crops inside a subset's region, labelled by
  photo (the `demo-photos` image source).
* Dead leaves (dead_leaves): procedural images of occluding random textured shapes, lit from
  above by default, unlimited in number, deterministic given a generator (the `dead-leaves`
  image source).

The built-in videos (builtin_videos.py) film these photos within the same subsets and regions,
so train, gallery and query never share a photo pixel, in images or in clips.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from permrl.data.images import decode_image, resize_square

DEMO_PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "ihc",
    "moon",
    "motorcycle_left",
    "retina",
    "rocket",
)
"""Natural photos in scikit-image's data folder, each at least 300 px on the shorter side.

Left out: drawings and synthetic pictures, photos under 300 px, near-duplicates
(motorcycle_right) and mostly-empty ones (cell, clock_motion) whose quarters are flat grey.
"""

DEMO_PHOTO_SIZE = 256
"""Each demo photo is resized (shorter side) and centre-cropped to this square size first."""

DEMO_SUBSETS: tuple[str, ...] = ("train", "gallery", "query")

DEMO_REGIONS: dict[str, tuple[int, int, int, int]] = {
    "train": (0, 0, 128, 256),
    "gallery": (128, 0, 256, 128),
    "query": (128, 128, 256, 256),
}
"""Disjoint regions (y0, x0, y1, x1) of the 256 x 256 photo that each subset crops from."""


def skimage_data_dir() -> Path:
    """The `data` folder inside the installed scikit-image package (not imported)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-image is not installed: its demo photos are unavailable")
    return Path(spec.origin).parent / "data"


def demo_photo_path(name: str) -> Path:
    """Path of the bundled photo `name` (a member of DEMO_PHOTO_NAMES)."""
    if name not in DEMO_PHOTO_NAMES:
        raise KeyError(f"unknown demo photo {name!r}; known: {', '.join(DEMO_PHOTO_NAMES)}")
    folder = skimage_data_dir()
    for suffix in (".png", ".jpg"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"demo photo {name!r} not found in {folder}")


@functools.lru_cache(maxsize=len(DEMO_PHOTO_NAMES))
def demo_photo(name: str) -> np.ndarray:
    """The photo `name` as uint8 (256, 256, 3): shorter side resized to 256, centre crop."""
    path = demo_photo_path(name)
    img = decode_image(path)
    if img is None:
        raise OSError(f"cannot decode demo photo {path}")
    out = resize_square(img, DEMO_PHOTO_SIZE, "center")
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class DemoCrops:
    """Square crops of the demo photos for one subset; a lazy sequence of uint8 arrays.

    boxes[i] = (y0, x0, y1, x1) in the 256 x 256 photo of class labels[i]; every box lies
    inside DEMO_REGIONS[subset], so train, gallery and query never share a pixel.
    """

    subset: str
    boxes: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> np.ndarray:
        y0, x0, y1, x1 = (int(v) for v in self.boxes[i])
        photo = demo_photo(self.class_names[int(self.labels[i])])
        return photo[y0:y1, x0:x1].copy()


def demo_photo_crops(
    subset: str = "train",
    crops_per_photo: int = 16,
    crop_size_range: tuple[int, int] = (64, 128),
    seed: int = 0,
) -> DemoCrops:
    """Deterministic random square crops, `crops_per_photo` per photo, labelled by photo.

    Side lengths are uniform in crop_size_range (inclusive, capped by the region) and the
    crops lie inside the subset's region (DEMO_REGIONS). Items are ordered photo by photo.
    """
    if subset not in DEMO_REGIONS:
        raise ValueError(f"unknown demo subset {subset!r}; allowed: {', '.join(DEMO_SUBSETS)}")
    lo, hi = crop_size_range
    if crops_per_photo < 1 or not 1 <= lo <= hi:
        raise ValueError("need crops_per_photo >= 1 and 1 <= min crop size <= max crop size")
    y0, x0, y1, x1 = DEMO_REGIONS[subset]
    limit = min(y1 - y0, x1 - x0)
    lo, hi = min(lo, limit), min(hi, limit)
    rng = np.random.default_rng([seed, DEMO_SUBSETS.index(subset)])
    n = len(DEMO_PHOTO_NAMES) * crops_per_photo
    sides = rng.integers(lo, hi + 1, size=n)
    tops = y0 + (rng.random(n) * (y1 - y0 - sides + 1)).astype(np.int64)
    lefts = x0 + (rng.random(n) * (x1 - x0 - sides + 1)).astype(np.int64)
    boxes = np.stack([tops, lefts, tops + sides, lefts + sides], axis=1).astype(np.int64)
    labels = np.repeat(np.arange(len(DEMO_PHOTO_NAMES), dtype=np.int64), crops_per_photo)
    return DemoCrops(subset, boxes, labels, DEMO_PHOTO_NAMES)


# Dead leaves ---------------------------------------------------------------------------------

_FLAT, _STRIPES, _GRADIENT, _NOISE = range(4)
_SMALL_REACH = 6  # shapes reaching at most this many pixels are rasterised together


def _inside(dx: Any, dy: Any, cos: Any, sin: Any, a: Any, b: Any, rect: Any) -> np.ndarray:
    """Whether offsets (dx, dy) from a shape's centre lie inside it (arrays broadcast)."""
    along = dx * cos + dy * sin
    across = dy * cos - dx * sin
    if np.ndim(rect) == 0:
        if rect:
            return (np.abs(along) <= a) & (np.abs(across) <= b)
        return (along / a) ** 2 + (across / b) ** 2 <= 1.0
    box = (np.abs(along) <= a) & (np.abs(across) <= b)
    return np.where(rect, box, (along / a) ** 2 + (across / b) ** 2 <= 1.0)


def dead_leaves(
    size: int, rng: np.random.Generator, shapes: int = 160, light: float = 0.6
) -> np.ndarray:
    """A procedural "dead leaves" image, uint8 (size, size, 3), deterministic given `rng`.

    `shapes` discs, ellipses and rotated rectangles with radii of density ~ r^-3 (between
    size/48 and size/2.5) and random colours are painted back to front over a background that
    is brighter at the top; each is flat, striped, a two-colour gradient or noisy.

    `light` shades every shape as if lit from above (bright top, dark bottom edge) and darkens
    the scene downwards. Without it the images are isotropic and a jigsaw puzzle cut from them
    has no up/down cue: measured here, the `cpu` preset stayed at chance (loss ln|Psi|) for
    300 steps on unlit dead leaves while it learned on photographs; light from above is the
    most common such cue in natural images.
    """
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    n = shapes + 1  # index `shapes` is the background
    rmin, rmax = max(size / 48.0, 0.75), max(size / 2.5, 1.0)
    u = rng.random(n)
    radius = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5
    aspect = np.where(rng.random(n) < 0.35, 1.0, rng.uniform(0.3, 1.0, n))
    kind = rng.integers(0, 3, n)  # 0 disc, 1 ellipse, 2 rectangle
    angle = rng.uniform(0.0, np.pi, n)
    cx, cy = rng.uniform(-0.1, 1.1, (2, n)) * size
    texture = rng.choice(4, size=n, p=[0.4, 0.2, 0.2, 0.2])
    col1 = rng.uniform(0.0, 255.0, (n, 3))
    col2 = np.clip(col1 + rng.normal(0.0, 70.0, (n, 3)), 0.0, 255.0)
    freq = 2.0 * np.pi / rng.uniform(2.5, 10.0, n)
    phase = rng.uniform(0.0, 2.0 * np.pi, n)
    amp = rng.uniform(10.0, 40.0, n)
    # Background: a vertical gradient over the whole picture, brighter at the top.
    cx[-1] = cy[-1] = size / 2.0
    radius[-1], texture[-1], angle[-1] = size * 0.75, _GRADIENT, np.pi / 2
    col1[-1], col2[-1] = np.sort(np.stack([col1[-1], col2[-1]]), axis=0)[::-1] if light else (
        col1[-1], col2[-1])
    a_ax = radius
    b_ax = radius * np.where(kind == 0, 1.0, aspect)
    cos, sin = np.cos(angle), np.sin(angle)
    reach = np.where(kind == 2, np.hypot(a_ax, b_ax), a_ax)

    coords = np.arange(size, dtype=np.float32) + 0.5
    # label = index of the top shape at each pixel: the largest index whose shape covers it.
    label = np.full((size, size), -1, dtype=np.int64)
    rect = kind == 2
    small = reach[:shapes] <= _SMALL_REACH
    for k in np.flatnonzero(~small):  # large shapes one by one, back to front
        y0, y1 = max(int(cy[k] - reach[k]), 0), min(int(cy[k] + reach[k]) + 2, size)
        x0, x1 = max(int(cx[k] - reach[k]), 0), min(int(cx[k] + reach[k]) + 2, size)
        if y0 < y1 and x0 < x1:
            dy = (coords[y0:y1] - cy[k])[:, None]
            dx = (coords[x0:x1] - cx[k])[None, :]
            mask = _inside(dx, dy, cos[k], sin[k], a_ax[k], b_ax[k], rect[k])
            label[y0:y1, x0:x1][mask] = k
    ks = np.flatnonzero(small)  # small shapes all at once in fixed-size patches
    if ks.size:
        offsets = np.arange(2 * _SMALL_REACH + 2)
        rows = np.floor(cy[ks] - _SMALL_REACH).astype(np.int64)[:, None] + offsets
        cols = np.floor(cx[ks] - _SMALL_REACH).astype(np.int64)[:, None] + offsets
        dy = (rows + 0.5 - cy[ks, None])[:, :, None]
        dx = (cols + 0.5 - cx[ks, None])[:, None, :]
        par = [v[ks, None, None] for v in (cos, sin, a_ax, b_ax, rect)]
        mask = _inside(dx, dy, *par)
        mask &= ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None]
        flat = rows[:, :, None] * size + cols[:, None, :]
        top = np.broadcast_to(ks[:, None, None], mask.shape)
        np.maximum.at(label.reshape(-1), flat[mask], top[mask])
    label[label < 0] = shapes

    # Texture every pixel from the parameters of the shape on top there (one gather).
    columns = [cx, cy, cos, sin, a_ax, freq, phase, amp, texture, col1, col2]
    par = np.column_stack(columns).astype(np.float32)[label]
    x_rel = coords[None, :] - par[..., 0]
    y_rel = coords[:, None] - par[..., 1]
    along = x_rel * par[..., 2] + y_rel * par[..., 3]
    tex = par[..., 8]
    stripe = (np.sin(par[..., 5] * along + par[..., 6]) > 0).astype(np.float32)
    ramp = np.clip(0.5 + along / (2.0 * par[..., 4]), 0.0, 1.0)
    weight = np.where(tex == _STRIPES, stripe, np.where(tex == _GRADIENT, ramp, 0.0))
    img = par[..., 9:12] + weight[..., None] * (par[..., 12:15] - par[..., 9:12])
    if light:  # lit from above: each shape bright at its top, the scene darker downwards
        height = np.maximum(par[..., 4], 1.0)
        shade = 1.0 + light * np.clip(-y_rel / height, -1.0, 1.0) * 0.5
        shade *= 1.0 + light * (0.25 - 0.5 * coords[:, None] / size)
        img *= shade[..., None]
    noisy = tex == _NOISE
    count = int(noisy.sum())
    if count:
        img[noisy] += par[noisy][:, 7:8] * rng.standard_normal((count, 3), dtype=np.float32)
    return np.clip(img + 0.5, 0.0, 255.0).astype(np.uint8)
