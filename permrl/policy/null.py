"""The null of an adaptive run: how far would its learner drift with rewards that say nothing?

A learner fed noise still moves (a random walk around uniform), so "the policy moved 0.05 from
uniform" means nothing until it is compared with that walk. `shuffled_reward_null` replays a
run's episodes with a fresh learner of the same kind and settings: the same states s_hat_t
(Eq. 10, from the logged group sizes and medians), the same number of actions per episode,
drawn from the null learner's own pi, and the run's own rewards shuffled across episodes (so
their scale and spread are the run's, their link to the groups is gone). Repeated over many
shuffles it gives the distribution, under no information, of the two numbers
`policy_movement` reports: max_j |pi_j - q_j| at the last episode and the mean
|t| of the policy-gradient estimate per group (`reward_signal`). A run is said to have moved
beyond its null when its value exceeds the null's 95th percentile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from permrl.policy.samplers import GroupLearner


def episode_inputs(record: dict[str, Any], num_permutations: int
                   ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """s_hat (Eq. 10: [|c_j| / |Psi|, median_j] interleaved), the mask of non-empty groups and
    the group sizes of one logged episode."""
    sizes = np.asarray(record["group_sizes"], dtype=np.float64)
    medians = np.asarray(record["group_medians"], dtype=np.float64)
    s_hat = torch.as_tensor(np.stack([sizes / num_permutations, medians], 1).ravel(),
                            dtype=torch.float32)
    return s_hat, torch.as_tensor(sizes > 0), sizes


def replay(records: list[dict[str, Any]], learner: GroupLearner, rewards: np.ndarray,
           generator: torch.Generator, actions_per_draw: int = 1) -> list[dict[str, Any]]:
    """The run's episodes replayed with `learner` and `rewards` (one per rewarded episode, in
    order): per episode, pi before its update, its draws (from that pi) and its reward, as the
    sampler logs them. `actions_per_draw` > 1: one group per mini-batch or per episode
    (`cycle.episode_actions`)."""
    out, k = [], 0
    for record in records:
        s_hat, mask, sizes = episode_inputs(record, int(sum(record["group_sizes"])))
        probs = learner.probabilities(s_hat, mask)
        count = int(sum(record["chosen_groups"]))
        drawn = torch.multinomial(probs, max(1, count // actions_per_draw), replacement=True,
                                  generator=generator).repeat_interleave(actions_per_draw)
        row = {"group_sizes": sizes.tolist(), "policy_probs": probs.tolist(),
               "chosen_groups": np.bincount(drawn.numpy(), minlength=len(sizes)).tolist()}
        if "reward" in record:
            row["reward"] = float(rewards[k])
            learner.update(s_hat, mask, drawn, float(rewards[k]))
            k += 1
        out.append(row)
    return out


def reward_signal(records: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """How much the episodes' rewards say about the groups, from a run's episode records.

    The only learning signal of Eq. 9 is how the draws of an episode deviate from pi: per
    group j, g_tj = (r_t - mean r) * (f_tj - pi_tj), f_tj the share of the episode's draws in
    group j (the policy-gradient of the logit of j, with the mean reward as baseline). Over T
    episodes, t_j = mean_t g_tj / (std_t g_tj / sqrt T): |t_j| ~ 0.8 on average when the rewards
    carry no information about the groups, larger when they do. Also the rewards' spread and
    the draws' own fluctuation (f - pi).
    """
    rows = [r for r in records if r.get("task") == task and r.get("reward") is not None
            and r.get("chosen_groups") and r.get("policy_probs")]
    if len(rows) < 3:
        return None
    rewards = np.array([r["reward"] for r in rows])
    width = min(len(r["policy_probs"]) for r in rows)
    counts = np.array([r["chosen_groups"][:width] for r in rows], dtype=np.float64)
    share = counts / counts.sum(axis=1, keepdims=True)
    deviation = share - np.array([r["policy_probs"][:width] for r in rows])
    g = (rewards - rewards.mean())[:, None] * deviation
    spread = g.std(axis=0, ddof=1)
    t = np.divide(g.mean(axis=0) * np.sqrt(len(rows)), spread, out=np.zeros(width),
                  where=spread > 0)
    return {"episodes": len(rows), "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(ddof=1)),
            "draw_fluctuation": float(np.abs(deviation).mean()),
            "t_per_group": [round(float(v), 2) for v in t],
            "mean_abs_t": float(np.abs(t).mean()), "max_abs_t": float(np.abs(t).max())}


def policy_movement(records: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """How far a run's sampler moved from uniform draws over Psi, from its episode records:
    at the last episode max_j |pi_j - q_j| and KL(q || pi), q_j = |c_j| / |Psi|; the share of
    the hardest quartile of permutations in the draws of the last third of the episodes (25% =
    uniform); and `reward_signal`'s mean |t| (~0.8 when the rewards say nothing about the
    groups)."""
    episodes = [r for r in records if r.get("task") == task and r.get("policy_probs")
                and r.get("group_sizes") and r.get("chosen_quartiles")]
    if not episodes:
        return None
    last, third = episodes[-1], episodes[-max(1, len(episodes) // 3):]
    sizes = last["group_sizes"][:len(last["policy_probs"])]
    q = [size / sum(sizes) for size in sizes]
    pi = last["policy_probs"]
    hardest = sum(r["chosen_quartiles"][3] for r in third)
    drawn = sum(sum(r["chosen_quartiles"]) for r in third)
    signal = reward_signal(records, task)
    return {"episodes": len(episodes), "updates": sum("reward" in r for r in episodes),
            "max_deviation": max(abs(a - b) for a, b in zip(pi, q, strict=True)),
            "kl": sum(a * math.log(a / b) for a, b in zip(q, pi, strict=True) if a > 0 and b > 0),
            "hardest_share": hardest / drawn if drawn else float("nan"),
            "mean_abs_t": signal["mean_abs_t"] if signal else float("nan")}


def max_deviation(record: dict[str, Any]) -> float:
    """max_j |pi_j - q_j|, q_j = |c_j| / |Psi|: how far pi is from uniform draws over Psi."""
    sizes = np.asarray(record["group_sizes"], dtype=np.float64)
    pi = np.asarray(record["policy_probs"], dtype=np.float64)[: len(sizes)]
    return float(np.abs(pi - sizes / sizes.sum()).max())


def shuffled_reward_null(records: list[dict[str, Any]], make_learner: Callable[[], GroupLearner],
                         shuffles: int = 200, seed: int = 0,
                         actions_per_draw: int = 1) -> dict[str, Any] | None:
    """The null distribution of max |pi - q| and mean |t| for a run's episode `records` (one
    task's, in order), and where the run's own values fall in it (percentiles, 0-100)."""
    episodes = [r for r in records if r.get("policy_probs") and r.get("group_sizes")
                and r.get("group_medians") and r.get("chosen_groups")]
    rewards = np.array([r["reward"] for r in episodes if "reward" in r], dtype=np.float64)
    if len(rewards) < 3:
        return None
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    moved, signal = [], []
    for _ in range(shuffles):
        with torch.random.fork_rng(devices=[]):
            null = replay(episodes, make_learner(), rng.permutation(rewards), generator,
                          actions_per_draw)
        moved.append(max_deviation(null[-1]))
        t = reward_signal([r | {"task": "null"} for r in null], "null")
        signal.append(t["mean_abs_t"] if t else np.nan)
    real_moved = max_deviation(episodes[-1])
    real_t = reward_signal([r | {"task": "run"} for r in episodes], "run")
    real_signal = real_t["mean_abs_t"] if real_t else np.nan
    moved_arr, signal_arr = np.array(moved), np.array(signal)
    return {"shuffles": shuffles, "max_deviation": real_moved,
            "max_deviation_null_median": float(np.median(moved_arr)),
            "max_deviation_null_95": float(np.percentile(moved_arr, 95)),
            "max_deviation_percentile": float(100 * (moved_arr < real_moved).mean()),
            "mean_abs_t": float(real_signal),
            "mean_abs_t_null_95": float(np.nanpercentile(signal_arr, 95)),
            "mean_abs_t_percentile": float(100 * (signal_arr < real_signal).mean()),
            "beyond_null": bool(real_moved > np.percentile(moved_arr, 95))}
