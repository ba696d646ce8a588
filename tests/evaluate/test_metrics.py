"""AP (VOC protocol, all-point and 11-point), mAP and accuracy against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from permrl.evaluate.metrics import accuracy, average_precision, mean_average_precision


def _brute_force_ap(scores, targets) -> float:  # noqa: ANN001
    """From the definition: drop difficult entries, rank by score; each positive adds
    1/n_pos recall at its rank k, with the interpolated precision max_{j >= k} precision_j."""
    kept = [(s, t) for s, t in zip(scores, targets, strict=True) if t != -1]
    kept.sort(key=lambda st: -st[0])
    n_pos = sum(1 for _, t in kept if t == 1)
    precisions, hits = [], 0
    for k, (_, t) in enumerate(kept, start=1):
        hits += t == 1
        precisions.append(hits / k)
    total = 0.0
    for k, (_, t) in enumerate(kept):
        if t == 1:
            total += max(precisions[k:]) / n_pos
    return total


def test_hand_computed_example():
    # Drop the difficult entry (0.6). Ranked targets 1, 0, 1, 1 with 3 positives:
    #   precision 1, 1/2, 2/3, 3/4   recall 1/3, 1/3, 2/3, 1
    #   interpolated (max to the right) 1, 3/4, 3/4, 3/4
    #   all-point AP = 1/3 * 1 + (1/3 - 1/3) * 3/4 + 1/3 * 3/4 + 1/3 * 3/4 = 1/3 + 1/2 = 5/6
    #   11-point: r = 0, .1, .2, .3 -> 1 (recall 1/3 reached at precision 1);
    #             r = .4 ... 1 (7 points) -> 3/4;  AP = (4 + 7 * 3/4) / 11 = 9.25 / 11
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    targets = np.array([1, 0, 1, -1, 1])
    assert average_precision(scores, targets) == pytest.approx(5 / 6, abs=1e-12)
    assert average_precision(scores, targets, eleven_point=True) == pytest.approx(9.25 / 11)
    # the difficult entry is ignored wherever it ranks, and whatever it is
    assert average_precision([0.9, 0.8, 0.7, 0.99, 0.5], targets) == pytest.approx(5 / 6)
    # as a negative instead it would count: ranked 1, 0, 1, 0, 1 -> 1/3 + 1/3 * 2/3 + 1/3 * 3/5
    assert average_precision(scores, [1, 0, 1, 0, 1]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_perfect_worst_and_undefined():
    assert average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert average_precision([3, 2, 1, 0], [1, 1, 0, 0], eleven_point=True) == pytest.approx(1.0)
    # worst: positives last -> precisions at the positives 1/3 and 2/4, interpolated 1/2 both
    assert average_precision([3, 2, 1, 0], [0, 0, 1, 1]) == pytest.approx(0.5)
    assert math.isnan(average_precision([1, 2], [0, 0]))
    assert math.isnan(average_precision([1, 2], [-1, 0]))
    assert math.isnan(average_precision([], []))
    assert average_precision(torch.tensor([0.2, 0.9]), torch.tensor([1.0, 0.0])) == 0.5


def test_ties_keep_input_order():
    assert average_precision([1, 1], [1, 0]) == 1.0
    assert average_precision([1, 1], [0, 1]) == 0.5


def test_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        scores = rng.normal(size=n)  # continuous: no ties
        targets = rng.choice([1, 0, -1], size=n, p=[0.3, 0.55, 0.15])
        if not (targets == 1).any():
            targets[int(rng.integers(n))] = 1
        expected = _brute_force_ap(scores.tolist(), targets.tolist())
        assert average_precision(scores, targets) == pytest.approx(expected, abs=1e-12), trial
        # the 11-point AP samples the same non-increasing curve at 11 recalls
        eleven = np.mean(
            [
                max([p for p, r in _curve(scores, targets) if r >= t - 1e-12], default=0.0)
                for t in np.linspace(0, 1, 11)
            ]
        )
        assert average_precision(scores, targets, True) == pytest.approx(eleven, abs=1e-12)


def _curve(scores, targets):  # noqa: ANN001, ANN202
    kept = sorted(((s, t) for s, t in zip(scores, targets, strict=True) if t != -1),
                  key=lambda st: -st[0])  # fmt: skip
    n_pos, hits = sum(t == 1 for _, t in kept), 0
    for k, (_, t) in enumerate(kept, start=1):
        hits += t == 1
        yield hits / k, hits / n_pos


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 scores but 3 targets"):
        average_precision([1, 2], [1, 0, 0])
    with pytest.raises(ValueError, match="finite"):
        average_precision([np.nan, 2], [1, 0])
    with pytest.raises(ValueError, match="targets must be"):
        average_precision([1, 2], [1, 2])


def test_mean_average_precision_skips_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.9, 0.4], [0.7, 0.2, 0.3], [0.6, 0.8, 0.2],
                       [0.5, 0.3, 0.1]])  # fmt: skip
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, -1], [-1, 1, 0], [1, 0, 0]])
    result = mean_average_precision(scores, targets)
    assert result["classes"] == 3 and result["counted"] == 2
    assert result["ap"][0] == pytest.approx(5 / 6) and result["ap"][1] == 1.0
    assert math.isnan(result["ap"][2])
    assert result["map"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert math.isnan(mean_average_precision(scores, np.zeros_like(targets))["map"])
    with pytest.raises(ValueError, match="same"):
        mean_average_precision(scores, targets[:, :2])


def test_accuracy():
    logits = np.array([[0.1, 0.9], [2.0, 1.0], [0.0, 3.0]])
    assert accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 0.5
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])
