"""The shuffled-reward null: its inputs by hand, calibrated on noise rewards at a real run's
scale, and passed by a learner whose rewards do carry the groups' signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from permrl.policy.null import episode_inputs, max_deviation, shuffled_reward_null
from permrl.policy.reinforce import Reinforce

SIZES = [30, 25, 20, 10, 8, 4, 3]  # k-means groups of |Psi| = 100, hardest first
MEDIANS = [0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3]
DRAWS = 320  # per-sample actions of an episode: K = 5 mini-batches of 64 (the cpu preset)


def test_episode_inputs_and_max_deviation_by_hand():
    record = {"group_sizes": [3, 1, 0], "group_medians": [0.9, 1.2, 0.0],
              "policy_probs": [0.5, 0.5, 0.0]}
    s_hat, mask, sizes = episode_inputs(record, 4)
    assert s_hat.tolist() == pytest.approx([0.75, 0.9, 0.25, 1.2, 0.0, 0.0])
    assert mask.tolist() == [True, True, False] and sizes.tolist() == [3, 1, 0]
    assert max_deviation(record) == pytest.approx(0.25)  # |0.5 - 0.75|, |0.5 - 0.25|


def simulated_run(episodes: int, reward_of, seed: int) -> list[dict]:
    """A REINFORCE run as the sampler logs it (cpu defaults): pi, its per-sample draws, a
    reward from `reward_of(share of group 0 - pi_0, rng)`, the update."""
    learner = Reinforce(len(SIZES), seed=seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    s_hat, mask, _ = episode_inputs({"group_sizes": SIZES, "group_medians": MEDIANS}, 100)
    records = []
    for t in range(episodes):
        probs = learner.probabilities(s_hat, mask)
        drawn = torch.multinomial(probs, DRAWS, replacement=True, generator=gen)
        counts = np.bincount(drawn.numpy(), minlength=len(SIZES))
        record = {"group_sizes": SIZES, "group_medians": MEDIANS,
                  "policy_probs": probs.tolist(), "chosen_groups": counts.tolist()}
        if t > 0:  # the first episode has no error trend yet (Eq. 7)
            record["reward"] = reward_of(counts[0] / DRAWS - probs[0].item(), rng)
            learner.update(s_hat, mask, drawn, record["reward"])
        records.append(record)
    return records


def test_a_learner_fed_noise_stays_within_its_null():
    """Rewards N(0, 5e-3), the spread of a real cpu run's Eq. 7 reward, 13 episodes (make
    table5): the run's drift is the null's, so it lands beyond the 95th percentile rarely."""
    percentiles = []
    for seed in range(8):
        run = simulated_run(13, lambda dev, rng: rng.normal(0, 5e-3), seed)
        null = shuffled_reward_null(run, lambda s=seed: Reinforce(len(SIZES), seed=s),
                                    shuffles=40, seed=100 + seed)
        percentiles.append(null["max_deviation_percentile"])
    assert sum(p > 95 for p in percentiles) <= 2  # expected 0.4 of 8
    assert min(percentiles) < 50  # spread over the null, not piled at its top


def test_a_learner_whose_rewards_follow_its_draws_moves_beyond_its_null():
    """Rewards that grow with the share of group 0 in the episode's draws (0.3 x the draw
    deviation, |dev| ~ 0.025 with 320 draws) under a real run's noise (5e-3), 28 updates:
    pi_0 climbs (0.81 here) and the null cannot follow."""
    run = simulated_run(29, lambda dev, rng: 0.3 * dev + rng.normal(0, 5e-3), seed=0)
    assert run[-1]["policy_probs"][0] > 0.30 + 0.2  # q_0 = 0.30
    null = shuffled_reward_null(run, lambda: Reinforce(len(SIZES), seed=0), shuffles=40)
    assert null["beyond_null"] and null["max_deviation_percentile"] == 100.0
    assert null["mean_abs_t_percentile"] > 95
