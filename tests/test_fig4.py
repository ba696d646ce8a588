"""The Fig. 4 protocol: a fresh policy on a half-trained CNN (`permrl fig4`)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_config import tiny_overrides

from permrl.checkpoint import load_checkpoint
from permrl.cli import main
from permrl.config import ConfigError, load_config
from permrl.fig4 import probe_config
from permrl.train import train

TINY = tiny_overrides(
    "model.dropout=0.2", "train.warmup_steps=2", "train.log_every=1", "cycle.sgd_steps=2",
    "cycle.episode_batches=1", "train.steps=6"
)


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("uniform")
    train(load_config(overrides=[*TINY, "train.checkpoint_every=4"]), run, progress=False)
    return run / "checkpoint-00000004.pt"  # S, uniform, cosine schedule: mid-schedule


def test_probe_config_holds_the_checkpoints_rate_for_e_cycles(half_trained):
    ckpt = load_checkpoint(half_trained)
    cfg = probe_config(ckpt, 4, "exp3", ["cycle.sgd_steps=3"])
    assert cfg.policy == "exp3" and cfg.train.steps == 4 * (3 + 1)
    assert cfg.train.schedule == "constant" and cfg.train.warmup_steps == 0
    assert 0 < cfg.train.lr == ckpt["scheduler"]["_last_lr"][0] < 1e-3
    assert probe_config(ckpt, 4, "reinforce", ["train.lr=0.5"]).train.lr == 0.5  # user wins
    final = load_checkpoint(half_trained.parent / "checkpoint.pt")  # cosine's end: lr 0
    assert final["scheduler"]["_last_lr"][0] == 0
    assert probe_config(final, 4, "reinforce", []).train.lr == final["config"]["train"]["lr"]
    with pytest.raises(ConfigError, match="--episodes"):
        probe_config(ckpt, 1, "reinforce", [])
    with pytest.raises(ConfigError, match="--policy"):
        probe_config(ckpt, 3, "uniform", [])


def test_init_from_starts_at_the_checkpoints_weights_with_a_fresh_sampler(half_trained,
                                                                         tmp_path):
    # A rate of 1e-30 leaves every float32 weight as it was: the new run's weights are the
    # checkpoint's exactly; its step counter and sampler start afresh.
    cfg = load_config(overrides=[*TINY, "policy=reinforce", "train.lr=1e-30",
                                 "train.schedule=constant", "train.warmup_steps=0"])
    train(cfg, tmp_path / "probe", progress=False, init_from=half_trained)
    before, after = load_checkpoint(half_trained), load_checkpoint(tmp_path / "probe/checkpoint.pt")
    assert after["step"] == 6
    for name, p in before["model"].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(p, after["model"][name]), name
    assert after["sampler"]["spatial"]["kind"] == "reinforce"
    assert after["sampler"]["spatial"]["updates"] == 1  # episodes at 3 (no reward) and 6
    assert (after["permutations"]["spatial"] == before["permutations"]["spatial"]).all()


def test_fig4_command_writes_quartiles_group_sizes_and_the_figure(half_trained, tmp_path,
                                                                 capsys):
    out = tmp_path / "fig4"
    assert main(["fig4", "--checkpoint", str(half_trained), "--out", str(out),
                 "--episodes", "3"]) == 0
    assert "hardest quartile" in capsys.readouterr().out
    result = json.loads((out / "fig4.json").read_text())
    rows = result["tasks"]["spatial"]
    assert [r["step"] for r in rows] == [3, 6, 9]
    for r in rows:
        assert sum(r["quartile_share"]) == pytest.approx(100.0)
        assert sum(r["group_sizes"]) == 12 and len(r["policy_probs"]) == 3
    assert rows[0]["reward"] is None and rows[1]["reward"] is not None
    assert (out / "fig4_spatial.png").stat().st_size > 0
    assert main(["fig4", "--checkpoint", str(tmp_path / "missing.pt"), "--out",
                 str(tmp_path / "x"), "--episodes", "3"]) == 2


def test_policy_movement_by_hand():
    """Two groups of sizes 3 and 1 (q = 0.75, 0.25), pi = 0.6, 0.4 at the last episode:
    max |pi - q| = 0.15, KL(q || pi) = 0.75 ln(0.75/0.6) + 0.25 ln(0.25/0.4); the hardest
    quartile's share over the last third of 3 episodes (the last one): 6 of 10 draws."""
    import math

    from permrl.policy.null import policy_movement

    def episode(probs, quartiles, reward):
        record = {"task": "spatial", "policy_probs": probs, "group_sizes": [3, 1],
                  "chosen_quartiles": quartiles, "chosen_groups": [5, 5]}
        return record | ({"reward": reward} if reward is not None else {})

    records = [episode([0.75, 0.25], [4, 3, 2, 1], None), episode([0.7, 0.3], [1, 1, 1, 1], 0.1),
               episode([0.6, 0.4], [1, 1, 2, 6], -0.1), {"step": 5, "spatial_loss": 1.0}]
    moved = policy_movement(records, "spatial")
    assert moved["episodes"] == 3 and moved["updates"] == 2
    assert moved["max_deviation"] == pytest.approx(0.15)
    assert moved["kl"] == pytest.approx(0.75 * math.log(0.75 / 0.6) + 0.25 * math.log(0.25 / 0.4))
    assert moved["hardest_share"] == pytest.approx(0.6)
    assert policy_movement(records, "temporal") is None
