"""The action space of Sect. 3.2: permutations grouped by k-means on the rows of the state s.

Decisions (design §5):
- Groups are ordered by the median of their softmax ratios, ascending: group 0 is the hardest.
  Ties go to the lower mean ratio, then to the lower smallest member index. So action j means
  "the j-th hardest group" whatever labels k-means gave in this re-clustering.
- When s has fewer distinct rows than |C|, k-means finds fewer clusters. The |C| slots are kept:
  the missing (last) slots have size 0 and median 0, and the policy masks them out.
- Policy input (Eq. 10) is interleaved in the equation's order:
  [|c_1| / |Psi|, median_1, |c_2| / |Psi|, median_2, ...].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning


@dataclass
class PermutationGroups:
    """One clustering of Psi: group index of each permutation, hardest group first."""

    assignment: np.ndarray  # (|Psi|,) int: group j of each permutation
    sizes: np.ndarray  # (|C|,) int: |c_j| (0 for an empty slot)
    medians: np.ndarray  # (|C|,) float: median of s over all (psi, x) pairs of c_j (Eq. 10)


def group_permutations(
    ratios: np.ndarray, num_groups: int, seed: int, n_init: int = 10
) -> PermutationGroups:
    """K-means (seeded) on the rows of s (|Psi|, |X_val|); groups sorted hardest first.

    >>> ratios = np.array([[0.6, 0.7], [0.65, 0.6], [1.8, 1.9], [1.7, 2.0]])  # 4 perms x 2
    >>> groups = group_permutations(ratios, num_groups=2, seed=0)
    >>> groups.assignment.tolist(), groups.sizes.tolist()  # the hard pair is group 0
    ([0, 0, 1, 1], [2, 2])
    >>> policy_input(groups, 4)  # s_hat of Eq. 10: [|c_j| / |Psi|, median_j] per group
    tensor([0.5000, 0.6250, 0.5000, 1.8500])
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    num_perms = ratios.shape[0]
    if not 1 <= num_groups <= num_perms:
        raise ValueError(f"num_groups must be in 1..{num_perms} (|Psi|), got {num_groups}")
    with warnings.catch_warnings():  # fewer distinct rows than clusters: handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = KMeans(num_groups, n_init=n_init, random_state=seed).fit_predict(ratios)
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    clusters.sort(key=lambda idx: (np.median(ratios[idx]), ratios[idx].mean(), idx[0]))
    assignment = np.empty(num_perms, dtype=np.int64)
    sizes = np.zeros(num_groups, dtype=np.int64)
    medians = np.zeros(num_groups, dtype=np.float64)
    for j, idx in enumerate(clusters):
        assignment[idx] = j
        sizes[j] = len(idx)
        medians[j] = np.median(ratios[idx])  # over all (psi, x) pairs of the group
    return PermutationGroups(assignment, sizes, medians)


def policy_input(groups: PermutationGroups, num_permutations: int) -> torch.Tensor:
    """Eq. 10: s_hat = [|c_j| / |Psi|, median_j] for j = 1..|C|, interleaved: (2|C|,)."""
    sizes = groups.sizes / num_permutations
    return torch.as_tensor(np.stack([sizes, groups.medians], axis=1).ravel(), dtype=torch.float32)


def group_errors(groups: PermutationGroups, per_permutation_error: np.ndarray) -> np.ndarray:
    """(|C|,) mean validation error of the permutations of each group (0 for an empty slot)."""
    errors = np.asarray(per_permutation_error, dtype=np.float64)
    sums = np.bincount(groups.assignment, weights=errors, minlength=len(groups.sizes))
    return np.divide(sums, groups.sizes, out=np.zeros_like(sums), where=groups.sizes > 0)


def hardest_first(per_permutation_error: np.ndarray) -> np.ndarray:
    """Indices of Psi by validation error, hardest first (ties: lower index first)."""
    errors = np.asarray(per_permutation_error)
    return np.lexsort((np.arange(len(errors)), -errors))


def difficulty_quartiles(per_permutation_error: np.ndarray,
                         mean_ratio: np.ndarray | None = None) -> np.ndarray:
    """Quartile 0..3 of each permutation by validation error, 0 = easiest (Fig. 4).

    By rank, so each quartile holds |Psi|/4 permutations (up to rounding) and uniform sampling
    gives 25% to each. Ties in error (common: 100 validation samples give 101 error levels) go
    by the mean softmax ratio (Eq. 3), lower = harder, then by permutation index.
    """
    errors = np.asarray(per_permutation_error)
    ratio = np.zeros(len(errors)) if mean_ratio is None else np.asarray(mean_ratio)
    order = np.lexsort((np.arange(len(errors)), -ratio, errors))  # last key is primary
    rank = np.empty(len(errors), dtype=np.int64)
    rank[order] = np.arange(len(errors))
    return (4 * rank) // len(errors)
