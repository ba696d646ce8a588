"""Built-in demo videos: a virtual camera panning or zooming inside a subset's photo region."""

from __future__ import annotations

import numpy as np
import pytest

from permrl.data import builtin
from permrl.data.builtin import (
    DEMO_MOTIONS,
    DEMO_PHOTO_NAMES,
    DEMO_REGIONS,
    DEMO_SUBSETS,
    camera_windows,
    demo_video_plan,
    demo_videos,
    sample_windows,
)

N_PHOTOS = len(DEMO_PHOTO_NAMES)


def test_shapes_dtype_and_class_names():
    clips, labels, names = demo_videos("train", 5, 4, 16, seed=0)
    assert len(clips) == 5 and names == list(DEMO_MOTIONS)
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


@pytest.mark.parametrize("count", [1, 7, 30, 84, 101])
def test_labels_balanced_and_in_range(count):
    _, motions, _ = demo_videos("train", count, 2, 8, seed=3, label="motion")
    _, photos, _ = demo_videos("train", count, 2, 8, seed=3, label="photo")
    assert motions.min() >= 0 and motions.max() < len(DEMO_MOTIONS)
    assert photos.min() >= 0 and photos.max() < N_PHOTOS
    np.testing.assert_array_equal(photos, np.arange(count) % N_PHOTOS)
    motion_counts = np.bincount(motions, minlength=len(DEMO_MOTIONS))
    photo_counts = np.bincount(photos, minlength=N_PHOTOS)
    assert motion_counts.max() - motion_counts.min() <= 1
    assert photo_counts.max() - photo_counts.min() <= 1


def test_every_photo_gets_every_motion():
    photos, motions, _ = demo_video_plan("query", 2 * int(np.lcm(N_PHOTOS, 6)), 2, seed=1)
    pairs = set(zip(photos.tolist(), motions.tolist(), strict=True))
    assert pairs == {(p, m) for p in range(N_PHOTOS) for m in range(len(DEMO_MOTIONS))}


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
@pytest.mark.parametrize("motion", DEMO_MOTIONS)
def test_camera_windows_geometry(subset, motion):
    region = DEMO_REGIONS[subset]
    smaller = min(region[2] - region[0], region[3] - region[1])
    for seed in range(20):
        boxes = camera_windows(motion, region, 9, np.random.default_rng(seed))
        assert boxes.shape == (9, 4) and _inside(boxes, region)
        heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        np.testing.assert_allclose(heights, widths)  # square windows
        cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        dy, dx, ds = np.diff(cy), np.diff(cx), np.diff(widths)
        if motion.startswith("pan"):
            np.testing.assert_allclose(ds, 0.0, atol=1e-9)
            assert 0.5 * smaller - 1e-9 <= widths[0] <= 0.7 * smaller + 1e-9
            moving, still = (dx, dy) if motion in ("pan-left", "pan-right") else (dy, dx)
            np.testing.assert_allclose(still, 0.0, atol=1e-9)
            sign = 1.0 if motion in ("pan-right", "pan-down") else -1.0
            assert (sign * moving > 0).all()
            np.testing.assert_allclose(moving, moving[0])  # constant speed
        else:
            np.testing.assert_allclose(dx, 0.0, atol=1e-9)
            np.testing.assert_allclose(dy, 0.0, atol=1e-9)
            assert ((ds < 0) if motion == "zoom-in" else (ds > 0)).all()
            assert 1.3 - 1e-9 <= widths.max() / widths.min() <= 1.8 + 1e-9
            assert widths.max() <= smaller + 1e-9


@pytest.mark.parametrize("subset", DEMO_SUBSETS)
def test_plan_boxes_stay_in_their_region(subset):
    photos, motions, boxes = demo_video_plan(subset, 60, 5, seed=11)
    assert boxes.shape == (60, 5, 4)
    assert _inside(boxes, DEMO_REGIONS[subset])
    for other in DEMO_SUBSETS:
        if other != subset:  # regions are disjoint, so no box may touch another's interior
            y0, x0, y1, x1 = DEMO_REGIONS[other]
            overlap_y = np.minimum(boxes[..., 2], y1) - np.maximum(boxes[..., 0], y0)
            overlap_x = np.minimum(boxes[..., 3], x1) - np.maximum(boxes[..., 1], x0)
            assert not ((overlap_y > 0) & (overlap_x > 0)).any()


@pytest.mark.parametrize("subset", DEMO_SUBSETS)
def test_pixels_come_only_from_the_region(subset, monkeypatch):
    """With a fake photo that is 100 inside the region and 0/255 outside, clean clips are 100."""
    y0, x0, y1, x1 = DEMO_REGIONS[subset]

    def fake_photo(name: str) -> np.ndarray:
        img = np.zeros((256, 256, 3), dtype=np.uint8)
        img[::2] = 255
        img[y0:y1, x0:x1] = 100
        return img

    monkeypatch.setattr(builtin, "demo_photo", fake_photo)
    clips, _, _ = demo_videos(subset, 12, 4, 40, seed=2, gain=0.0, noise=0.0)
    for clip in clips:
        assert (clip == 100).all()


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


def _best_shift(a: np.ndarray, b: np.ndarray, axis: int, max_shift: int) -> int:
    """The integer s minimising the mean squared error between b[p] and a[p + s] on `axis`."""
    n = a.shape[axis]
    errors = {}
    for s in range(-max_shift, max_shift + 1):
        lo, hi = max(0, -s), min(n, n - s)
        part_b = np.take(b, np.arange(lo, hi), axis=axis).astype(np.float64)
        part_a = np.take(a, np.arange(lo + s, hi + s), axis=axis).astype(np.float64)
        errors[s] = np.mean((part_a - part_b) ** 2)
    return min(errors, key=errors.get)


@pytest.mark.parametrize(
    "motion,axis,sign", [("pan-right", 1, 1), ("pan-down", 0, 1), ("pan-left", 1, -1)]
)
def test_pan_shifts_the_content(motion, axis, sign):
    """Frame t+1 is frame t moved against the camera by the per-frame displacement."""
    size, frames = 48, 12
    count = 2 * N_PHOTOS * len(DEMO_MOTIONS)
    _, motions, boxes = demo_video_plan("train", count, frames, seed=5)
    picks = np.flatnonzero(motions == DEMO_MOTIONS.index(motion))[:3]
    clips, labels, _ = demo_videos(
        "train", int(picks[-1]) + 1, frames, size, seed=5, gain=0.0, noise=0.0
    )
    assert (labels[picks] == DEMO_MOTIONS.index(motion)).all()
    for k in picks:
        box = boxes[k]
        side = box[0, 3] - box[0, 1]
        step = (box[1, axis] - box[0, axis]) * size / side  # output pixels per frame
        assert sign * step > 0.5
        for t in range(frames - 1):
            frame, nxt = clips[k][t, :, :, :], clips[k][t + 1]
            shift = _best_shift(frame, nxt, axis, max_shift=size // 2)
            assert abs(shift - step) < 1.0, (k, t, shift, step)


def test_zoom_in_magnifies():
    """Zoom-in: the next frame's centre is the current frame's centre enlarged."""
    size, frames = 48, 4
    _, motions, boxes = demo_video_plan("query", 40, frames, seed=4)
    k = int(np.flatnonzero(motions == DEMO_MOTIONS.index("zoom-in"))[0])
    clips, _, _ = demo_videos("query", k + 1, frames, size, seed=4, gain=0.0, noise=0.0)
    clip, box = clips[k], boxes[k]
    # Render frame t+1's window from frame t's pixels and compare with frame t+1.
    for t in range(frames - 1):
        side = box[t, 2] - box[t, 0]
        rel = (box[t + 1] - box[t, [0, 1, 0, 1]]) * size / side
        predicted = sample_windows(clip[t].astype(np.float32), rel[None], size)[0]
        err = np.abs(predicted - clip[t + 1]).mean()
        unrelated = np.abs(clip[t].astype(np.float32) - clip[t + 1]).mean()
        assert err < 0.5 * unrelated and err < 6.0, (t, err, unrelated)


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
        demo_videos("train", 2, 2, 8, seed=0, label="scene")
    with pytest.raises(ValueError, match="motion"):
        camera_windows("tilt", DEMO_REGIONS["train"], 3, np.random.default_rng(0))
