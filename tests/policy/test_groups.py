"""K-means groups of permutations (hardest first), Eq. 10 and difficulty quartiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from permrl.policy.groups import (
    PermutationGroups,
    difficulty_quartiles,
    group_errors,
    group_permutations,
    policy_input,
)


def three_clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12 rows of 5 ratios around 0.6 (hard), 1.0 and 1.8 (easy), labels shuffled."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat([0, 1, 2], [5, 4, 3]))
    centre = np.array([0.6, 1.0, 1.8])[truth]
    return centre[:, None] + rng.uniform(-0.02, 0.02, (12, 5)), truth


def test_groups_are_ordered_hardest_first_by_median():
    ratios, truth = three_clusters()
    groups = group_permutations(ratios, 3, seed=0)
    np.testing.assert_array_equal(groups.assignment, truth)
    np.testing.assert_array_equal(groups.sizes, [5, 4, 3])
    for j in range(3):
        np.testing.assert_array_equal(np.flatnonzero(groups.assignment == j),
                                      np.flatnonzero(truth == j))
        assert groups.medians[j] == np.median(ratios[truth == j])  # all (psi, x) pairs


def test_groups_are_stable_under_relabelling_of_rows():
    ratios, _ = three_clusters(1)
    ref = group_permutations(ratios, 3, seed=0)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(ratios))
        moved = group_permutations(ratios[order], 3, seed=seed)
        back = np.empty_like(moved.assignment)
        back[order] = moved.assignment  # group of the original permutation i
        np.testing.assert_array_equal(back, ref.assignment)
        np.testing.assert_array_equal(moved.sizes, ref.sizes)
        np.testing.assert_array_equal(moved.medians, ref.medians)


def test_same_seed_same_groups():
    ratios = np.random.default_rng(4).uniform(0.5, 2.0, (60, 10))
    a, b = group_permutations(ratios, 10, seed=7), group_permutations(ratios, 10, seed=7)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.medians, b.medians)
    assert a.sizes.sum() == 60
    assert np.all(np.diff(a.medians) >= 0)  # hardest first


def test_fewer_distinct_rows_than_groups_leaves_empty_slots():
    ratios = np.array([[1.5, 1.5]] * 4 + [[0.7, 0.9]] * 3)  # two distinct rows
    groups = group_permutations(ratios, 4, seed=0)
    np.testing.assert_array_equal(groups.sizes, [3, 4, 0, 0])
    np.testing.assert_allclose(groups.medians, [0.8, 1.5, 0.0, 0.0])
    np.testing.assert_array_equal(groups.assignment, [1, 1, 1, 1, 0, 0, 0])
    assert not (groups.assignment == 3).any()


def test_more_groups_than_permutations_raises():
    with pytest.raises(ValueError, match="num_groups"):
        group_permutations(np.ones((3, 5)), 4, seed=0)


def test_policy_input_eq10_by_hand():
    groups = PermutationGroups(
        assignment=np.array([0, 1, 1, 0, 1, 2, 1, 1]),
        sizes=np.array([2, 5, 1, 0]), medians=np.array([0.7, 1.1, 1.9, 0.0]),
    )
    s_hat = policy_input(groups, 8)
    assert s_hat.shape == (8,) and s_hat.dtype == torch.float32
    expected = [2 / 8, 0.7, 5 / 8, 1.1, 1 / 8, 1.9, 0.0, 0.0]  # interleaved [size_j, median_j]
    assert torch.allclose(s_hat, torch.tensor(expected))


def test_difficulty_quartiles_by_hand():
    errors = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4])
    np.testing.assert_array_equal(difficulty_quartiles(errors), [3, 0, 2, 1, 2, 0, 3, 1])


def test_difficulty_quartiles_ties_by_mean_ratio_then_index():
    errors = np.array([0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 1.0, 1.0])
    ratio = np.array([1.2, 0.8, 1.0, 0.8, 1.9, 0.6, 0.7, 0.5])  # lower ratio = harder
    # Ranks by hand: 4 (err 0); then err 0.5 by ratio 1.2 (0), 1.0 (2), 0.8 (1, 3: index);
    # then err 1.0 by ratio 0.7 (6), 0.6 (5), 0.5 (7).
    rank = {4: 0, 0: 1, 2: 2, 1: 3, 3: 4, 6: 5, 5: 6, 7: 7}
    expected = [4 * rank[i] // 8 for i in range(8)]
    np.testing.assert_array_equal(difficulty_quartiles(errors, ratio), expected)


def test_group_errors_by_hand():
    groups = PermutationGroups(assignment=np.array([1, 0, 1, 1, 0]), sizes=np.array([2, 3, 0]),
                               medians=np.zeros(3))
    errors = np.array([0.2, 0.5, 0.4, 0.9, 0.1])
    np.testing.assert_allclose(group_errors(groups, errors), [0.3, 0.5, 0.0])


def test_difficulty_quartiles_ties_by_index():
    np.testing.assert_array_equal(difficulty_quartiles(np.zeros(4)), [0, 1, 2, 3])
    np.testing.assert_array_equal(difficulty_quartiles(np.array([0.5, 0.5, 0.0, 0.0, 1.0])),
                                  [1, 2, 0, 0, 3])
