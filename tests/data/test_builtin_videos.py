"""Built-in demo videos: a forward camera inside a subset's photo region, balls that fall or
slide in and come to rest (an arrow of time)."""

from __future__ import annotations

import numpy as np
import pytest

from permrl.data import builtin
from permrl.data.builtin import DEMO_PHOTO_NAMES, DEMO_REGIONS, DEMO_SUBSETS
from permrl.data.builtin_videos import (
    DEMO_EVENTS,
    Balls,
    _clip_rng,
    ball_paths,
    camera_windows,
    demo_video_plan,
    demo_videos,
    draw_balls,
    sample_windows,
)

N_PHOTOS = len(DEMO_PHOTO_NAMES)


def test_shapes_dtype_and_class_names():
    clips, labels, names = demo_videos("train", 5, 4, 16, seed=0)
    assert len(clips) == 5 and names == list(DEMO_EVENTS)
    for clip in clips:
        assert clip.shape == (4, 16, 16, 3) and clip.dtype == np.uint8
        assert clip.flags["C_CONTIGUOUS"]
    assert labels.shape == (5,) and labels.dtype == np.int64
    _, photo_labels, photo_names = demo_videos("train", 5, 4, 16, seed=0, label="photo")
    assert photo_names == list(DEMO_PHOTO_NAMES) and photo_labels.dtype == np.int64
    assert photo_labels.tolist() == [0, 1, 2, 3, 4]


def test_deterministic_and_independent_of_count():
    a, la, _ = demo_videos("gallery", 5, 3, 12, seed=7)
    b, lb, _ = demo_videos("gallery", 5, 3, 12, seed=7)
    c, lc, _ = demo_videos("gallery", 10, 3, 12, seed=7)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    for k in range(5):
        np.testing.assert_array_equal(a[k], c[k])
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(la, lc[:5])
    other, _, _ = demo_videos("gallery", 5, 3, 12, seed=8)
    assert any(not np.array_equal(x, y) for x, y in zip(a, other, strict=True))
    query, _, _ = demo_videos("query", 5, 3, 12, seed=7)
    assert all(not np.array_equal(x, y) for x, y in zip(a, query, strict=True))


@pytest.mark.parametrize("count", [1, 7, 30, 42, 101])
def test_labels_balanced_and_in_range(count):
    _, events, _ = demo_videos("train", count, 2, 8, seed=3, label="event")
    _, photos, _ = demo_videos("train", count, 2, 8, seed=3, label="photo")
    assert events.min() >= 0 and events.max() < len(DEMO_EVENTS)
    np.testing.assert_array_equal(photos, np.arange(count) % N_PHOTOS)
    event_counts = np.bincount(events, minlength=len(DEMO_EVENTS))
    photo_counts = np.bincount(photos, minlength=N_PHOTOS)
    assert event_counts.max() - event_counts.min() <= 1
    assert photo_counts.max() - photo_counts.min() <= 1


def test_every_photo_gets_every_event():
    block = int(np.lcm(N_PHOTOS, len(DEMO_EVENTS))) * int(np.gcd(N_PHOTOS, len(DEMO_EVENTS)))
    photos, events, _ = demo_video_plan("query", block, 2, seed=1)
    pairs = set(zip(photos.tolist(), events.tolist(), strict=True))
    assert pairs == {(p, m) for p in range(N_PHOTOS) for m in range(len(DEMO_EVENTS))}


def _inside(boxes: np.ndarray, region: tuple[int, int, int, int]) -> bool:
    y0, x0, y1, x1 = region
    return bool(
        (boxes[..., 0] >= y0).all()
        and (boxes[..., 1] >= x0).all()
        and (boxes[..., 2] <= y1).all()
        and (boxes[..., 3] <= x1).all()
        and (boxes[..., 2] > boxes[..., 0]).all()
        and (boxes[..., 3] > boxes[..., 1]).all()
    )


@pytest.mark.parametrize("subset", DEMO_SUBSETS)
def test_camera_only_moves_forward(subset):
    region = DEMO_REGIONS[subset]
    smaller = min(region[2] - region[0], region[3] - region[1])
    for seed in range(20):
        boxes = camera_windows(region, 9, np.random.default_rng(seed))
        assert boxes.shape == (9, 4) and _inside(boxes, region)
        heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        np.testing.assert_allclose(heights, widths)  # square windows
        cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        np.testing.assert_allclose(np.diff(cy), 0.0, atol=1e-9)  # centred zoom
        np.testing.assert_allclose(np.diff(cx), 0.0, atol=1e-9)
        assert (np.diff(widths) < 0).all()  # always closer
        ratios = widths[:-1] / widths[1:]
        np.testing.assert_allclose(ratios, ratios[0])  # geometric
        assert 1.1 - 1e-9 <= widths[0] / widths[-1] <= 1.4 + 1e-9
        assert 0.7 * smaller - 1e-9 <= widths[0] <= smaller + 1e-9


@pytest.mark.parametrize("subset", DEMO_SUBSETS)
def test_plan_boxes_stay_in_their_region(subset):
    photos, events, boxes = demo_video_plan(subset, 60, 5, seed=11)
    assert boxes.shape == (60, 5, 4)
    assert _inside(boxes, DEMO_REGIONS[subset])
    for other in DEMO_SUBSETS:
        if other != subset:  # regions are disjoint, so no box may touch another's interior
            y0, x0, y1, x1 = DEMO_REGIONS[other]
            overlap_y = np.minimum(boxes[..., 2], y1) - np.maximum(boxes[..., 0], y0)
            overlap_x = np.minimum(boxes[..., 3], x1) - np.maximum(boxes[..., 1], x0)
            assert not ((overlap_y > 0) & (overlap_x > 0)).any()


def _ball_masks(balls: Balls, boxes: np.ndarray, size: int) -> np.ndarray:
    """(T, size, size) bool: pixels whose centre lies within a ball's radius + 1 px."""
    scale = size / (boxes[:, 2] - boxes[:, 0])
    grid = np.arange(size) + 0.5
    mask = np.zeros((len(boxes), size, size), dtype=bool)
    for centre, radius in zip(balls.centres, balls.radii, strict=True):
        cy = (centre[:, 0] - boxes[:, 0]) * scale
        cx = (centre[:, 1] - boxes[:, 1]) * scale
        dy, dx = grid[None, :, None] - cy[:, None, None], grid[None, None, :] - cx[:, None, None]
        d = np.hypot(dy, dx)
        mask |= d <= radius * scale[:, None, None] + 1.0
    return mask


@pytest.mark.parametrize("subset", DEMO_SUBSETS)
def test_pixels_come_only_from_the_region_or_the_balls(subset, monkeypatch):
    """With a fake photo that is 100 inside the region and 0/255 outside, every pixel of a
    clean clip off the balls is 100."""
    y0, x0, y1, x1 = DEMO_REGIONS[subset]

    def fake_photo(name: str) -> np.ndarray:
        img = np.zeros((256, 256, 3), dtype=np.uint8)
        img[::2] = 255
        img[y0:y1, x0:x1] = 100
        return img

    monkeypatch.setattr("permrl.data.builtin_videos.demo_photo", fake_photo)
    count, frames, size = 12, 4, 40
    clips, events, _ = demo_videos(subset, count, frames, size, seed=2, gain=0.0, noise=0.0)
    _, _, boxes = demo_video_plan(subset, count, frames, seed=2)
    for k, clip in enumerate(clips):
        balls = ball_paths(DEMO_EVENTS[events[k]], boxes[k], _clip_rng(2, subset, k, 2))
        off = ~_ball_masks(balls, boxes[k], size)
        assert off.mean() > 0.3 and (clip[off] == 100).all()
    assert builtin.demo_photo is not fake_photo  # only the videos' reference was replaced


@pytest.mark.parametrize("event", DEMO_EVENTS)
def test_ball_kinematics_by_hand(event):
    """Falls start at rest above the first window and accelerate, slides start beside it and
    decelerate, all come to rest inside the last window; halfway through its travel time a
    fall has gone 1/4 of its way, a slide 3/4; no ball moves backwards or after resting."""
    rng = np.random.default_rng(5)
    region = DEMO_REGIONS["train"]
    t = np.arange(25.0)
    for seed in range(10):
        boxes = camera_windows(region, 25, np.random.default_rng(seed))
        b = ball_paths(event, boxes, rng)
        n = len(b.radii)
        assert 4 <= n <= 8 and b.centres.shape == (n, 25, 2)
        assert ((b.colours >= 0) & (b.colours <= 255)).all() and (np.diff(b.release) >= 0).all()
        first, last, r = boxes[0], boxes[-1], b.radii
        assert (b.rest[:, 1] - r >= last[1]).all() and (b.rest[:, 1] + r <= last[3]).all()
        assert (b.rest[:, 0] + r <= last[2]).all() and (b.rest[:, 0] - r >= last[0]).all()
        if event == "fall":
            np.testing.assert_allclose(b.start[:, 0], first[0] - r)
            np.testing.assert_allclose(b.start[:, 1], b.rest[:, 1])
        else:
            edge = first[1] - r if event == "slide-right" else first[3] + r
            np.testing.assert_allclose(b.start[:, 1], edge)
            np.testing.assert_allclose(b.start[:, 0], b.rest[:, 0])
        for i in range(n):
            before = t <= b.release[i]
            after = t >= b.release[i] + b.duration[i]
            still, rested = b.centres[i, before], b.centres[i, after]
            np.testing.assert_allclose(still, np.broadcast_to(b.start[i], still.shape))
            np.testing.assert_allclose(rested, np.broadcast_to(b.rest[i], rested.shape))
            half = 0.25 if event == "fall" else 0.75  # tau^2, 1 - (1 - tau)^2 at tau = 1/2
            mid = b.start[i] + half * (b.rest[i] - b.start[i])
            axis = 0 if event == "fall" else 1
            tau = np.clip((t - b.release[i]) / b.duration[i], 0, 1)
            way = b.rest[i, axis] - b.start[i, axis]
            moving = (tau > 0) & (tau < 1)
            if moving.sum() >= 3:
                path = b.centres[i, moving, axis]
                steps = np.diff(path) * np.sign(way)
                assert (steps > 0).all()  # never backwards
                accel = np.diff(path, 2) * np.sign(way)
                assert (accel > 0).all() if event == "fall" else (accel < 0).all()
            # Linear interpolation between frames bounds the position at the half time.
            th = b.release[i] + b.duration[i] / 2
            if 0 <= th <= 24:
                lo, hi = int(np.floor(th)), int(np.ceil(th))
                seg = b.centres[i, [lo, hi], axis]
                assert min(seg) - 1e-9 <= mid[axis] <= max(seg) + 1e-9


def test_draw_balls_matches_a_pixel_loop():
    rng = np.random.default_rng(0)
    frames = rng.uniform(0, 255, (2, 12, 12, 3)).astype(np.float32)
    boxes = np.array([[10.0, 20.0, 34.0, 44.0], [12.0, 22.0, 32.0, 42.0]])
    balls = Balls(centres=np.array([[[20.0, 30.0], [22.0, 33.0]]]), radii=np.array([4.0]),
                  colours=np.array([[200.0, 50.0, 10.0]]), start=np.array([[20.0, 30.0]]),
                  rest=np.array([[22.0, 33.0]]), release=np.zeros(1), duration=np.ones(1))
    out = draw_balls(frames.copy(), balls, boxes)
    for t in range(2):
        scale = 12 / (boxes[t, 2] - boxes[t, 0])
        cy, cx = (balls.centres[0, t] - boxes[t, :2]) * scale
        r = 4.0 * scale
        for i in range(12):
            for j in range(12):
                dy, dx = i + 0.5 - cy, j + 0.5 - cx
                alpha = min(max(r + 0.5 - np.hypot(dy, dx), 0.0), 1.0)
                shade = min(max(1.0 - 0.25 * (dy + dx) / (r * np.sqrt(2.0)), 0.75), 1.25)
                want = frames[t, i, j] + alpha * (balls.colours[0] * shade - frames[t, i, j])
                np.testing.assert_allclose(out[t, i, j], want, rtol=1e-5, atol=1e-3)


def _bilinear_reference(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Slow per-pixel bilinear sampling, pixel centres at k + 0.5, clamped to the image."""
    h, w, c = image.shape
    out = np.zeros((size, size, c))
    for i in range(size):
        for j in range(size):
            y = box[0] + (i + 0.5) * (box[2] - box[0]) / size - 0.5
            x = box[1] + (j + 0.5) * (box[3] - box[1]) / size - 0.5
            y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
            ya, xa = int(np.floor(y)), int(np.floor(x))
            yb, xb = min(ya + 1, h - 1), min(xa + 1, w - 1)
            fy, fx = y - ya, x - xa
            out[i, j] = (
                image[ya, xa] * (1 - fy) * (1 - fx)
                + image[ya, xb] * (1 - fy) * fx
                + image[yb, xa] * fy * (1 - fx)
                + image[yb, xb] * fy * fx
            )
    return out


def test_sample_windows_matches_reference():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    boxes = np.array([[0.0, 0.0, 20.0, 20.0], [3.3, 5.7, 11.1, 13.5], [10.0, 20.0, 20.0, 30.0]])
    out = sample_windows(image, boxes, 9)
    assert out.shape == (3, 9, 9, 3) and out.dtype == np.float32
    for t, box in enumerate(boxes):
        np.testing.assert_allclose(out[t], _bilinear_reference(image, box, 9), atol=1e-3)


def test_brightness_and_noise_vary_clips():
    clean, _, _ = demo_videos("gallery", 3, 3, 32, seed=0, gain=0.0, noise=0.0)
    noisy, _, _ = demo_videos("gallery", 3, 3, 32, seed=0, noise=3.0, gain=0.0)
    lit, _, _ = demo_videos("gallery", 3, 3, 32, seed=0, noise=0.0, gain=0.1)
    for c, n, b in zip(clean, noisy, lit, strict=True):
        diff = n.astype(np.float64) - c
        assert 1.5 < diff.std() < 4.5 and abs(diff.mean()) < 0.5
        ratio = b.astype(np.float64).mean() / c.mean()
        assert 0.88 < ratio < 1.12 and not np.array_equal(b, c)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="subset"):
        demo_videos("val", 2, 2, 8, seed=0)
    with pytest.raises(ValueError, match="count"):
        demo_videos("train", 0, 2, 8, seed=0)
    with pytest.raises(ValueError, match="frames"):
        demo_videos("train", 2, 1, 8, seed=0)
    with pytest.raises(ValueError, match="size"):
        demo_videos("train", 2, 2, 7, seed=0)
    with pytest.raises(ValueError, match="label"):
        demo_videos("train", 2, 2, 8, seed=0, label="motion")
    with pytest.raises(ValueError, match="event"):
        ball_paths("rise", camera_windows(DEMO_REGIONS["train"], 3, np.random.default_rng(0)),
                   np.random.default_rng(0))
