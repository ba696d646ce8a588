"""Built-in videos with an arrow of time, procedural, over the demo photographs.

Each clip films one of the bundled photos (`builtin.DEMO_PHOTO_NAMES`) with a camera that only
moves forward (a centred zoom-in) while balls enter the scene and come to rest:

* `fall`: each ball is released above the frame and falls under constant gravity (starting at
  rest, accelerating) onto a floor in the lower part of the view, where it stays;
* `slide-left` / `slide-right`: each ball rolls in from the right / left edge and decelerates
  under constant friction until it stops inside the view, where it stays.

Balls are released one after another, so the scene fills up over the clip and later balls
occlude earlier ones. Nothing here runs backwards as well as forwards: played in reverse, balls
would rise with a deceleration, roll out of the frame speeding up, and the camera would back
away. So the order of frames is recoverable from the frames, which the temporal task needs
(frames of a pan over a still photo, the previous built-in clips, only told direction-free
motion: pan-left was pan-right reversed).

The camera only films DEMO_REGIONS[subset] of the photo and the balls are drawn in the frame,
so train, gallery and query clips never share a photo pixel (labels: the event or the photo).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from permrl.data.builtin import DEMO_PHOTO_NAMES, DEMO_REGIONS, DEMO_SUBSETS, demo_photo

DEMO_EVENTS: tuple[str, ...] = ("fall", "slide-left", "slide-right")
"""What the balls do in a demo clip, the classes of demo_videos(..., label="event")."""

DEMO_VIDEO_LABELS: tuple[str, ...] = ("event", "photo")

_ZOOM_SIDE = (0.7, 1.0)  # first (largest) window side, fraction of the region's smaller side
_ZOOM_FACTOR = (1.1, 1.4)  # ratio of the first to the last window side (the camera advances)
_BALLS = (4, 8)  # balls per clip, inclusive
_RADIUS = (0.15, 0.25)  # ball radius, fraction of the last (smallest) window side
_RELEASE = (-0.25, 0.8)  # release times, fraction of the clip (negative: before frame 0)
_DURATION = (0.25, 0.45)  # time from release to rest, fraction of the clip
_FLOOR = (0.55, 0.95)  # rest height of a ball's bottom, fraction of the last window
_VIDEO_GAIN = 0.1  # default per-clip brightness gain drawn in 1 +- this
_VIDEO_NOISE = 2.0  # default sensor noise std in grey levels


def camera_windows(
    region: tuple[int, int, int, int], frames: int, rng: np.random.Generator
) -> np.ndarray:
    """Square windows (frames, 4) float64 (y0, x0, y1, x1) of a camera moving forward in `region`.

    The first window's side is 70..100 % of the region's smaller side, at a uniform position;
    the centre stays fixed and the side shrinks geometrically by a factor 1.1..1.4 over the clip
    (a zoom-in, what a camera moving forward sees of a far scene). Every box lies inside the
    region (continuous coordinates, pixel edges at integers).
    """
    if frames < 2:
        raise ValueError(f"frames must be at least 2, not {frames}")
    ry0, rx0, ry1, rx1 = (float(v) for v in region)
    height, width = ry1 - ry0, rx1 - rx0
    big = rng.uniform(*_ZOOM_SIDE) * min(height, width)
    factor = rng.uniform(*_ZOOM_FACTOR)
    cy = ry0 + big / 2 + rng.uniform(0.0, height - big)
    cx = rx0 + big / 2 + rng.uniform(0.0, width - big)
    sides = big * factor ** -np.linspace(0.0, 1.0, frames)
    tops, lefts = cy - sides / 2, cx - sides / 2
    boxes = np.stack([tops, lefts, tops + sides, lefts + sides], axis=1)
    return np.clip(boxes, [ry0, rx0, ry0, rx0], [ry1, rx1, ry1, rx1])  # guard against rounding


@dataclass(frozen=True)
class Balls:
    """The balls of one clip, in photo coordinates: centres (n, frames, 2) as (y, x), radii (n,),
    colours (n, 3) in grey levels; where each starts and rests (n, 2), and when (frames) it is
    released and how long it takes to rest (n,). Index order is release order = drawing order.
    """

    centres: np.ndarray
    radii: np.ndarray
    colours: np.ndarray
    start: np.ndarray
    rest: np.ndarray
    release: np.ndarray
    duration: np.ndarray


def ball_paths(event: str, boxes: np.ndarray, rng: np.random.Generator) -> Balls:
    """Where the balls of a clip with camera `boxes` (frames, 4) are at every frame.

    A ball released at time t0 reaches rest after a duration d (both in frames, drawn as
    fractions of the clip). With tau = clip((t - t0) / d, 0, 1) its travelled fraction of the
    way from start to rest is tau^2 for `fall` (from rest, constant acceleration) and
    1 - (1 - tau)^2 for the slides (constant deceleration to rest). Falls start just above the
    first (largest) window at a horizontal position inside the last window; slides start just
    outside the first window's side edge. Rest positions lie inside the last window, so balls at
    rest stay in view as the camera advances.
    """
    if event not in DEMO_EVENTS:
        raise ValueError(f"unknown event {event!r}; allowed: {', '.join(DEMO_EVENTS)}")
    frames = len(boxes)
    first, last = boxes[0], boxes[-1]
    side = last[2] - last[0]
    n = int(rng.integers(_BALLS[0], _BALLS[1] + 1))
    radii = rng.uniform(*_RADIUS, size=n) * side
    release = np.sort(rng.uniform(*_RELEASE, size=n)) * (frames - 1)
    duration = rng.uniform(*_DURATION, size=n) * (frames - 1)
    rest_y = last[0] + rng.uniform(*_FLOOR, size=n) * side - radii
    rest_x = last[1] + radii + rng.uniform(0.0, 1.0, size=n) * (side - 2 * radii)
    if event == "fall":
        start_y, start_x = first[0] - radii, rest_x
    else:
        start_y = rest_y
        start_x = first[1] - radii if event == "slide-right" else first[3] + radii
    t = np.arange(frames, dtype=np.float64)
    tau = np.clip((t[None, :] - release[:, None]) / duration[:, None], 0.0, 1.0)
    travelled = tau**2 if event == "fall" else 1.0 - (1.0 - tau) ** 2
    ys = start_y[:, None] + (rest_y - start_y)[:, None] * travelled
    xs = start_x[:, None] + (rest_x - start_x)[:, None] * travelled
    hsv = rng.uniform([0.0, 0.6, 0.55], [1.0, 1.0, 1.0], size=(n, 3))
    colours = 255.0 * np.array([colorsys.hsv_to_rgb(*c) for c in hsv])
    start = np.stack(np.broadcast_arrays(start_y, start_x), axis=-1)
    return Balls(np.stack([ys, xs], axis=-1), radii, colours.reshape(n, 3), start,
                 np.stack([rest_y, rest_x], axis=-1), release, duration)


def draw_balls(frames: np.ndarray, balls: Balls, boxes: np.ndarray) -> np.ndarray:
    """Paint `balls` over float32 frames (T, S, S, 3) filmed through `boxes` (T, 4), in place.

    Each ball maps into frame t by the window's offset and scale, and is a shaded disc (lit from
    the top left, brightness 0.75..1.25 of its colour) with an antialiased one-pixel edge:
    coverage clip(radius + 0.5 - distance, 0, 1) at each pixel centre (k + 0.5).
    """
    size = frames.shape[1]
    scale = size / (boxes[:, 2] - boxes[:, 0])  # (T,) output pixels per photo pixel
    grid = np.arange(size, dtype=np.float32) + 0.5
    for centre, radius, colour in zip(balls.centres, balls.radii, balls.colours, strict=True):
        cy = ((centre[:, 0] - boxes[:, 0]) * scale).astype(np.float32)[:, None, None]
        cx = ((centre[:, 1] - boxes[:, 1]) * scale).astype(np.float32)[:, None, None]
        r = (radius * scale).astype(np.float32)[:, None, None]
        dy, dx = grid[None, :, None] - cy, grid[None, None, :] - cx
        alpha = np.clip(r + 0.5 - np.sqrt(dy * dy + dx * dx), 0.0, 1.0)
        shade = np.clip(1.0 - 0.25 * (dy + dx) / (r * np.float32(np.sqrt(2.0))), 0.75, 1.25)
        paint = colour.astype(np.float32) * shade[..., None]
        frames += alpha[..., None] * (paint - frames)
    return frames


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
    """Generator of clip k: stream 0 draws its camera, 1 its brightness and noise, 2 its balls."""
    return np.random.default_rng([seed, DEMO_SUBSETS.index(subset), k, stream])


def demo_video_plan(
    subset: str, count: int, frames: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photo indices (count,), event indices (count,) and camera boxes (count, frames, 4).

    Clip k shows photo k % n (n = len(DEMO_PHOTO_NAMES)), so every photo appears, with event
    (k + k // L + offset) % E, E = len(DEMO_EVENTS), L = lcm(n, E), offset seeded per
    (seed, subset): any prefix of the clips has event counts within one of each other, and each
    run of gcd(n, E) L clips starting at a multiple of L gives every photo every event.
    Boxes are absolute (y0, x0, y1, x1) in the 256 x 256 photo, inside DEMO_REGIONS[subset].
    Clip k depends only on (seed, subset, k), not on `count`.
    """
    _check_video_args(subset, count, frames)
    n_photos, n_events = len(DEMO_PHOTO_NAMES), len(DEMO_EVENTS)
    block = int(np.lcm(n_photos, n_events))
    offset = int(np.random.default_rng([seed, DEMO_SUBSETS.index(subset)]).integers(n_events))
    k = np.arange(count, dtype=np.int64)
    photos = k % n_photos
    events = (k + k // block + offset) % n_events
    region = DEMO_REGIONS[subset]
    boxes = np.stack(
        [camera_windows(region, frames, _clip_rng(seed, subset, i, 0)) for i in range(count)]
    )
    return photos, events, boxes


def demo_videos(
    subset: str,
    count: int,
    frames: int,
    size: int,
    seed: int,
    label: str = "event",
    *,
    gain: float = _VIDEO_GAIN,
    noise: float = _VIDEO_NOISE,
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Deterministic short clips with an arrow of time (module docstring).

    Returns (clips, labels int64 (count,), class names); each clip is uint8
    (frames, size, size, 3). Clip k films photo k % len(DEMO_PHOTO_NAMES) with a forward camera
    (camera_windows) ONLY inside DEMO_REGIONS[subset] of the photo, each frame the window
    resampled bilinearly to size x size, and its balls (ball_paths, balanced events, see
    demo_video_plan) drawn over it. Each clip then gets a brightness gain uniform in 1 +- `gain`
    and zero-mean uniform sensor noise of std `noise` grey levels per pixel, channel and frame
    (gain=0, noise=0 give clean clips; camera and balls do not depend on either). Clip k depends
    only on (seed, subset, k, frames, size), not on `count`.

    label="event": the class is what the balls do (class names = DEMO_EVENTS), a clip-level
    label. label="photo": the class is the photo (class names = DEMO_PHOTO_NAMES), the
    retrieval task: scene identity is the cue that dominates UCF-101 retrieval too.
    """
    _check_video_args(subset, count, frames)
    if size < 8:
        raise ValueError(f"size must be at least 8, not {size}")
    if label not in DEMO_VIDEO_LABELS:
        raise ValueError(f"unknown label {label!r}; allowed: {', '.join(DEMO_VIDEO_LABELS)}")
    photos, events, boxes = demo_video_plan(subset, count, frames, seed)
    ry0, rx0, ry1, rx1 = DEMO_REGIONS[subset]
    origin = np.array([ry0, rx0, ry0, rx0], dtype=np.float64)
    clips = []
    for k in range(count):
        crop = demo_photo(DEMO_PHOTO_NAMES[int(photos[k])])[ry0:ry1, rx0:rx1]
        clip = sample_windows(crop.astype(np.float32), boxes[k] - origin, size)
        balls = ball_paths(DEMO_EVENTS[int(events[k])], boxes[k], _clip_rng(seed, subset, k, 2))
        draw_balls(clip, balls, boxes[k])
        rng = _clip_rng(seed, subset, k, 1)
        clip *= np.float32(1.0 + rng.uniform(-gain, gain))
        width = np.float32(noise * np.sqrt(12.0))  # uniform noise of std `noise`: 5x faster
        clip += np.float32(0.5) - width / 2  # to draw than Gaussian noise; +0.5 rounds
        if noise:
            clip += width * rng.random(clip.shape, dtype=np.float32)
        np.clip(clip, 0.0, 255.0, out=clip)
        clips.append(np.ascontiguousarray(clip.astype(np.uint8)))
    if label == "event":
        return clips, events.astype(np.int64), list(DEMO_EVENTS)
    return clips, photos.astype(np.int64), list(DEMO_PHOTO_NAMES)
