"""Eq. 3, 4, 6 and the exact cached state (design §6) against the naive forward."""

from __future__ import annotations

import pytest
import torch
from tiny_config import tiny_overrides

from permrl.config import load_config
from permrl.models.build import build_model
from permrl.permutations import select_permutations
from permrl.policy.state import (
    NetworkState,
    compute_state,
    naive_state,
    softmax_ratio,
    state_from_features,
)

TINY = tiny_overrides(
    "spatial.cell=32", "temporal.frame_size=32", "tasks=[spatial, temporal]", "spatial.grid=3",
    "spatial.permutations=100", "temporal.frames=6", "temporal.permutations=100"
)


def ratio_of(probs: list[float], label: int) -> float:
    logits = torch.log(torch.tensor([probs]))
    return softmax_ratio(logits, torch.tensor([label])).item()


def test_softmax_ratio_correct_case_uses_second_highest():
    assert ratio_of([0.6, 0.3, 0.1], 0) == pytest.approx(1.6 / 1.3, abs=1e-6)


def test_softmax_ratio_incorrect_case_uses_highest():
    assert ratio_of([0.6, 0.3, 0.1], 2) == pytest.approx(1.1 / 1.6, abs=1e-6)
    assert ratio_of([0.6, 0.3, 0.1], 1) == pytest.approx(1.3 / 1.6, abs=1e-6)


def test_softmax_ratio_bounds_at_one_hot_extremes():
    logits = torch.tensor([[50.0, 0.0, 0.0, 0.0]] * 2)
    r = softmax_ratio(logits, torch.tensor([0, 3]))
    assert r[0].item() == pytest.approx(2.0, abs=1e-6)  # certain and right
    assert r[1].item() == pytest.approx(0.5, abs=1e-6)  # certain and wrong


def test_softmax_ratio_tie_is_one():
    assert ratio_of([0.4, 0.4, 0.2], 1) == pytest.approx(1.0, abs=1e-7)


def test_softmax_ratio_batch_matches_loop():
    torch.manual_seed(0)
    logits, labels = torch.randn(20, 7), torch.randint(0, 7, (20,))
    r = softmax_ratio(logits, labels)
    for i in range(20):
        p = torch.softmax(logits[i], 0).tolist()
        others = max(q for c, q in enumerate(p) if c != labels[i])
        assert r[i].item() == pytest.approx((p[labels[i]] + 1) / (others + 1), abs=1e-6)
    assert torch.equal(r > 1, logits.argmax(1) == labels)


def test_error_and_per_permutation_error_by_hand():
    predicted = torch.tensor([[0, 0, 2, 0], [2, 0, 0, 1], [2, 2, 2, 2]])
    state = NetworkState.from_matrices(torch.ones(3, 4), predicted)
    assert state.correct.tolist() == [[True, True, False, True], [False, False, False, True],
                                      [True, True, True, True]]
    assert state.error == pytest.approx(1 - 8 / 12)  # Eq. 6: 8 of 12 pairs correct
    assert torch.allclose(state.per_permutation_error, torch.tensor([0.25, 0.75, 0.0]))
    # Permutations 0 and 2 are twins, 1 has none: row 0's 2 and row 2's 0s would count.
    assert state.accuracy_up_to(torch.tensor([2, -1, 0])) == pytest.approx(9 / 12)
    assert state.accuracy_up_to(torch.tensor([-1, -1, -1])) == pytest.approx(8 / 12)


def tiny_model(task: str, *extra: str):
    torch.manual_seed(3)
    cfg = load_config(overrides=TINY + list(extra))
    model = build_model(cfg)
    # Non-trivial BN statistics, so eval mode really differs from train mode.
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    n = cfg.spatial.grid ** 2 if task == "spatial" else cfg.temporal.frames
    count = getattr(cfg, task).permutations
    perms = torch.from_numpy(select_permutations(count, n, seed=1)).long()
    return model, perms, n


@pytest.mark.parametrize(("task", "extra"), [
    ("spatial", ["spatial.grid=2", "spatial.permutations=24"]),
    ("spatial", ["spatial.grid=3", "spatial.permutations=30"]),
    ("temporal", ["temporal.frames=4", "temporal.permutations=20",
                  "temporal.exclude_reversals=false"]),
])
def test_compute_state_equals_naive_state(task, extra):
    model, perms, n = tiny_model(task, *extra)
    model.train()
    val = torch.randn(7, n, 3, 32, 32)
    naive = naive_state(model, task, val, perms, chunk=50)
    assert model.training  # flag restored
    assert naive.ratios.shape == naive.correct.shape == (len(perms), 7)
    for sample_chunk, permutation_chunk in ((1, 1), (3, 7), (32, 64), (7, len(perms))):
        fast = compute_state(model, task, val, perms, sample_chunk=sample_chunk,
                             permutation_chunk=permutation_chunk)
        assert model.training
        assert (fast.ratios - naive.ratios).abs().max().item() <= 1e-5
        assert torch.equal(fast.correct, naive.correct)
        assert fast.error == pytest.approx(naive.error, abs=1e-12)
        assert torch.equal(fast.per_permutation_error, naive.per_permutation_error)
        assert (fast.cross_entropy - naive.cross_entropy).abs().max().item() <= 1e-5
    # A head and features computed once (a user's own network's, say) give the same state.
    with torch.no_grad():
        model.eval()
        feats = model.part_features(task, val)
        model.train()
    head = model.heads[task]
    from_features = state_from_features(head, feats, perms, permutation_chunk=5)
    assert head.training  # flag restored
    assert (from_features.ratios - naive.ratios).abs().max().item() <= 1e-5
    assert torch.equal(from_features.correct, naive.correct)
    empty = compute_state(model, task, val[:0], perms)  # a process without a share of X_val
    assert empty.ratios.shape == (len(perms), 0)
    model.eval()
    compute_state(model, task, val, perms)
    assert not model.training


def test_naive_state_is_the_shuffled_forward_by_hand():
    model, perms, n = tiny_model("spatial", "spatial.grid=2", "spatial.permutations=6")
    model.eval()
    val = torch.randn(3, n, 3, 32, 32)
    state = naive_state(model, "spatial", val, perms, chunk=4)
    with torch.no_grad():
        for i in range(len(perms)):
            for x in range(3):
                parts = val[x, perms[i]][None]  # Eq. 1: position k holds part psi_k
                p = torch.softmax(model.logits("spatial", parts)[0], 0)
                others = torch.cat([p[:i], p[i + 1 :]]).max()
                assert state.ratios[i, x].item() == pytest.approx(
                    (p[i].item() + 1) / (others.item() + 1), abs=1e-6)
                assert state.correct[i, x].item() == (p.argmax().item() == i)
                assert state.cross_entropy[i, x].item() == pytest.approx(
                    -torch.log(p[i]).item(), abs=1e-5)
    assert state.error == pytest.approx(1 - state.correct.float().mean().item())
