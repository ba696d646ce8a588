"""The policy in the training loop (Sect. 3.2): schedule, episodes, observability, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_config import tiny_overrides

from permrl.checkpoint import load_checkpoint
from permrl.config import load_config
from permrl.policy.groups import group_permutations, policy_input
from permrl.policy.reinforce import Reinforce
from permrl.policy.samplers import GroupSampler
from permrl.train import policy_phase, train

TINY = tiny_overrides(
    "model.dropout=0.2", "train.log_every=1", "train.schedule=constant", "policy=reinforce",
    "cycle.sgd_steps=2", "cycle.episode_batches=1"
)


def tiny(*extra: str):
    return load_config(overrides=TINY + list(extra))


def finish_episode(sampler, iteration, state, twin=None):
    """The end of an episode in `permrl.train.policy_step`'s order: reward (Eq. 7), record,
    update (Eq. 9), end, regroup (Eq. 10); its record."""
    r = sampler.reward(iteration, state, twin)
    record = sampler.episode_record(iteration, state, twin)
    if r is not None:
        record |= {"reward": r} | sampler.update(r)
    sampler.end_episode()
    sampler.regroup(iteration, state)
    return record


def test_policy_phase_follows_the_schedule():
    cfg = tiny("cycle.sgd_steps=3", "cycle.episode_batches=2")
    phases = [policy_phase(cfg, done) for done in range(0, 12)]
    assert phases == [None, None, None, "episode_start", None, "episode_end",
                      None, None, "episode_start", None, "episode_end", None]
    assert policy_phase(tiny("policy=uniform"), 3) is None


def test_policy_draws_only_from_the_chosen_groups():
    rng = np.random.default_rng(0)
    ratios = np.concatenate([rng.uniform(0.5, 0.7, (4, 6)), rng.uniform(1.4, 2.0, (6, 6))])
    sampler = GroupSampler(10, Reinforce(2, seed=0), num_groups=2, seed=0)
    sampler.groups = group_permutations(ratios, 2, seed=0)
    sampler.s_hat = policy_input(sampler.groups, 10)
    sampler.begin_episode()
    perms = sampler.draw(400, torch.Generator().manual_seed(1))
    sampler.record(perms)
    groups = torch.as_tensor(sampler.groups.assignment)[perms]
    assert torch.equal(torch.cat(sampler.episode), groups)  # a permutation's group: its action
    assert set(perms.tolist()) == set(range(10))  # every member of a group is reachable
    assert sampler.groups.assignment[:4].tolist() == [0] * 4  # the hard rows: group 0


def grouped_sampler(episode_actions: str) -> GroupSampler:
    """A policy over 3 k-means groups of 10 permutations (random ratios), s_hat set."""
    rng = np.random.default_rng(0)
    sampler = GroupSampler(10, Reinforce(3, seed=0), num_groups=3, seed=0,
                            episode_actions=episode_actions)
    sampler.groups = group_permutations(rng.uniform(0.5, 2.0, (10, 6)), 3, seed=0)
    sampler.s_hat = policy_input(sampler.groups, 10)
    return sampler


def test_batch_episode_actions_draw_one_group_per_mini_batch_in_episodes_only():
    sampler = grouped_sampler("batch")
    gen = torch.Generator().manual_seed(0)
    phase = torch.as_tensor(sampler.groups.assignment)[sampler.draw(200, gen)]
    assert len(set(phase.tolist())) == 3  # the SGD phase: per sample
    sampler.begin_episode()
    for _ in range(6):
        perms = sampler.draw(16, gen)
        sampler.record(perms)
        groups = torch.as_tensor(sampler.groups.assignment)[perms]
        assert len(set(groups.tolist())) == 1 and torch.equal(groups, sampler.episode[-1])
    assert len({int(a[0]) for a in sampler.episode}) > 1  # a new group for each batch


def test_episode_actions_draw_one_group_for_the_whole_episode():
    sampler = grouped_sampler("episode")
    assignment = torch.as_tensor(sampler.groups.assignment)
    gen = torch.Generator().manual_seed(0)
    assert len(set(assignment[sampler.draw(200, gen)].tolist())) == 3  # SGD phase: per sample
    for _ in range(2):
        sampler.begin_episode()
        # The episode's group is pi's one draw from the first batch's generator.
        copy = torch.Generator()
        copy.set_state(gen.get_state())
        first = torch.multinomial(sampler.probabilities(), 1, generator=copy)
        for _ in range(4):
            perms = sampler.draw(16, gen)
            sampler.record(perms)  # the loop's record keeps the episode's group
            assert assignment[perms].tolist() == [int(first)] * 16
        assert torch.equal(torch.cat(sampler.episode), first.expand(64))
        sampler.end_episode()


def test_unreadable_samples_earn_no_credit(tmp_path, monkeypatch):
    """The loop records as an episode's actions exactly the draws of the samples it trains
    on: rows 1 and 4 made unreadable in every batch are left out of every record."""
    import permrl.train as train_module

    drawn, recorded = [], []
    draw, record = GroupSampler.draw, GroupSampler.record
    monkeypatch.setattr(GroupSampler, "draw", lambda self, *args: (
        drawn.append((self.in_episode, draw(self, *args))), drawn[-1][1])[1])
    monkeypatch.setattr(GroupSampler, "record", lambda self, perms: (
        recorded.append(perms), record(self, perms))[1])
    readable = torch.tensor([True, False, True, True, False, True, True, True])
    parts = train_module.drawn_parts
    monkeypatch.setattr(train_module, "drawn_parts", lambda run, name, step, batch, ok: parts(
        run, name, step, batch, ok & readable))
    train(tiny("train.steps=6"), tmp_path / "run", progress=False)
    episode_draws = [perms for in_episode, perms in drawn if in_episode]
    assert len(episode_draws) == 2  # after 2 and 5 (N = 2, K = 1)
    assert len(recorded) == 2
    for perms, kept in zip(episode_draws, recorded, strict=True):
        assert torch.equal(kept, perms[readable])


@pytest.mark.parametrize(("metric", "expected"), [
    ("error", 0.125), ("cross_entropy", 0.05), ("log_ratio", 0.2)])
def test_the_reward_extrapolates_the_chosen_metric(metric, expected):
    """Eq. 7 by hand on three states (iterations 10, 20, 25; 4 permutations x 2 samples):
    errors 1, 0.75, 0.5; mean cross-entropies 2, 1.5, 1.2; mean log ratios 0, 0.2, 0.5.
    error: 0.75 + (0.75 - 1) 5/10 - 0.5 = 0.125; cross-entropy: 1.5 - 0.25 - 1.2 = 0.05;
    log ratio (a gain): 0.5 - (0.2 + 0.2 x 5/10) = 0.2."""
    from permrl.policy.state import NetworkState

    def state(correct: int, ce: float, log_ratio: float) -> NetworkState:
        predicted = torch.full((4, 2), 3)  # wrong for permutations 0-2, right for 3
        predicted.view(-1)[:correct] = torch.tensor([0, 0, 1, 1, 2, 2][:correct])
        predicted[3] = torch.tensor([0, 0])
        return NetworkState.from_matrices(torch.full((4, 2), float(np.exp(log_ratio))),
                                          predicted, torch.full((4, 2), ce))

    states = [state(0, 2.0, 0.0), state(2, 1.5, 0.2), state(4, 1.2, 0.5)]
    assert [s.error for s in states] == [1.0, 0.75, 0.5]
    sampler = GroupSampler(4, Reinforce(2, seed=0), num_groups=2, seed=0,
                            reward_metric=metric)
    gen = torch.Generator().manual_seed(0)
    sampler.regroup(10, states[0])
    for iteration, s in ((20, states[1]), (25, states[2])):
        sampler.begin_episode()
        sampler.record(sampler.draw(8, gen))
        record = finish_episode(sampler, iteration, s)
    assert record["reward"] == pytest.approx(expected)
    assert sampler.state_dict()["values"][-1][1] == pytest.approx(
        {"error": 0.5, "cross_entropy": 1.2, "log_ratio": -0.5}[metric])
    from permrl.tasks import make_sampler

    assert make_sampler(tiny(f"cycle.reward_metric={metric}"), "spatial",
                        12).reward_metric == metric


def test_the_twin_reward_is_the_twins_value_minus_the_networks():
    """reward_baseline=twin: r = value(twin) - value(network), from the first episode on (no
    extrapolation needed); by hand on the same three states as above."""
    from permrl.policy.state import NetworkState

    def state(wrong: int, ce: float) -> NetworkState:
        predicted = torch.arange(4)[:, None].repeat(1, 2)  # every pair right ...
        flat = predicted.view(-1)
        flat[:wrong] = (flat[:wrong] + 1) % 4  # ... but the first `wrong`
        return NetworkState.from_matrices(torch.ones(4, 2), predicted, torch.full((4, 2), ce))

    before, after, twin = state(0, 2.0), state(2, 1.5), state(5, 1.25)
    assert (before.error, after.error, twin.error) == (0.0, 0.25, 0.625)
    for metric, expected in (("error", 0.375), ("cross_entropy", -0.25)):
        sampler = GroupSampler(4, Reinforce(2, seed=0), num_groups=2, seed=0,
                                reward_metric=metric, reward_baseline="twin")
        sampler.regroup(10, before)
        sampler.begin_episode()
        sampler.record(sampler.draw(8, torch.Generator().manual_seed(0)))
        record = finish_episode(sampler, 20, after, twin)
        assert record["reward"] == pytest.approx(expected)
        twin_value = {"error": 0.625, "cross_entropy": 1.25}[metric]
        assert record["twin_value"] == pytest.approx(twin_value)
        assert sampler.updates == 1


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("policy", ["reinforce", "exp3", "hardness"])
def test_s_plus_t_plus_p_logs_episodes_and_saves_the_sampler(tmp_path, policy):
    cfg = tiny("tasks=[spatial, temporal]", "train.steps=9", f"policy={policy}")
    train(cfg, tmp_path / "stp", progress=False)
    episodes = [r for r in records(tmp_path / "stp") if "episode" in r]
    assert [(r["step"], r["task"]) for r in episodes] == [
        (3, "spatial"), (3, "temporal"), (6, "spatial"), (6, "temporal"),
        (9, "spatial"), (9, "temporal")]
    first, later = episodes[0], episodes[2]
    assert "reward" not in first  # no reward until two errors exist (design §5)
    for key in ("group_sizes", "group_medians", "group_errors", "policy_probs", "chosen_groups",
                "chosen_quartiles", "error_before", "error_after", "reward", "sampler"):
        assert key in later, key
    assert later["sampler"] == policy
    assert ("baseline" in later) == (policy == "reinforce")
    assert sum(later["group_sizes"]) == 12 and sum(later["chosen_groups"]) == 8
    assert sum(later["chosen_quartiles"]) == 8 and len(later["policy_probs"]) == 3
    # Eq. 7 with the per-iteration extrapolation: validations at 2, 3, 5, 6 (N = 2, K = 1).
    assert later["reward"] == later["extrapolated_error"] - later["error_after"]
    ckpt = load_checkpoint(tmp_path / "stp/checkpoint.pt")
    assert ckpt["sampler"]["spatial"]["kind"] == policy
    assert ckpt["sampler"]["temporal"]["updates"] == 2
    with np.load(tmp_path / "stp/permutation_errors.npz") as f:
        # States at 2, 3, 5, 6, 8, 9; the final validation at 9 is the same weights: one row.
        assert f["spatial_steps"].tolist() == [2, 3, 5, 6, 8, 9]
        assert f["spatial_errors"].shape == (6, 12) and f["temporal_errors"].shape == (6, 12)


def assert_same_state(a, b, where: str = "sampler") -> None:
    """Nested dicts / lists of tensors, arrays and plain values: exactly equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif hasattr(a, "__dataclass_fields__"):
        assert_same_state(vars(a), vars(b), where)
    else:
        assert a == b, where


@pytest.mark.parametrize("policy", ["reinforce", "exp3", "hardness", "fixed", "reinforce twin"])
def test_resume_in_the_middle_of_an_episode_continues_the_same_sampler(tmp_path, policy):
    policy, *twin = policy.split()
    cfg = tiny("train.steps=10", "cycle.episode_batches=2", f"policy={policy}",
               *(["cycle.reward_baseline=twin"] if twin else []))
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at=7)  # inside the 2nd episode
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "full/checkpoint.pt")
    b = load_checkpoint(tmp_path / "split/checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    pa, pb = a["sampler"]["spatial"], b["sampler"]["spatial"]
    updates = 2 if policy == "fixed" or twin else 1  # (Eq. 7: none before two errors exist)
    assert pa["kind"] == policy and pa["updates"] == pb["updates"] == updates
    assert (load_checkpoint(tmp_path / "split/checkpoint-00000007.pt")["twin"] is None) != bool(
        twin)  # stopped inside the episode: the twin is in the checkpoint
    assert_same_state(pa, pb)  # groups, errors, the learner's parameters and optimiser
    strip = lambda rs: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rs]  # noqa
    assert strip(records(tmp_path / "full")) == strip(records(tmp_path / "split"))


def test_a_checkpoint_of_another_sampler_is_refused(tmp_path):
    train(tiny("train.steps=4"), tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run/checkpoint.pt")["sampler"]["spatial"]
    from permrl.tasks import make_sampler

    with pytest.raises(ValueError, match="'reinforce', this run uses 'exp3'"):
        make_sampler(tiny("policy=exp3"), "spatial", 12).load_state_dict(state)


def test_resuming_a_permrl_0_1_policy_state_is_one_clear_error(tmp_path):
    from permrl.checkpoint import save_checkpoint
    from permrl.run_dir import RunError

    cfg = tiny("train.steps=6")
    train(cfg, tmp_path / "run", progress=False, stop_at=4)
    ckpt = load_checkpoint(tmp_path / "run/checkpoint.pt")
    state = ckpt["sampler"]["spatial"]
    state["reinforce"] = state.pop("learner")  # the 0.1 layout
    save_checkpoint(ckpt, tmp_path / "run", 4, keep=3)
    with pytest.raises(RunError, match="spatial sampler state .* does not fit this run"):
        train(cfg, tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize("same_draws", [True, False])
def test_a_twin_drawing_what_the_network_draws_ends_where_the_network_ends(
        tmp_path, monkeypatch, same_draws):
    """The twin is forked from the network (weights, BN statistics, optimiser moments, lr) and
    trained on the same parts and dropout masks. Made to draw exactly the network's
    permutations (the network drawing uniformly from the twin's seeds), both end each episode
    bitwise equal: every reward, on the continuous cross-entropy, is exactly 0. With the
    policy's own draws (the control) they differ."""
    import permrl.train as train_module

    if same_draws:
        seed_of = train_module.step_seed
        monkeypatch.setattr(train_module, "step_seed", lambda seed, step, stream: seed_of(
            seed, step, stream - 17 if stream in (20, 21) else stream))  # twin's = sampler's

        def uniform_draw(self, batch_size, generator):
            return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)

        monkeypatch.setattr(GroupSampler, "draw", uniform_draw)
    cfg = tiny("train.steps=8", "cycle.episode_batches=2", "train.optimizer=adam",
               "cycle.reward_baseline=twin", "cycle.reward_metric=cross_entropy")
    train(cfg, tmp_path / "run", progress=False)
    episodes = [r for r in records(tmp_path / "run") if "reward" in r]
    assert len(episodes) == 2
    for r in episodes:
        assert r["reward"] == r["twin_value"] - r["value_after"]
        assert (r["reward"] == 0.0) == same_draws


def test_the_fixed_ceiling_draws_uniformly_over_the_hardest_share_of_psi():
    from types import SimpleNamespace

    from permrl.policy.samplers import HardestShareSampler

    sampler = HardestShareSampler(6, share=0.5)
    gen = torch.Generator().manual_seed(0)
    assert set(sampler.draw(600, gen).tolist()) == set(range(6))  # before a state: uniform
    errors = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2, 0.0])  # hardest half: 1, 3 (tie), 2
    sampler.regroup(4, SimpleNamespace(error=0.43, per_permutation_error=errors))
    counts = torch.bincount(sampler.draw(3000, gen), minlength=6)
    assert counts[[0, 4, 5]].tolist() == [0, 0, 0] and counts[[1, 2, 3]].min() > 900
    sampler.begin_episode()
    record = finish_episode(sampler, 6, SimpleNamespace(
        error=0.3, per_permutation_error=torch.tensor([0.9, 0.0, 0.0, 0.0, 0.8, 0.0])))
    assert record == {"sampler": "fixed", "share": 0.5, "error_before": 0.43, "error_after": 0.3}
    assert sampler.chosen.tolist() == [0, 1, 4]  # chosen anew: 0, 4, then the first tie (1)


def test_a_validation_on_an_episode_boundary_reuses_the_policys_state(tmp_path, monkeypatch):
    """val_every 3 with N + K = 2 + 1: validations at 3, 6, 9 fall on episode ends. The state
    is computed once per step (5 policy states + the final validation's, not 9), and the
    logged accuracy is that state's."""
    import permrl.run as run_module

    computed = []
    sharded = run_module.sharded_state
    monkeypatch.setattr(run_module, "sharded_state", lambda model, name, *rest: (
        computed.append(name), sharded(model, name, *rest))[1])
    train(tiny("train.steps=9", "train.val_every=3"), tmp_path / "run", progress=False)
    assert len(computed) == 6  # states after 2, 3, 5, 6, 8, 9
    logged = [r for r in records(tmp_path / "run") if "spatial_val_error" in r]
    episodes = {r["step"]: r for r in records(tmp_path / "run") if "error_after" in r}
    assert [r["step"] for r in logged] == [3, 6, 9]
    assert all(r["spatial_val_error"] == episodes[r["step"]]["error_after"] for r in logged)
