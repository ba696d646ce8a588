"""Temporal samples and the per-step batches (design §3): windows, crops, retries, skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from permrl.data.batches import (
    ClipBatches,
    ValidationError,
    read_clip,
    split_validation,
    validation_clips,
    validation_size,
)
from permrl.data.samples import clip_crop_box, clip_window, crop_clip, make_clip_frames
from permrl.data.sources import SkipCounter


@pytest.mark.parametrize("count", range(1, 40))
def test_clip_window_stays_inside_the_video(count):
    rng = np.random.default_rng(count)
    for _ in range(30):
        window = clip_window(count, 5, 1, 4, rng)
        if count < 5:
            assert window is None
            continue
        start, stride = window
        last = start + 4 * stride
        assert 0 <= start and last <= count - 1 and 1 <= stride <= 4
    if count >= 5:  # validation view: deterministic, the middle stride when it fits, centred
        start, stride = clip_window(count, 5, 1, 4, None)
        assert stride == min(3, (count - 1) // 4)  # 2.5 rounded up
        assert start == (count - (4 * stride + 1)) // 2


def test_clip_window_draws_every_allowed_stride():
    rng = np.random.default_rng(0)
    strides = {clip_window(100, 4, 2, 5, rng)[1] for _ in range(200)}
    assert strides == {2, 3, 4, 5}


def test_clip_crop_box_bounds_and_validation_centre():
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, side = clip_crop_box(48, 64, 0.6, rng)
        assert round(0.6 * 48) <= side <= 48
        assert 0 <= top <= 48 - side and 0 <= left <= 64 - side
    # Validation: the mean training side 0.8 x 48 = 38.4 -> 38 px, centred.
    assert clip_crop_box(48, 64, 0.6, None) == (5, 13, 38)
    assert clip_crop_box(48, 64, 1.0, None) == (0, 8, 48)


def test_crop_clip_applies_one_crop_to_every_frame():
    frames = np.random.default_rng(2).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    out = crop_clip(frames, (2, 5, 16), 16)  # no resize: an exact slice
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.uint8
    for t in range(3):
        expected = torch.from_numpy(frames[t, 2:18, 5:21]).permute(2, 0, 1)
        assert torch.equal(out[t], expected)
    assert crop_clip(frames, (0, 0, 20), 8).shape == (3, 3, 8, 8)


def test_make_clip_frames_normalises_each_frame_and_greys_whole_clips():
    clips = torch.randint(0, 256, (4, 5, 3, 8, 8), dtype=torch.uint8)
    out = make_clip_frames(clips, train=False)
    flat = out.flatten(-2)
    torch.testing.assert_close(flat.mean(-1), torch.zeros(4, 5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(-1, correction=0), torch.ones(4, 5, 3), atol=1e-4, rtol=0)
    grey = make_clip_frames(clips, train=True, grey_prob=1.0, jitter_strength=0.0)
    assert torch.allclose(grey[:, :, 0], grey[:, :, 1], atol=1e-5)


class FakeVideos:
    """Videos of known length; `header` overstates some lengths like a lying container."""

    def __init__(self, lengths, header=None):
        self.lengths, self.header = list(lengths), dict(header or {})
        self.reads: list[tuple[int, list[int]]] = []

    def __len__(self):
        return len(self.lengths)

    def frame_count(self, i):
        return self.header.get(i, self.lengths[i])

    def read_frames(self, i, indices):
        self.reads.append((i, list(indices)))
        if self.lengths[i] == 0:
            return None
        if max(indices) >= self.lengths[i]:
            self.header[i] = self.lengths[i]  # what a failed read teaches the source
            return None
        return np.stack([np.full((12, 16, 3), k, np.uint8) for k in indices])

    def describe(self, i):
        return f"video{i}"


def test_read_clip_retries_once_with_the_discovered_length():
    videos = FakeVideos([10], header={0: 40})
    clip = None
    for seed in range(20):  # some windows fall past frame 10 and must be redrawn
        clip = read_clip(videos, 0, 4, 1, 3, 1.0, 8, np.random.default_rng(seed))
        assert clip is not None
    assert videos.frame_count(0) == 10
    # Frames come in temporal order: the constant frame values are the frame indices.
    values = clip[:, 0, 0, 0].tolist()
    assert values == sorted(values) and len(set(values)) == 4


def test_read_clip_skips_short_and_unreadable_videos():
    videos = FakeVideos([3, 0])
    assert read_clip(videos, 0, 4, 1, 2, 1.0, 8, np.random.default_rng(0)) is None
    assert videos.reads == []  # too short: known from the count, nothing decoded
    assert read_clip(videos, 1, 4, 1, 2, 1.0, 8, np.random.default_rng(0)) is None


def test_clip_batches_count_skips_and_keep_the_rest():
    videos = FakeVideos([20, 2, 20, 0, 20])
    train_idx = np.arange(5)
    batches = ClipBatches(videos, train_idx, frames=4, size=8, stride_min=1, stride_max=2,
                          crop_min=0.5, batch_size=5, seed=0, grey_prob=0.0, colour_jitter=0.0)
    batch = batches[0]
    assert sorted(batch["skipped"]) == ["video1", "video3"]
    assert batch["uint8"].shape == (3, 4, 3, 8, 8) and batch["uint8"].dtype == torch.uint8
    assert batches.parts(batch).shape == (3, 4, 3, 8, 8)
    again = batches[0]  # the data of a step is a pure function of (seed, step)
    assert torch.equal(batches.parts(batch), batches.parts(again))


def test_validation_clips_are_deterministic_and_count_skips():
    videos = FakeVideos([20, 1, 30])
    skips = SkipCounter()
    a = validation_clips(videos, np.arange(3), frames=4, size=8, stride_min=1, stride_max=3,
                         crop_min=0.5, skips=skips)
    b = validation_clips(videos, np.arange(3), frames=4, size=8, stride_min=1, stride_max=3,
                         crop_min=0.5, skips=SkipCounter())
    assert a.shape == (2, 4, 3, 8, 8) and torch.equal(a, b)
    assert skips.count == 1 and skips.first == "video1"


def test_split_validation_is_disjoint_and_seeded():
    train, val = split_validation(50, 10, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 50
    assert np.array_equal(val, split_validation(50, 10, seed=3)[1])
    assert not np.array_equal(val, split_validation(50, 10, seed=4)[1])


@pytest.mark.parametrize(("items", "asked", "held_out"), [
    (2, 0, 1), (4, 0, 2), (5, 0, 2), (8, 0, 4), (30, 0, 4), (78, 0, 8), (120, 0, 12),
    (999, 0, 100), (60_000, 0, 100), (50, 7, 7), (3, 40, 40),
])
def test_validation_size_by_hand(items, asked, held_out):
    """0 = auto: 10 % rounded, at most 100, at least 4 or half of a tiny source."""
    assert validation_size(items, asked) == held_out


def test_split_validation_auto_and_errors():
    train, val = split_validation(78, 0, seed=1)
    assert len(val) == 8 and len(train) == 70
    assert np.array_equal(val, split_validation(78, 8, seed=1)[1])  # auto = explicit 8
    with pytest.raises(ValidationError, match=r"1 item; train.val_size=0 \(auto\) needs 1 "):
        split_validation(1, 0, seed=0)
    with pytest.raises(ValidationError, match="4 items; train.val_size=4 needs 4 held-out "
                                              "videos plus at least one training video"):
        split_validation(4, 4, seed=0, what="video")
