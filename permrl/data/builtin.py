"""Built-in images that need no download.

* Demo photographs: the natural photos shipped inside scikit-image's wheel (read with Pillow
  straight from the package folder, no network), cut into disjoint train/gallery/query regions.
* Dead leaves: procedural images of occluding random textured shapes, unlimited in number.
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


# Demo videos ---------------------------------------------------------------------------------

DEMO_MOTIONS: tuple[str, ...] = (
    "pan-left",
    "pan-right",
    "pan-up",
    "pan-down",
    "zoom-in",
    "zoom-out",
)
"""Camera motions of the demo videos, the classes of demo_videos(..., label="motion")."""

DEMO_VIDEO_LABELS: tuple[str, ...] = ("motion", "photo")

_PAN_SIDE = (0.5, 0.7)  # pan window side, fraction of the region's smaller side
_PAN_TRAVEL = (0.6, 1.0)  # pan travel, fraction of the room left along the pan axis
_ZOOM_SIDE = (0.6, 1.0)  # largest zoom window side, fraction of the region's smaller side
_ZOOM_FACTOR = (1.3, 1.8)  # ratio of the largest to the smallest zoom window side
_VIDEO_GAIN = 0.1  # default per-clip brightness gain drawn in 1 +- this
_VIDEO_NOISE = 2.0  # default sensor noise std in grey levels


def camera_windows(
    motion: str, region: tuple[int, int, int, int], frames: int, rng: np.random.Generator
) -> np.ndarray:
    """Square camera windows (frames, 4) float64 (y0, x0, y1, x1) inside `region`, one a frame.

    Pans: side uniform in 50..70 % of the region's smaller side (so even a pan across the short
    side of a region has room), the window slides at constant speed along the pan axis by
    60..100 % of the room there, at a random place across it. Zooms: the largest window's side
    is 60..100 % of the smaller side, the centre is fixed and the side changes geometrically by
    a factor 1.3..1.8 over the clip (shrinking for zoom-in, growing for zoom-out). Every box
    lies inside the region (continuous coordinates, pixel edges at integers).
    """
    if motion not in DEMO_MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; allowed: {', '.join(DEMO_MOTIONS)}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, not {frames}")
    ry0, rx0, ry1, rx1 = (float(v) for v in region)
    height, width = ry1 - ry0, rx1 - rx0
    smaller = min(height, width)
    t = np.linspace(0.0, 1.0, frames)
    if motion.startswith("pan"):
        side = rng.uniform(*_PAN_SIDE) * smaller
        horizontal = motion in ("pan-left", "pan-right")
        room_along = (width if horizontal else height) - side
        room_across = (height if horizontal else width) - side
        travel = rng.uniform(*_PAN_TRAVEL) * room_along
        start = rng.uniform(0.0, room_along - travel)
        across = np.full(frames, rng.uniform(0.0, room_across))
        along = start + travel * (t if motion in ("pan-right", "pan-down") else 1.0 - t)
        ys, xs = (across, along) if horizontal else (along, across)
        tops, lefts = ry0 + ys, rx0 + xs
        sides = np.full(frames, side)
    else:
        big = rng.uniform(*_ZOOM_SIDE) * smaller
        factor = rng.uniform(*_ZOOM_FACTOR)
        cy = ry0 + big / 2 + rng.uniform(0.0, height - big)
        cx = rx0 + big / 2 + rng.uniform(0.0, width - big)
        sides = big * factor ** -(t if motion == "zoom-in" else 1.0 - t)
        tops, lefts = cy - sides / 2, cx - sides / 2
    boxes = np.stack([tops, lefts, tops + sides, lefts + sides], axis=1)
    # Guard against rounding: never step out of the region.
    return np.clip(boxes, [ry0, rx0, ry0, rx0], [ry1, rx1, ry1, rx1])


def sample_windows(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Resample boxes (T, 4) (y0, x0, y1, x1) of `image` (H, W, C) to float32 (T, size, size, C).

    Bilinear: output pixel (i, j) of frame t samples the point at the centre of cell (i, j) of
    the box cut into size x size cells (half-pixel convention, pixel centres at k + 0.5).
    Sample coordinates are clamped to the image's pixel centres, so nothing outside `image` is
    ever read. All frames are resampled in one batched grid_sample call.
    """
    import torch
    import torch.nn.functional as F

    boxes = np.asarray(boxes, dtype=np.float64)
    height, width, channels = image.shape
    cells = (np.arange(size) + 0.5) / size
    ys = boxes[:, 0:1] + cells * (boxes[:, 2:3] - boxes[:, 0:1])  # (T, size)
    xs = boxes[:, 1:2] + cells * (boxes[:, 3:4] - boxes[:, 1:2])
    gy = 2.0 * ys / height - 1.0  # align_corners=False: -1 and 1 are the outer pixel edges
    gx = 2.0 * xs / width - 1.0
    frames = len(boxes)
    grid = np.empty((frames, size, size, 2), dtype=np.float32)
    grid[..., 0] = gx[:, None, :]
    grid[..., 1] = gy[:, :, None]
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    src = src.permute(2, 0, 1).unsqueeze(0).expand(frames, channels, height, width)
    out = F.grid_sample(
        src, torch.from_numpy(grid), mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.permute(0, 2, 3, 1).numpy()


def _check_video_args(subset: str, count: int, frames: int) -> None:
    if subset not in DEMO_REGIONS:
        raise ValueError(f"unknown demo subset {subset!r}; allowed: {', '.join(DEMO_SUBSETS)}")
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if frames < 2:
        raise ValueError(f"frames must be at least 2, not {frames}")


def _clip_rng(seed: int, subset: str, k: int, stream: int) -> np.random.Generator:
    """Generator of clip k: stream 0 draws its camera path, stream 1 its brightness and noise."""
    return np.random.default_rng([seed, DEMO_SUBSETS.index(subset), k, stream])


def demo_video_plan(
    subset: str, count: int, frames: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo indices (count,), motion indices (count,) and camera boxes (count, frames, 4).

    Clip k shows photo k % n (n = len(DEMO_PHOTO_NAMES)), so every photo appears, with motion
    (k + k // L + offset) % 6, L = lcm(n, 6), offset seeded per (seed, subset): any prefix of
    the clips has motion counts within one of each other, and each run of gcd(n, 6) L clips
    starting at a multiple of L (84 clips for the 14 photos) gives every photo every motion.
    Boxes are absolute (y0, x0, y1, x1) in the 256 x 256 photo, inside DEMO_REGIONS[subset].
    Clip k depends only on (seed, subset, k), not on `count`.
    """
    _check_video_args(subset, count, frames)
    n_photos, n_motions = len(DEMO_PHOTO_NAMES), len(DEMO_MOTIONS)
    block = int(np.lcm(n_photos, n_motions))
    offset = int(np.random.default_rng([seed, DEMO_SUBSETS.index(subset)]).integers(n_motions))
    k = np.arange(count, dtype=np.int64)
    photos = k % n_photos
    motions = (k + k // block + offset) % n_motions
    region = DEMO_REGIONS[subset]
    boxes = np.stack(
        [
            camera_windows(DEMO_MOTIONS[m], region, frames, _clip_rng(seed, subset, i, 0))
            for i, m in enumerate(motions)
        ]
    )
    return photos, motions, boxes


def demo_videos(
    subset: str,
    count: int,
    frames: int,
    size: int,
    seed: int,
    label: str = "motion",
    *,
    gain: float = _VIDEO_GAIN,
    noise: float = _VIDEO_NOISE,
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Deterministic short clips of a virtual camera moving over the demo photos.

    Returns (clips, labels int64 (count,), class names); each clip is uint8
    (frames, size, size, 3). Clip k films photo k % len(DEMO_PHOTO_NAMES) with one of
    DEMO_MOTIONS (balanced, see demo_video_plan): a square window pans at constant speed or
    zooms geometrically (camera_windows) ONLY inside DEMO_REGIONS[subset] of the photo, so
    train, gallery and query clips never share a pixel; each frame is the window resampled
    bilinearly to size x size. Each clip then gets a brightness gain uniform in 1 +- `gain` and
    zero-mean uniform sensor noise of std `noise` grey levels per pixel, channel and frame
    (gain=0, noise=0 give clean clips; the camera path does not depend on either). Clip k
    depends only on (seed, subset, k, frames, size), not on `count`.

    label="motion": the class is the camera motion (class names = DEMO_MOTIONS). A single
    frame cannot reveal its motion, so frame-level retrieval by motion label is at chance by
    construction; it is a label for clip-level (temporal) tasks. label="photo": the class is
    the photo (class names = DEMO_PHOTO_NAMES), the retrieval task: scene identity is the cue
    that dominates UCF-101 retrieval too.
    """
    _check_video_args(subset, count, frames)
    if size < 8:
        raise ValueError(f"size must be at least 8, not {size}")
    if label not in DEMO_VIDEO_LABELS:
        raise ValueError(f"unknown label {label!r}; allowed: {', '.join(DEMO_VIDEO_LABELS)}")
    photos, motions, boxes = demo_video_plan(subset, count, frames, seed)
    ry0, rx0, ry1, rx1 = DEMO_REGIONS[subset]
    origin = np.array([ry0, rx0, ry0, rx0], dtype=np.float64)
    clips = []
    for k in range(count):
        crop = demo_photo(DEMO_PHOTO_NAMES[int(photos[k])])[ry0:ry1, rx0:rx1]
        rng = _clip_rng(seed, subset, k, 1)
        # Brightness and the rounding offset are affine, so apply them to the (smaller) source
        # before the bilinear resampling rather than to every output pixel.
        width = np.float32(noise * np.sqrt(12.0))  # uniform noise of std `noise`: 5x faster
        shift = np.float32(0.5) - width / 2  # to draw than Gaussian noise; +0.5 rounds
        src = crop.astype(np.float32) * np.float32(1.0 + rng.uniform(-gain, gain)) + shift
        clip = sample_windows(src, boxes[k] - origin, size)
        if noise:
            buf = rng.random(clip.shape, dtype=np.float32)
            buf *= width
            buf += clip
            clip = buf
        np.clip(clip, 0.0, 255.0, out=clip)
        clips.append(np.ascontiguousarray(clip.astype(np.uint8)))
    if label == "motion":
        return clips, motions.astype(np.int64), list(DEMO_MOTIONS)
    return clips, photos.astype(np.int64), list(DEMO_PHOTO_NAMES)
