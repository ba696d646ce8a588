"""Benchmark greedy permutation-set selection (docs/design.md §2).

Times select_permutations(1000, 9, seed=0) for both criteria, and compares the first 50 picks
against a naive loop that recomputes distances to the whole chosen set every step (the approach
of the original jigsaw code). Run: python benchmarks/permutations.py
"""

from __future__ import annotations

import time

import numpy as np

from permrl.permutations import all_permutations, hamming_stats, select_permutations

COUNT, SIZE, SEED, NAIVE_PICKS = 1000, 9, 0, 50


def naive_select(count: int, cands: np.ndarray, first_idx: int, criterion: str) -> np.ndarray:
    """Greedy selection recomputing the (chosen x candidates) distance matrix every step."""
    chosen = [first_idx]
    for _ in range(count - 1):
        dist = (cands[np.array(chosen)][:, None, :] != cands[None, :, :]).sum(-1)
        score = dist.min(0) if criterion == "maxmin" else dist.mean(0)
        score = score.astype(np.float64)
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return cands[chosen].astype(np.int64)


print(f"select_permutations({COUNT}, {SIZE}, seed={SEED})")
for criterion in ("maxmin", "maxmean"):
    t0 = time.perf_counter()
    perms = select_permutations(COUNT, SIZE, seed=SEED, criterion=criterion)
    seconds = time.perf_counter() - t0
    stats = hamming_stats(perms)
    print(
        f"  {criterion:8s} {seconds:7.3f} s   min Hamming {stats['min']}   "
        f"mean Hamming {stats['mean']:.4f}"
    )

print(f"first {NAIVE_PICKS} picks, naive (recompute vs whole chosen set) vs ours")
cands = all_permutations(SIZE)
for criterion in ("maxmin", "maxmean"):
    t0 = time.perf_counter()
    ours = select_permutations(NAIVE_PICKS, SIZE, seed=SEED, criterion=criterion)
    t_ours = time.perf_counter() - t0  # includes enumerating the 9! candidates
    first_idx = int(np.flatnonzero((cands == ours[0]).all(1))[0])
    t0 = time.perf_counter()
    naive = naive_select(NAIVE_PICKS, cands, first_idx, criterion)
    t_naive = time.perf_counter() - t0  # candidates given, not counted
    same = np.array_equal(naive, ours)
    print(
        f"  {criterion:8s} ours {t_ours:7.3f} s   naive {t_naive:7.3f} s   "
        f"naive/ours {t_naive / t_ours:6.1f}x   identical picks: {same}"
    )
