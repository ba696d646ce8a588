"""The landscape's measurement: draws, arms, Eq. 7 per metric by hand, common random numbers
and exact restores on a tiny checkpoint, the command's files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from tiny_config import tiny_overrides

from permrl.checkpoint import load_checkpoint
from permrl.cli import main
from permrl.config import load_config
from permrl.landscape.measure import (
    Arm,
    inverse_transform,
    landscape_arms,
    measure_arms,
    metric_reward,
    open_landscape,
)
from permrl.policy.groups import PermutationGroups
from permrl.train import train

TINY = tiny_overrides(
    "data.images=dead-leaves?count=60&size=80", "model.dropout=0.3", "train.val_size=8",
    "train.steps=6", "cycle.sgd_steps=3"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("landscape") / "run"
    train(load_config(overrides=TINY), run, progress=False)
    return run


def test_inverse_transform_is_the_cdf_step_function():
    probs = np.array([0.25, 0.0, 0.5, 0.25])
    u = torch.linspace(0, 0.999, 1000, dtype=torch.float64)  # U[0, 1): torch.rand never 1
    got = inverse_transform(probs, u)
    cdf = np.cumsum(probs)
    expected = [int(np.argmax(x < cdf)) for x in u.double().numpy()]  # first i: u < F(i)
    assert got.tolist() == expected
    assert 1 not in got.tolist()  # a zero-probability permutation is never drawn


def test_arms_by_hand():
    groups = PermutationGroups(np.array([0, 1, 1, 0, 1, 2]), np.array([2, 3, 1]),
                               np.array([0.8, 1.0, 1.2]))
    errors = np.array([0.9, 0.1, 0.5, 0.7, 0.2, 0.0])
    arms = {a.name: a for a in landscape_arms(groups, errors)}
    u = np.full(6, 1 / 6)
    np.testing.assert_allclose(arms["group 0"].probs, [0.5, 0, 0, 0.5, 0, 0])
    tilt = 0.5 * u + 0.5 * np.array([0, 1, 1, 0, 1, 0]) / 3
    np.testing.assert_allclose(arms["tilt 1"].probs, tilt)
    np.testing.assert_allclose(arms["hardest half"].probs, [1 / 3, 0, 1 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(arms["easiest half"].probs, [0, 1 / 3, 0, 0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(arms["fixed"].probs, [1, 0, 0, 0, 0, 0])
    assert arms["lr=0"].lr_scale == 0.0 and arms["group 2"].group == 2
    assert all(a.probs.sum() == pytest.approx(1.0) for a in arms.values())


def test_metric_reward_is_eq7_as_a_gain():
    # E_prev 0.5 at 0, E_t 0.4 at 10: extrapolated to 15, 0.35; E_{t+1} = 0.33 -> 0.02.
    assert metric_reward("error", [(0, 0.5), (10, 0.4)], 15, 0.33) == pytest.approx(0.02)
    # mean log ratio 0.1 -> 0.2 (higher is better): extrapolated 0.25, reached 0.27 -> +0.02
    assert metric_reward("log_ratio", [(0, 0.1), (10, 0.2)], 15, 0.27) == pytest.approx(0.02)


def test_arms_share_everything_but_their_draws_and_restores_are_exact(checkpoint):
    land = open_landscape(checkpoint, None, None, [], seed=0)
    start = {k: v.clone() for k, v in land.model.state_dict().items()}
    uniform = np.full(12, 1 / 12)
    arms = [Arm("uniform", uniform, "uniform"), Arm("again", uniform.copy(), "uniform"),
            Arm("lr=0", uniform, "control", lr_scale=0.0)]
    result = measure_arms(land, arms, [1, 3], replicates=2, bn_steps=[1000, 1001],
                          progress=False)
    for bn, per_metric in result["gains"].items():
        for m, per_k in per_metric.items():
            for k, g in per_k.items():
                assert np.array_equal(g[0], g[1]), (bn, m, k)  # same batches, masks, draws
                if m == "cross_entropy":  # training moved something (the 0/1 error of
                    assert np.all(g[0] != 0), (bn, k)  # a tiny model may not move)
                if bn == "reestimated":  # lr = 0: weights unchanged, statistics re-taken
                    assert np.all(g[2] == 0), (m, k)
    land.restore()
    assert all(torch.equal(start[k], v) for k, v in land.model.state_dict().items())
    ckpt = load_checkpoint(checkpoint / "checkpoint.pt")["model"]
    assert all(torch.equal(ckpt[k], v) for k, v in start.items())


def test_the_command_writes_every_gain_and_the_summary(checkpoint, tmp_path, capsys):
    out = tmp_path / "land"
    assert main(["landscape", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--horizons", "1,2", "--replicates", "2", "--cycles", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| stored | error | 1 |" in printed and "landscape.png" in printed
    result = json.loads((out / "landscape.json").read_text())
    arms = result["arms"]
    assert arms[0] == "uniform" and arms[-2:] == ["lr=0", "fixed"]
    rows = list(csv.DictReader((out / "landscape.csv").open()))
    assert len(rows) == len(arms) * 2 * 2 * 2 * 3  # arms x replicates x K x BN x metrics
    row = next(r for r in rows if r["arm"] == "fixed" and r["bn"] == "stored"
               and r["metric"] == "error" and r["horizon"] == "2" and r["replicate"] == "1")
    assert float(row["gain"]) == pytest.approx(
        result["gains"]["stored"]["error"]["2"][arms.index("fixed")][1], rel=1e-5)
    for k in ("1", "2"):
        assert len(result["loop_rewards"]["error"][k]) == 2  # one Eq. 7 reward per cycle
    assert (out / "landscape.png").stat().st_size > 0
    assert main(["landscape", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "already holds a landscape" in capsys.readouterr().err
    assert main(["landscape", "--checkpoint", str(tmp_path / "none"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_finds_the_best_mixture_against_uniform(checkpoint, tmp_path):
    from permrl.landscape.report import summarise

    arms = [Arm("uniform", np.ones(4) / 4, "uniform"), Arm("tilt 0", np.ones(4) / 4, "tilt", 0),
            Arm("tilt 1", np.ones(4) / 4, "tilt", 1), Arm("group 0", np.ones(4) / 4, "group", 0),
            Arm("group 1", np.ones(4) / 4, "group", 1), Arm("fixed", np.ones(4) / 4, "control")]
    gains = np.array([[1.0, 2, 3], [1.5, 2.4, 3.5], [0.5, 2, 2], [0, 1, 0], [-1, 0, 2],
                      [-9, -9, -9]])
    s = summarise(arms, gains, sigma_loop=0.2, group_sizes=np.array([3, 1]),
                  group_error=np.array([0.6, 0.2]), group_of=np.array([0, 0, 0, 1]),
                  batch_size=8, batches=5)
    diff = gains[1] - gains[0]  # tilt 0 - uniform: 0.5, 0.4, 0.5
    assert s["best"]["arm"] == "tilt 0"
    assert s["best"]["delta"] == pytest.approx(diff.mean())
    assert s["best"]["sigma_pair"] == pytest.approx(diff.std(ddof=1))
    assert s["best"]["episodes_loop"] == pytest.approx(6.1826 * (0.2 / diff.mean()) ** 2, rel=1e-4)
    # (these arms are all uniform: a policy's draws cannot try tilt 0 at all)
    assert math.isinf(s["best"]["episodes_sample"]) and math.isinf(s["best"]["episodes_batch"])
    assert s["mixtures"]["df_arms"] == 2 and s["groups"]["df_arms"] == 1
    assert s["arms"]["fixed"]["mean"] == -9
