"""Tests for permrl.permutations against independent, naive references."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from permrl.data.samples import shuffle_tiles
from permrl.permutations import (
    PermutationFileError,
    all_permutations,
    hamming_stats,
    invert_permutation,
    load_permutations,
    permutation_checksum,
    reversal_twins,
    save_permutations,
    select_permutations,
    validate_permutations,
)

# ------------------------------------------------------------------ Eq. 1 convention
# Applying Psi is permrl.data.samples.shuffle_tiles (for tiles and frames alike); these tests pin
# it to the convention this module states, against a loop written here.


def eq1_reference(parts: torch.Tensor, perms: torch.Tensor, perm_index: torch.Tensor):
    """Eq. 1 by hand: output position k of sample b holds part perms[perm_index[b]][k]."""
    out = torch.empty_like(parts)
    for b, p in enumerate(perm_index.tolist()):
        for k, src in enumerate(perms[p].tolist()):
            out[b, k] = parts[b, src]
    return out


def test_eq1_hand_example():
    parts = torch.tensor([[10, 20, 30]])  # stands for a, b, c
    out = shuffle_tiles(parts, torch.tensor([[2, 0, 1]]), torch.tensor([0]))
    assert out.tolist() == [[30, 10, 20]]  # c, a, b


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2, 2), (4, 3, 3, 5, 5)])
def test_eq1_batched_matches_the_loop(shape):
    perms = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    perm_index = torch.tensor([0, 2, 1, 0])
    parts = torch.arange(math.prod(shape)).reshape(shape)  # (B, n, ...): tiles, frames, values
    out = shuffle_tiles(parts, perms, perm_index)
    assert torch.equal(out, eq1_reference(parts, perms, perm_index))
    assert torch.equal(out[0], parts[0, [2, 0, 1]])


def test_invert_round_trip():
    rng = np.random.default_rng(3)
    perms = np.stack([rng.permutation(7) for _ in range(5)])
    inv = invert_permutation(perms)
    for p, q in zip(perms, inv, strict=True):
        assert [p[q[k]] for k in range(7)] == list(range(7))
        assert [q[p[k]] for k in range(7)] == list(range(7))
    parts = torch.randn(5, 7, 3)
    tp, rows = torch.from_numpy(perms), torch.arange(5)
    back = shuffle_tiles(shuffle_tiles(parts, tp, rows), invert_permutation(tp), rows)
    assert torch.equal(back, parts)
    single = invert_permutation(np.array([2, 0, 1]))
    assert single.tolist() == [1, 2, 0]


# ------------------------------------------------------------------ selection


def test_all_permutations_lexicographic():
    for n in range(1, 7):
        ref = np.array(list(itertools.permutations(range(n))))
        np.testing.assert_array_equal(all_permutations(n), ref)


def _naive_scores(chosen: np.ndarray, cands: np.ndarray, criterion: str) -> np.ndarray:
    dist = (chosen[:, None, :] != cands[None, :, :]).sum(-1)  # recomputed from scratch
    return dist.min(0) if criterion == "maxmin" else dist.mean(0)


@pytest.mark.parametrize("criterion", ["maxmin", "maxmean"])
@pytest.mark.parametrize("size,count", [(4, 24), (5, 120)])
def test_greedy_steps_are_optimal(criterion, size, count):
    perms = select_permutations(count, size, seed=1, criterion=criterion)
    cands = np.array(list(itertools.permutations(range(size))))
    cand_index = {tuple(c): i for i, c in enumerate(cands.tolist())}
    chosen_idx = [cand_index[tuple(p)] for p in perms.tolist()]
    assert len(set(chosen_idx)) == count
    for step in range(1, count):
        scores = _naive_scores(perms[:step], cands, criterion).astype(float)
        scores[chosen_idx[:step]] = -np.inf
        best = scores.max()
        assert scores[chosen_idx[step]] == best, f"step {step} not optimal"
        # deterministic tie break: lowest candidate index among the maximizers
        assert chosen_idx[step] == int(np.flatnonzero(scores == best)[0])


@pytest.mark.parametrize("criterion", ["maxmin", "maxmean"])
def test_greedy_steps_size7(criterion):
    count = 100
    perms = select_permutations(count, 7, seed=5, criterion=criterion)
    cands = all_permutations(7).astype(np.int64)
    assert len(np.unique(perms, axis=0)) == count
    dist = (cands[None, :, :] != perms[:, None, :]).sum(-1)  # (count, 5040)
    chosen = [int(np.flatnonzero((cands == p).all(1))[0]) for p in perms]
    for step in range(1, count):
        prev = dist[:step]
        scores = (prev.min(0) if criterion == "maxmin" else prev.sum(0)).astype(float)
        scores[chosen[:step]] = -np.inf
        assert scores[chosen[step]] == scores.max()


@pytest.mark.parametrize("criterion", ["maxmin", "maxmean"])
@pytest.mark.parametrize("size,count", [(4, 12), (6, 100)])
def test_greedy_without_reversal_twins(criterion, size, count):
    """exclude_reversals: the greedy choice over the candidates whose twin n-1-psi is not
    chosen yet, recomputed from scratch at every step."""
    perms = select_permutations(count, size, seed=1, criterion=criterion, exclude_reversals=True)
    assert (reversal_twins(perms) == -1).all()
    cands = np.array(list(itertools.permutations(range(size))))
    index = {tuple(c): i for i, c in enumerate(cands.tolist())}
    chosen = [index[tuple(p)] for p in perms.tolist()]
    twins = [index[tuple(size - 1 - p)] for p in perms]
    for step in range(1, count):
        scores = _naive_scores(perms[:step], cands, criterion).astype(float)
        scores[chosen[:step] + twins[:step]] = -np.inf
        best = scores.max()
        assert chosen[step] == int(np.flatnonzero(scores == best)[0]), f"step {step}"


def test_reversal_twins_by_hand():
    perms = np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1], [1, 2, 0]])
    # twin of [0,1,2] is [2,1,0]; of [1,0,2] is [1,2,0]; [0,2,1] -> [2,0,1] is absent.
    assert reversal_twins(perms).tolist() == [1, 0, 4, -1, 2]
    np.testing.assert_array_equal(reversal_twins(all_permutations(5)), np.arange(119, -1, -1))
    greedy = select_permutations(100, 6, seed=0)  # maxmin favours twins: distance is maximal
    assert (reversal_twins(greedy) >= 0).sum() > 0
    pooled = select_permutations(40, 11, seed=0, pool_size=3000, exclude_reversals=True)
    assert (reversal_twins(pooled) == -1).all()
    with pytest.raises(ValueError, match="without reversal twins: only 4!/2 = 12"):
        select_permutations(13, 4, exclude_reversals=True)


def test_deterministic_and_seed_dependent():
    a = select_permutations(30, 6, seed=7)
    b = select_permutations(30, 6, seed=7)
    c = select_permutations(30, 6, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and a.shape == (30, 6)
    validate_permutations(a)


def test_include_identity():
    for criterion in ("maxmin", "maxmean"):
        perms = select_permutations(10, 6, seed=3, criterion=criterion, include_identity=True)
        assert perms[0].tolist() == list(range(6))
    assert select_permutations(5, 12, include_identity=True, pool_size=500)[0].tolist() == list(
        range(12)
    )


@pytest.mark.parametrize("criterion", ["maxmin", "maxmean"])
def test_count_equals_factorial_returns_all(criterion):
    perms = select_permutations(120, 5, seed=2, criterion=criterion)
    ref = np.array(list(itertools.permutations(range(5))))
    np.testing.assert_array_equal(np.unique(perms, axis=0), ref)


def test_argument_errors():
    with pytest.raises(ValueError, match="only 4! = 24"):
        select_permutations(25, 4)
    with pytest.raises(ValueError, match="size"):
        select_permutations(1, 1)
    with pytest.raises(ValueError, match="criterion"):
        select_permutations(3, 4, criterion="maxmax")
    with pytest.raises(ValueError, match="count"):
        select_permutations(0, 4)
    with pytest.raises(ValueError, match="pool_size"):
        select_permutations(20, 11, pool_size=10)


def test_pool_path_size11():
    perms = select_permutations(20, 11, seed=0, pool_size=2000)
    assert perms.shape == (20, 11) and perms.dtype == np.int64
    validate_permutations(perms)
    np.testing.assert_array_equal(perms, select_permutations(20, 11, seed=0, pool_size=2000))
    assert not np.array_equal(perms, select_permutations(20, 11, seed=1, pool_size=2000))
    assert hamming_stats(perms)["min"] >= 9  # greedy max-min keeps them far apart
    validate_permutations(select_permutations(20, 13, criterion="maxmean", pool_size=300))


def test_hamming_stats_vs_double_loop():
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(6) for _ in range(25)])
    dists = [
        int((perms[i] != perms[j]).sum())
        for i in range(len(perms))
        for j in range(i + 1, len(perms))
    ]
    stats = hamming_stats(perms)
    assert stats["min"] == min(dists)
    assert stats["max"] == max(dists)
    assert stats["mean"] == pytest.approx(sum(dists) / len(dists))


def test_maxmin_beats_maxmean_on_min_distance():
    a = hamming_stats(select_permutations(100, 7, criterion="maxmin"))
    b = hamming_stats(select_permutations(100, 7, criterion="maxmean"))
    assert a["min"] >= b["min"]
    assert b["mean"] >= a["mean"] - 0.5


# ------------------------------------------------------------------ storage


def test_checksum_depends_on_values_and_shape():
    a = np.array([[0, 1, 2, 3], [1, 0, 3, 2]])
    assert permutation_checksum(a) == permutation_checksum(a.astype(np.int32))
    assert permutation_checksum(a) != permutation_checksum(a[::-1])
    assert permutation_checksum(a) != permutation_checksum(a.reshape(4, 2))
    assert len(permutation_checksum(a)) == 64


def test_save_load_round_trip(tmp_path):
    perms = select_permutations(40, 6, seed=4, criterion="maxmean")
    path = tmp_path / "psi.npy"
    checksum = save_permutations(path, perms, seed=4, criterion="maxmean")
    meta = json.loads((tmp_path / "psi.npy.json").read_text())
    assert meta == {
        "checksum": checksum,
        "seed": 4,
        "criterion": "maxmean",
        "count": 40,
        "size": 6,
    }
    assert checksum == permutation_checksum(perms)
    loaded = load_permutations(path)
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, perms)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psi.npy", "psi.npy.json"]


def _write(path, arr):
    with open(path, "wb") as fh:  # bare np.save: no sidecar
        np.save(fh, arr)


def test_load_without_sidecar(tmp_path):
    path = tmp_path / "p.npy"
    _write(path, np.array([[0, 1, 2], [2, 1, 0]]))
    assert load_permutations(path).tolist() == [[0, 1, 2], [2, 1, 0]]


@pytest.mark.parametrize(
    "arr,pattern",
    [
        (np.array([0, 1, 2]), "2-D"),
        (np.array([[0.0, 1.0], [1.0, 0.0]]), "integer"),
        (np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1], [1, 2, 0]]), "rows 1 and 3"),
        (np.array([[0, 1, 2], [0, 1, 3]]), "row 1 .*outside 0..2"),
        (np.array([[0, 1, 2], [2, 0, 1], [-1, 0, 1]]), "row 2 .*outside"),
        (np.array([[0, 1, 2], [1, 0, 2], [2, 2, 0]]), "row 2 repeats"),
    ],
)
def test_load_errors(tmp_path, arr, pattern):
    path = tmp_path / "bad.npy"
    _write(path, arr)
    with pytest.raises(PermutationFileError, match=pattern) as info:
        load_permutations(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=pattern):  # same checks in memory
        validate_permutations(arr)


def test_load_checksum_mismatch(tmp_path):
    perms = select_permutations(10, 5, seed=0)
    path = tmp_path / "psi.npy"
    save_permutations(path, perms, seed=0, criterion="maxmin")
    edited = perms.copy()
    edited[[0, 1]] = edited[[1, 0]]  # still a valid set, different bytes
    _write(path, edited)
    with pytest.raises(PermutationFileError, match="checksum mismatch"):
        load_permutations(path)


def test_load_missing_and_corrupt(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(PermutationFileError, match="not found") as info:
        load_permutations(missing)
    assert str(missing) in str(info.value)
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not a numpy file")
    with pytest.raises(PermutationFileError, match="cannot load") as info:
        load_permutations(corrupt)
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)


def test_factorial_sized_sets_are_small_enough():
    assert math.factorial(9) == len(all_permutations(9))
