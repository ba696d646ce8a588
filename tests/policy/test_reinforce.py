"""Reward (Eq. 7) and REINFORCE (Eq. 9) with baseline, entropy bonus and delayed returns."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from permrl.policy.reinforce import Policy, Reinforce, extrapolated_error, reward


def act(agent, s_hat, mask, count, generator):
    """`count` groups drawn from pi(. | s_hat) with replacement, as GroupSampler draws them."""
    probs = agent.probabilities(s_hat, mask)
    return torch.multinomial(probs, count, replacement=True, generator=generator), probs


def test_extrapolated_error_even_spacing_is_paper_baseline():
    history = [(0, 0.95), (100, 0.9), (200, 0.8)]
    assert extrapolated_error(history, 300) == pytest.approx(2 * 0.8 - 0.9)


def test_extrapolated_error_uneven_spacing_by_hand():
    # Line through (100, 0.9) and (150, 0.8): slope -0.002 per iteration; 30 more -> 0.74.
    assert extrapolated_error([(100, 0.9), (150, 0.8)], 180) == pytest.approx(0.74)


def test_extrapolated_error_needs_two_errors():
    assert extrapolated_error([], 10) is None
    assert extrapolated_error([(0, 0.9)], 10) is None
    assert reward([(0, 0.9)], 10, 0.5) is None


def test_reward_by_hand():
    # E_BL = 2 * 0.8 - 0.9 = 0.7; E_{t+1} = 0.65 -> r = 0.05 (better than the trend).
    assert reward([(0, 0.9), (10, 0.8)], 20, 0.65) == pytest.approx(0.05)
    assert reward([(0, 0.9), (10, 0.8)], 20, 0.75) == pytest.approx(-0.05)


S_HAT = torch.tensor([0.1, 0.6, 0.3, 0.9, 0.2, 1.1, 0.4, 1.7])  # a fixed s_hat, |C| = 4
Q = torch.tensor([0.1, 0.3, 0.2, 0.4])  # its group shares |c_j| / |Psi|


def test_untrained_policy_draws_uniformly_over_psi():
    # prior="psi": pi_j = |c_j| / |Psi| up to the small init; prior="groups": not so.
    psi = Reinforce(4, seed=0).probabilities(S_HAT, None)
    assert torch.allclose(psi, Q, atol=0.01)
    groups = Reinforce(4, prior="groups", seed=0).probabilities(S_HAT, None)
    assert not torch.allclose(groups, Q, atol=0.05)


def test_policy_learns_the_rewarded_group():
    # Reward = share of actions equal to group 2: E[r] = pi(2), maximal at pi = one-hot(2).
    agent = Reinforce(4, lr=0.05, entropy_weight=0.01, optimizer="adam", seed=0)
    gen = torch.Generator().manual_seed(0)
    _, before = act(agent, S_HAT, None, 1, gen)
    for _ in range(200):
        actions, _ = act(agent, S_HAT, None, 16, gen)
        agent.update(S_HAT, None, actions, (actions == 2).float().mean().item())
    _, probs = act(agent, S_HAT, None, 1, gen)
    assert probs.argmax().item() == 2
    assert probs[2].item() > 0.9 > before[2].item()


@pytest.mark.parametrize(("prior", "target"), [("groups", torch.full((4,), 0.25)), ("psi", Q)])
def test_regulariser_alone_moves_towards_its_prior(prior, target):
    # prior="groups": the entropy bonus of Eq. 9 (max at uniform over groups);
    # prior="psi": -KL(q || pi) (max at q, uniform over Psi).
    agent = Reinforce(4, lr=0.05, entropy_weight=1.0, prior=prior, optimizer="adam", seed=0)
    with torch.no_grad():
        agent.policy.net[-1].bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    gen = torch.Generator().manual_seed(0)
    entropies = []
    for _ in range(300):
        actions, _ = act(agent, S_HAT, None, 8, gen)
        stats = agent.update(S_HAT, None, actions, 0.0)  # no reward signal: advantage 0
        assert stats["advantage"] == 0.0
        entropies.append(stats["entropy"])
    _, probs = act(agent, S_HAT, None, 1, gen)
    assert entropies[0] < 1.0  # skewed start
    assert torch.allclose(probs, target, atol=0.01)


def best_group_after(overrides: list[str], seed: int, noise: float) -> tuple[float, float]:
    """The realistic regime of a `cpu` run (3000 steps): the learner of `make_sampler` with
    the preset's own values, K x B = 320 actions per episode, ~28 updates, k-means-like unequal
    groups; reward 0.01 x (share of the best group - its start share) + Gaussian noise, i.e.
    ~1e-2 for a policy committed to it, +-2e-4 from the draw's own fluctuation."""
    from permrl.config import load_config
    from permrl.tasks import make_sampler

    cfg = load_config(overrides=[f"seed={seed}", *overrides])
    agent = make_sampler(cfg, "spatial", 100).learner
    r = cfg.cycle
    sizes = torch.tensor([40, 14, 10, 9, 8, 6, 5, 4, 2, 2], dtype=torch.float32)
    assert len(sizes) == r.groups
    s_hat = torch.stack([sizes / sizes.sum(), torch.linspace(0.7, 1.6, 10)], 1).ravel()
    updates = 3000 // (r.sgd_steps + r.episode_batches)
    count = r.episode_batches * cfg.train.batch_size
    best = 2
    gen, noise_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(99 + seed)
    start = agent.probabilities(s_hat, None)[best].item()
    for _ in range(updates):
        actions = torch.multinomial(agent.probabilities(s_hat, None), count, True, generator=gen)
        share = (actions == best).float().mean().item()
        reward = 0.01 * (share - start) + noise * torch.randn(1, generator=noise_gen).item()
        agent.update(s_hat, None, actions, reward)
    return start, agent.probabilities(s_hat, None)[best].item()


@pytest.mark.parametrize("noise", [1e-4, 2e-4])
@pytest.mark.parametrize("policy", ["reinforce", "exp3"])
def test_learners_learn_at_the_reward_scale_of_a_real_run(policy, noise):
    results = [best_group_after([f"policy={policy}"], seed, noise) for seed in range(7)]
    starts, ends = zip(*results, strict=True)
    assert max(abs(s - 0.1) for s in starts) < 0.01  # untrained: uniform over Psi (10 of 100)
    assert sorted(ends)[3] >= 2 * 0.1  # the median over seeds at least doubles


def test_the_defaults_of_permrl_0_1_do_not_learn_there():
    # Adam lr 1e-3, entropy bonus over groups, raw advantages: the entropy term outweighs a
    # reward of this size and the best group stays at ~0.1.
    old = ["policy=reinforce", "reinforce.optimizer=adam", "reinforce.lr=1e-3",
           "reinforce.advantage=raw", "reinforce.prior=groups"]
    ends = [best_group_after(old, seed, 2e-4)[1] for seed in range(7)]
    assert sorted(ends)[3] < 0.15


def test_masked_groups_are_never_sampled():
    agent = Reinforce(4, seed=1)
    mask = torch.tensor([True, False, True, False])
    actions, probs = act(agent, S_HAT, mask, 2000, torch.Generator().manual_seed(0))
    assert set(actions.tolist()) == {0, 2}
    assert probs[1].item() == 0.0 and probs[3].item() == 0.0
    stats = agent.update(S_HAT, mask, actions[:8], 0.3)  # finite loss and gradients
    assert all(torch.isfinite(p).all() for p in agent.policy.parameters())
    assert math.isfinite(stats["loss"])


def test_no_global_rng_use():
    before = torch.get_rng_state()
    agent = Reinforce(4, seed=0)
    actions, _ = act(agent, S_HAT, None, 10, torch.Generator().manual_seed(0))
    agent.update(S_HAT, None, actions, 0.5)
    assert torch.equal(torch.get_rng_state(), before)


def expected_loss(policy: Policy, s_hat, mask, actions, advantage: float, beta: float) -> float:
    """The REINFORCE loss by hand, from a copy of the policy before the step."""
    with torch.no_grad():
        logits = policy(s_hat)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        logp = torch.log_softmax(logits, 0)
        p = logp.exp()
        ok = p > 0
        entropy = -(p[ok] * logp[ok]).sum()
        return (-advantage * logp[actions].mean() - beta * entropy).item()


def test_gamma_zero_update_stats_by_hand():
    agent = Reinforce(4, lr=0.01, entropy_weight=0.1, baseline_momentum=0.9, advantage="raw",
                      prior="groups", seed=2)
    gen = torch.Generator().manual_seed(1)
    b = None
    for r in (0.2, -0.1, 0.4):
        actions, _ = act(agent, S_HAT, None, 6, gen)
        before = copy.deepcopy(agent.policy)
        stats = agent.update(S_HAT, None, actions, r)
        adv = r - (0.0 if b is None else b)
        assert stats["return"] == pytest.approx(r)
        assert stats["advantage"] == pytest.approx(adv)
        assert stats["loss"] == pytest.approx(expected_loss(before, S_HAT, None, actions, adv,
                                                            0.1), abs=1e-6)
        b = r if b is None else 0.9 * b + 0.1 * r
        assert agent.baseline == pytest.approx(b)


def test_normalised_advantages_and_kl_loss_by_hand():
    agent = Reinforce(4, lr=0.5, entropy_weight=0.1, baseline_momentum=0.9, seed=5)
    gen = torch.Generator().manual_seed(4)
    # Returns 0.002, -0.001, 0.004; b starts at 0; sigma^2 includes the current deviation.
    # t0: dev 0.002, s2 4e-6 -> A = 1; b = 0.002
    # t1: dev -0.003, s2 = 0.9 * 4e-6 + 0.1 * 9e-6 = 4.5e-6 -> A = -0.003 / sqrt(4.5e-6)
    # t2: b = 0.0017, dev 0.0023, s2 = 0.9 * 4.5e-6 + 0.1 * 0.0023^2 -> A = 0.0023 / sqrt(s2)
    s2 = 0.9 * 4.5e-6 + 0.1 * 0.0023**2
    expected = [1.0, -0.003 / math.sqrt(4.5e-6), 0.0023 / math.sqrt(s2)]
    for r, adv in zip((0.002, -0.001, 0.004), expected, strict=True):
        actions, _ = act(agent, S_HAT, None, 6, gen)
        before = copy.deepcopy(agent.policy)
        stats = agent.update(S_HAT, None, actions, r)
        assert stats["advantage"] == pytest.approx(adv, rel=1e-9)
        with torch.no_grad():  # -A mean log pi(a) + beta KL(q || pi), pi with the prior
            logp = torch.log_softmax(before.net(S_HAT) + torch.log(Q), 0)
            kl = (Q * (torch.log(Q) - logp)).sum()
            loss = -adv * logp[actions].mean() + 0.1 * kl
        assert stats["loss"] == pytest.approx(loss.item(), abs=1e-6)
        assert stats["kl_to_prior"] == pytest.approx(kl.item(), abs=1e-6)  # float32


def test_gamma_waits_for_the_horizon_and_discounts():
    agent = Reinforce(4, lr=0.01, gamma=0.5, horizon=3, advantage="raw", prior="groups", seed=3)
    gen = torch.Generator().manual_seed(2)
    rewards = [0.1, -0.2, 0.4, 0.3, 0.0]
    returns = [0.1 - 0.5 * 0.2 + 0.25 * 0.4, -0.2 + 0.5 * 0.4 + 0.25 * 0.3,
               0.4 + 0.5 * 0.3 + 0.25 * 0.0]
    episodes = []
    for t, r in enumerate(rewards):
        actions, _ = act(agent, S_HAT, None, 4, gen)
        episodes.append(actions)
        params = [p.clone() for p in agent.policy.parameters()]
        before = copy.deepcopy(agent.policy)
        stats = agent.update(S_HAT, None, actions, r)
        if t < 2:  # rewards of t+1, t+2 not there yet: no step
            assert stats == {}
            now = agent.policy.parameters()
            assert all(torch.equal(a, b) for a, b in zip(params, now, strict=True))
            continue
        e = t - 2  # the episode that became complete
        assert stats["updated_episode"] == e
        assert stats["return"] == pytest.approx(returns[e])
        adv = returns[e] - (0.0 if e == 0 else stats["baseline"])
        assert stats["advantage"] == pytest.approx(adv)
        assert stats["loss"] == pytest.approx(
            expected_loss(before, S_HAT, None, episodes[e], adv, 0.01), abs=1e-6)
    assert stats["baseline"] == pytest.approx(0.9 * returns[0] + 0.1 * returns[1])


def test_state_dict_round_trip_continues_the_same_policy():
    a = Reinforce(4, lr=0.02, gamma=0.9, horizon=2, seed=4)
    gen = torch.Generator().manual_seed(3)
    mask = torch.tensor([True, True, False, True])
    for r in (0.1, 0.3, -0.1):
        actions, _ = act(a, S_HAT, mask, 5, gen)
        a.update(S_HAT, mask, actions, r)
    saved = a.state_dict()
    assert len(saved["pending"]) == 1
    b = Reinforce(4, lr=0.02, gamma=0.9, horizon=2, seed=99)
    b.load_state_dict(saved)
    out = []
    for agent in (a, b):
        g = torch.Generator().manual_seed(5)
        actions, probs = act(agent, S_HAT, mask, 7, g)
        stats = agent.update(S_HAT, mask, actions, 0.2)
        actions2, _ = act(agent, S_HAT, mask, 7, g)
        out.append((actions, probs, stats, actions2))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert out[0][2] == out[1][2] and out[0][2] != {}
    assert torch.equal(out[0][3], out[1][3])
    for p, q in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="num_groups"):
        Reinforce(5).load_state_dict(saved)
