"""The adaptive baselines over groups: Exp3.S (Graves et al. 2017) and the hardness sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from permrl.policy.bandits import Exp3S, Hardness

S_HAT = torch.tensor([0.2, 0.7, 0.5, 1.0, 0.3, 1.4])  # |C| = 3, shares q = 0.2, 0.5, 0.3
Q = np.array([0.2, 0.5, 0.3])


def test_exp3_starts_uniform_over_psi_plus_exploration():
    probs = Exp3S(3, exploration=0.1).probabilities(S_HAT, None)
    np.testing.assert_allclose(probs.numpy(), Q, rtol=1e-6)  # softmax(log q) = q, mixed with q


def test_exp3_update_by_hand():
    eta, eps, alpha = 0.5, 0.1, 0.2
    agent = Exp3S(3, lr=eta, exploration=eps, switch=alpha)
    agent.rewards = [-0.01, 0.0, 0.01, 0.02, 0.03]  # earlier rewards
    actions = torch.tensor([0, 1, 1, 1, 2, 1, 0, 1])  # shares 2/8, 5/8, 1/8
    agent.update(S_HAT, None, actions, 0.025)
    # By hand: quantiles of the 6 rewards, scaled reward, importance weights, Exp3.S mixing.
    rewards = [-0.01, 0.0, 0.01, 0.02, 0.03, 0.025]
    lo, hi = np.percentile(rewards, 20), np.percentile(rewards, 80)
    r_hat = min(1.0, max(-1.0, 2 * (0.025 - lo) / (hi - lo) - 1))
    pi = Q  # w = 0: pi = (1 - eps) q + eps q
    share = np.array([2, 5, 1]) / 8
    w = eta * r_hat * share / pi
    mixed = [math.log((1 - alpha) * math.exp(w[i])
                      + alpha / 2 * sum(math.exp(w[j]) for j in range(3) if j != i))
             for i in range(3)]
    expected = np.array(mixed) - max(mixed)
    np.testing.assert_allclose(agent.weights.numpy(), expected, rtol=1e-6, atol=1e-7)  # s_hat: f32
    soft = Q * np.exp(expected) / (Q * np.exp(expected)).sum()
    np.testing.assert_allclose(agent.probabilities(S_HAT, None).numpy(),
                               (1 - eps) * soft + eps * Q, rtol=1e-5)


def test_exp3_scaled_reward_saturates_outside_the_quantiles():
    agent = Exp3S(3)
    agent.rewards = list(np.linspace(0, 1, 11))
    assert agent.scaled_reward(5.0) == 1.0 and agent.scaled_reward(-5.0) == -1.0
    assert agent.scaled_reward(0.5) == pytest.approx(0.0)  # the middle of [0.2, 0.8]
    agent.rewards = [0.3, 0.3]
    assert agent.scaled_reward(0.3) == 0.0  # no spread yet: no signal


def test_exp3_never_draws_a_masked_group_and_round_trips():
    agent = Exp3S(3, lr=0.5)
    mask = torch.tensor([True, False, True])
    agent.rewards = [0.0, 0.01]
    agent.update(S_HAT, mask, torch.tensor([0, 2, 2]), 0.02)
    probs = agent.probabilities(S_HAT, mask)
    assert probs[1] == 0 and probs.sum().item() == pytest.approx(1.0)
    other = Exp3S(3, lr=0.5)
    other.load_state_dict(agent.state_dict())
    assert torch.equal(other.probabilities(S_HAT, mask), probs)
    with pytest.raises(ValueError, match="num_groups"):
        Exp3S(4).load_state_dict(agent.state_dict())


def test_hardness_by_hand():
    errors = torch.tensor([0.9, 0.5, 0.1])
    probs = Hardness(3, exploration=0.1).probabilities(S_HAT, None, errors)
    summed = Q * errors.numpy()  # |c_j| x mean error, up to 1/|Psi|
    np.testing.assert_allclose(probs.numpy(), 0.9 * summed / summed.sum() + 0.1 * Q, rtol=1e-6)
    # Equal errors: uniform over Psi; no errors anywhere or no state yet: uniform over Psi too.
    for e in (torch.full((3,), 0.4), torch.zeros(3), None):
        np.testing.assert_allclose(Hardness(3).probabilities(S_HAT, None, e).numpy(), Q,
                                   rtol=1e-6)
    assert Hardness(3).update(S_HAT, None, torch.tensor([0]), 1.0) == {}
