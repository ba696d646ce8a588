"""Landscape statistics against brute force: least-squares fits, ranks by hand, formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from permrl.landscape.statistics import (
    blocked_anova,
    episodes_to_detect,
    size_and_difficulty,
    split_half_agreement,
)


def residual_ss(y: np.ndarray, x: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(((y - x @ coef) ** 2).sum())


def test_blocked_anova_equals_the_two_way_least_squares_fit():
    """F is the reduction of the residual sum of squares by the arm effects, in a model that
    already has the block (replicate) effects: fitted with dummy columns, by brute force."""
    rng = np.random.default_rng(0)
    arms, reps = 6, 4
    y = rng.normal(size=(arms, reps)) + np.arange(arms)[:, None] * 0.3 + rng.normal(size=reps)
    flat = y.ravel()  # row-major: (arm a, replicate r) at a * reps + r
    arm_of, rep_of = np.repeat(np.arange(arms), reps), np.tile(np.arange(reps), arms)
    ones = np.ones((len(flat), 1))
    blocks = (rep_of[:, None] == np.arange(1, reps)).astype(float)
    treat = (arm_of[:, None] == np.arange(1, arms)).astype(float)
    ss_blocks_only = residual_ss(flat, np.hstack([ones, blocks]))
    ss_full = residual_ss(flat, np.hstack([ones, blocks, treat]))
    df1, df2 = arms - 1, (arms - 1) * (reps - 1)
    f = ((ss_blocks_only - ss_full) / df1) / (ss_full / df2)
    ss_total = ((flat - flat.mean()) ** 2).sum()
    got = blocked_anova(y)
    assert got["F"] == pytest.approx(f, rel=1e-10)
    assert (got["df_arms"], got["df_error"]) == (df1, df2)
    assert got["p"] == pytest.approx(stats.f.sf(f, df1, df2), rel=1e-10)
    assert got["eta2"] == pytest.approx((ss_blocks_only - ss_full) / ss_total, rel=1e-10)
    assert got["partial_eta2"] == pytest.approx(
        (ss_blocks_only - ss_full) / (ss_blocks_only - ss_full + ss_full), rel=1e-10)


def test_blocked_anova_by_hand_on_a_2x2_table():
    # arms (1, 3) and (2, 6): grand mean 3; arm means 2, 4; block means 1.5, 4.5.
    # SS_total = 4 + 0 + 1 + 9 = 14, SS_arms = 2 (1 + 1) = 4, SS_blocks = 2 (2.25 + 2.25) = 9,
    # SS_error = 1: F = (4 / 1) / (1 / 1) = 4, eta2 = 4 / 14.
    got = blocked_anova(np.array([[1.0, 3.0], [2.0, 6.0]]))
    assert got["F"] == pytest.approx(4.0)
    assert got["eta2"] == pytest.approx(4 / 14)
    with pytest.raises(ValueError, match="2 replicates"):
        blocked_anova(np.ones((3, 1)))


def test_split_half_agreement_is_the_rank_correlation_of_even_and_odd_replicates():
    y = np.array([[1.0, 9, 2, 9], [2, 0, 3, 0], [3, 5, 1, 5], [4, 1, 4, 1]])
    # even replicates (0, 2): means 1.5, 2.5, 2, 4 -> ranks 1, 3, 2, 4
    # odd replicates (1, 3): means 9, 0, 5, 1 -> ranks 4, 1, 3, 2
    d2 = (1 - 4) ** 2 + (3 - 1) ** 2 + (2 - 3) ** 2 + (4 - 2) ** 2
    assert split_half_agreement(y) == pytest.approx(1 - 6 * d2 / (4 * (16 - 1)))
    assert math.isnan(split_half_agreement(y[:, :1]))


def test_partial_correlations_equal_the_textbook_formula():
    rng = np.random.default_rng(1)
    size = rng.integers(2, 40, 10).astype(float)
    difficulty = rng.uniform(0.2, 0.9, 10) + 0.01 * np.log(size)
    gain = -0.02 * np.log(size) + 0.01 * difficulty + rng.normal(0, 0.003, 10)
    got = size_and_difficulty(gain, size, difficulty)
    r = np.corrcoef([gain, difficulty, np.log(size)])
    r_gd, r_gs, r_ds = r[0, 1], r[0, 2], r[1, 2]
    assert got["r_difficulty"] == pytest.approx(r_gd)
    assert got["r_log_size"] == pytest.approx(r_gs)
    assert got["partial_r_difficulty"] == pytest.approx(
        (r_gd - r_gs * r_ds) / math.sqrt((1 - r_gs**2) * (1 - r_ds**2)))
    assert got["partial_r_log_size"] == pytest.approx(
        (r_gs - r_gd * r_ds) / math.sqrt((1 - r_gd**2) * (1 - r_ds**2)))


def test_episodes_to_detect():
    z = 1.6448536269514722 + 0.8416212335729143  # one-sided 5 %, power 80 %
    assert episodes_to_detect(0.001, 0.01) == pytest.approx(z**2 * 100)
    assert episodes_to_detect(0.0, 0.01) == math.inf
    assert episodes_to_detect(-1e-3, 0.01) == math.inf


def test_arm_share_spread_equals_the_enumeration_of_every_episode():
    """Psi = 4 permutations in groups {0, 1} and {2, 3}, pi = q uniform, 2 mini-batches of 1
    sample: every possible episode enumerated, alpha = (f - q).d / (d.d) computed for each."""
    import itertools

    from permrl.landscape.statistics import arm_share_spread

    q = np.full(4, 0.25)
    arm = np.array([0.5, 0.3, 0.2, 0.0])
    group_of = np.array([0, 0, 1, 1])
    d = arm - q

    def spread(outcomes):
        alphas = [((f - q) @ d) / (d @ d) for f in outcomes]
        return float(np.std(alphas))  # every outcome equally likely

    samples = [np.bincount(draws, minlength=4) / 2
               for draws in itertools.product(range(4), repeat=2)]
    uniform_in = {0: np.array([0.5, 0.5, 0, 0]), 1: np.array([0, 0, 0.5, 0.5])}
    batches = [(uniform_in[a] + uniform_in[b]) / 2 for a, b in itertools.product((0, 1), repeat=2)]
    got = arm_share_spread(arm, q, group_of, batch_size=1, batches=2)
    assert got["sample"] == pytest.approx(spread(samples))
    assert got["batch"] == pytest.approx(spread(batches))
