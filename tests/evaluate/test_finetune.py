"""Fine-tuning: weights copied, trunk untouched, a trivially separable set learnt, the masked
multi-label loss and the per-video averaging against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from permrl.data.sources import ImageSource, open_source
from permrl.data.video_sources import VideoSource
from permrl.evaluate.finetune import (
    FinetuneNet,
    augment,
    finetune,
    masked_bce,
    video_predictions,
)
from permrl.models.trunk import CaffeNetBN

SIZE = 36


def trunk() -> CaffeNetBN:
    torch.manual_seed(0)
    return CaffeNetBN(width=0.125, conv1_stride=2)


def stripes(horizontal: bool, rng: np.random.Generator, size: int = 44) -> np.ndarray:
    """Stripes of a random period and phase, with noise: horizontal (class 0) or vertical.
    Per-image normalisation removes colour, so the classes differ by orientation (which
    crops and horizontal flips keep)."""
    period = int(rng.integers(6, 10))
    phase = rng.uniform(0, 2 * np.pi)
    t = np.arange(size)
    wave = 127 + 100 * np.sin(2 * np.pi * t / period + phase)
    img = np.repeat(wave[:, None], size, 1) if horizontal else np.repeat(wave[None, :], size, 0)
    img = img[..., None] + rng.normal(0, 20, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def stripe_folder(root, n_per_class: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    for name, horizontal in (("horizontal", True), ("vertical", False)):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(stripes(horizontal, rng)).save(root / name / f"{i}.png")
    return f"folder:{root}"


def test_finetune_net_copies_conv_weights_and_runs() -> None:
    t = trunk()
    net = FinetuneNet(t, 5, input_size=SIZE, conv1_stride=2, fc_dims=(16, 8))
    for name, value in t.state_dict().items():
        copied = net.trunk.state_dict()[name]
        assert torch.equal(copied, value)
        assert copied.data_ptr() != value.data_ptr()  # a copy, not shared storage
    assert net.fc_dims == [16, 8] and net.pool5_dim == 32  # 32 channels, 1x1 at 36 px
    net.eval()
    assert net(torch.randn(3, 3, SIZE, SIZE)).shape == (3, 5)
    default = FinetuneNet(t, 5, input_size=SIZE, conv1_stride=2)
    assert default.fc_dims == [512, 512]  # 4096 * width 0.125


def test_finetune_learns_a_separable_set_and_leaves_the_trunk_alone(tmp_path) -> None:
    train = open_source(stripe_folder(tmp_path / "train", 16, seed=0))
    test = open_source(stripe_folder(tmp_path / "test", 8, seed=1))
    t = trunk()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    out = finetune(t, train, test, input_size=SIZE, conv1_stride=2, steps=40, batch_size=16,
                   lr=0.01, fc_dims=(32, 32), seed=0)
    assert out["test_accuracy"] == 1.0  # the known answer: orientation is trivially learnable
    assert out["train_items"] == 32 and out["test_items"] == 16 and out["classes"] == 2
    for k, v in t.state_dict().items():
        assert torch.equal(v, before[k])
    json.dumps(out)
    assert "fixed 40 steps" in out["protocol"]


def test_masked_bce_matches_a_hand_computation() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0], [3.0, 0.5, 1.0]])
    targets = torch.tensor([[1.0, -1.0, 0.0], [-1.0, -1.0, 1.0]])
    # kept entries: (0,0) target 1 -> log(1 + e^0); (0,2) target 0 -> log(1 + e^-1);
    # (1,2) target 1 -> log(1 + e^-1). The -1 entries do not count, whatever their logits.
    expected = (math.log(2) + math.log1p(math.exp(-1)) + math.log1p(math.exp(-1))) / 3
    assert masked_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    moved = logits.clone()
    moved[targets == -1] = 100.0
    assert masked_bce(moved, targets).item() == pytest.approx(expected, rel=1e-6)
    assert masked_bce(logits, torch.full_like(targets, -1)).item() == 0.0


def test_video_predictions_equal_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    n = 4
    indices = torch.tensor([0, 1, 2, 3, 8, 9, 11, 12, 13, 14, 15])  # video 1 missing, 2 partial
    probs = torch.rand(len(indices), 3, generator=g).softmax(1)
    labels = (indices // n) % 3
    ids, means, video_labels = video_predictions(probs, labels, indices, n)
    assert ids.tolist() == [0, 2, 3]
    for row, v in enumerate(ids.tolist()):
        frames = [i for i in range(len(indices)) if int(indices[i]) // n == v]
        expected = sum(probs[i] for i in frames) / len(frames)
        torch.testing.assert_close(means[row], expected)
        assert int(video_labels[row]) == v % 3


def test_augment_takes_crops_and_flips_from_the_generator() -> None:
    images = torch.arange(2 * 3 * 6 * 7, dtype=torch.int64).reshape(2, 3, 6, 7).to(torch.uint8)
    out = augment(images, 4, torch.Generator().manual_seed(3))
    again = augment(images, 4, torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and out.shape == (2, 3, 4, 4) and out.dtype == torch.uint8
    for b in range(2):
        crops = [images[b, :, i : i + 4, j : j + 4] for i in range(3) for j in range(4)]
        assert any(torch.equal(out[b], c) or torch.equal(out[b], c.flip(-1)) for c in crops)


def test_augment_equals_the_per_image_crops_of_its_draws() -> None:
    """The one-gather crop is the naive per-image slice (and flip) of the same three draws."""
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (16, 3, 9, 11), generator=gen, dtype=torch.uint8)
    out = augment(images, 5, torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)
    tops = torch.randint(0, 5, (16,), generator=draws)
    lefts = torch.randint(0, 7, (16,), generator=draws)
    flips = torch.rand(16, generator=draws) < 0.5
    assert 0 < int(flips.sum()) < 16
    for i in range(16):
        crop = images[i, :, tops[i] : tops[i] + 5, lefts[i] : lefts[i] + 5]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop), i


def multilabel_source(name: str, n: int, seed: int) -> ImageSource:
    rng = np.random.default_rng(seed)
    horizontal = np.arange(n) % 2 == 0
    source = ImageSource(name, [stripes(bool(h), rng) for h in horizontal], None,
                         ["horizontal", "vertical", "hard"])
    targets = np.stack([horizontal, ~horizontal, np.zeros(n, bool)], 1).astype(np.float32)
    targets[::3, 2] = -1  # difficult-only entries: ignored
    source.targets = targets  # type: ignore[attr-defined]
    return source


def test_multilabel_finetune_reports_map() -> None:
    train, test = multilabel_source("train", 16, 0), multilabel_source("test", 8, 1)
    out = finetune(trunk(), train, test, input_size=SIZE, conv1_stride=2, steps=3,
                   batch_size=8, fc_dims=(16, 16))
    assert 0.0 <= out["map"] <= 1.0 and len(out["ap"]) == 3 and out["classes"] == 3
    assert out["ap"][2] is None  # no positives among the kept entries: no AP (NaN -> null)
    assert "target != -1" in out["protocol"] and "test_accuracy" not in out
    json.dumps(out, allow_nan=False)


def test_video_finetune_reports_video_accuracy() -> None:
    rng = np.random.default_rng(0)

    def clips(n: int) -> VideoSource:
        horizontal = np.arange(n) % 2 == 0
        items = [np.stack([stripes(bool(h), rng) for _ in range(6)]) for h in horizontal]
        return VideoSource("clips", items, (~horizontal).astype(np.int64), ["h", "v"])

    out = finetune(trunk(), clips(4), clips(2), input_size=SIZE, conv1_stride=2, steps=3,
                   batch_size=8, fc_dims=(16, 16), frames_per_video=5, train_frames_per_video=3)
    assert out["test_videos"] == 2 and out["test_items"] == 10 and out["train_items"] == 12
    assert out["video_accuracy"] == out["test_accuracy"] and 0 <= out["frame_accuracy"] <= 1
    assert "mean softmax of its 5 evenly spaced frames" in out["protocol"]
    json.dumps(out)
