"""Statistics of a reward landscape: is the choice of permutations visible above the noise?

Every function takes a table `gains` (arms x replicates) of one metric's improvement over an
episode, where replicate r of every arm started from the same checkpoint with the same data,
crops and dropout masks (common random numbers): only the drawn permutations differ. So the
replicates are blocks, and the arms are compared within them (a randomised complete block
design, two-way ANOVA without interaction).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

# A one-sided test at 5 % with 80 % power needs (z_0.95 + z_0.8)^2 (sigma / delta)^2 samples.
DETECT_FACTOR = (stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) ** 2  # ~6.18


def blocked_anova(gains: np.ndarray) -> dict[str, float]:
    """F test of "all arms have the same mean gain", replicates as blocks.

    SS_arms = R sum_a (m_a - m)^2, SS_blocks = A sum_r (m_r - m)^2, SS_error = SS_total -
    SS_arms - SS_blocks; F = (SS_arms / (A - 1)) / (SS_error / ((A - 1)(R - 1))).
    eta2 = SS_arms / SS_total; partial_eta2 = SS_arms / (SS_arms + SS_error).
    """
    y = np.asarray(gains, dtype=np.float64)
    arms, reps = y.shape
    if arms < 2 or reps < 2:
        raise ValueError(f"a blocked F test needs >= 2 arms and >= 2 replicates, got {y.shape}")
    grand = y.mean()
    ss_total = ((y - grand) ** 2).sum()
    ss_arms = reps * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_blocks = arms * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_error = max(ss_total - ss_arms - ss_blocks, 0.0)
    df_arms, df_error = arms - 1, (arms - 1) * (reps - 1)
    f = (ss_arms / df_arms) / (ss_error / df_error) if ss_error > 0 else math.inf
    return {"F": f, "df_arms": df_arms, "df_error": df_error,
            "p": float(stats.f.sf(f, df_arms, df_error)) if math.isfinite(f) else 0.0,
            "eta2": ss_arms / ss_total if ss_total > 0 else 0.0,
            "partial_eta2": ss_arms / (ss_arms + ss_error) if ss_arms + ss_error > 0 else 0.0}


def split_half_agreement(gains: np.ndarray) -> float:
    """Spearman correlation of the arms' mean gains over the even vs the odd replicates: does
    the ranking of the arms repeat? (nan with fewer than 2 replicates or 3 arms)."""
    y = np.asarray(gains, dtype=np.float64)
    if y.shape[1] < 2 or y.shape[0] < 3:
        return math.nan
    even, odd = y[:, 0::2].mean(axis=1), y[:, 1::2].mean(axis=1)
    if even.std() == 0 or odd.std() == 0:  # a constant ranking: no agreement to measure
        return math.nan
    return float(stats.spearmanr(even, odd)[0])


def residuals(y: np.ndarray, covariates: list[np.ndarray]) -> np.ndarray:
    """y minus its least-squares fit on [1, covariates...]."""
    x = np.column_stack([np.ones(len(y)), *covariates])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return y - x @ coef


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def size_and_difficulty(mean_gain: np.ndarray, size: np.ndarray,
                        difficulty: np.ndarray) -> dict[str, float]:
    """Single-group arms: how much of their mean gain is group size, how much difficulty.

    r_difficulty: correlation with the group's validation error (the paper's Fig. 4 claim that
    harder permutations help); r_log_size: with log |c_j|; the partial correlations hold the
    other one fixed (correlation of the residuals after a least-squares fit on it).
    """
    y = np.asarray(mean_gain, np.float64)
    log_size, diff = np.log(np.asarray(size, np.float64)), np.asarray(difficulty, np.float64)
    out = {"r_difficulty": correlation(y, diff), "r_log_size": correlation(y, log_size)}
    if len(y) >= 4:
        out["partial_r_difficulty"] = correlation(residuals(y, [log_size]),
                                                  residuals(diff, [log_size]))
        out["partial_r_log_size"] = correlation(residuals(y, [diff]), residuals(log_size, [diff]))
    return out


def episodes_to_detect(delta: float, sigma: float) -> float:
    """Episodes whose rewards (noise sigma each) a one-sided 5 % test with 80 % power needs to
    see a mean effect delta > 0: 6.18 (sigma / delta)^2; inf when delta <= 0 (or nan)."""
    if not delta > 0 or not math.isfinite(sigma):
        return math.inf
    return DETECT_FACTOR * (sigma / delta) ** 2


def arm_share_spread(arm: np.ndarray, q: np.ndarray, group_of: np.ndarray, batch_size: int,
                     batches: int) -> dict[str, float]:
    """How much of an arm a policy at pi = q tries by chance in one episode: the standard
    deviation of alpha = (f - q).d / (d.d), f the episode's shares of Psi and d = arm - q.

    A policy learns an arm from the correlation of the reward with alpha, so its signal per
    episode is delta x sd(alpha), not delta. "sample": every one of the K x B samples draws its
    group (and a permutation in it) from pi; "batch": one group per mini-batch, so f is the mean
    of K groups' uniform shares (`cycle.episode_actions`).
    """
    arm, q = np.asarray(arm, np.float64), np.asarray(q, np.float64)
    d = arm - q
    dd = float(d @ d)
    if dd == 0:
        return {"sample": math.nan, "batch": math.nan}
    var_sample = (q @ d**2 - (q @ d) ** 2) / (batch_size * batches)
    sizes = np.bincount(group_of)
    present = sizes > 0
    mean_d = np.bincount(group_of, weights=d)[present] / sizes[present]  # u_g . d
    q_group = np.bincount(group_of, weights=q)[present]
    var_batch = (q_group @ mean_d**2 - (q @ d) ** 2) / batches
    return {"sample": math.sqrt(max(var_sample, 0.0)) / dd,
            "batch": math.sqrt(max(var_batch, 0.0)) / dd}
