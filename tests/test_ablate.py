"""The ablation harness: every cell trained and evaluated alike, table by hand, resumable."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

import permrl.ablate as ablate_module
from permrl.ablate import ablate
from permrl.config import ConfigError

TINY = [
    "data.images=dead-leaves?count=30&size=80", "data.workers=0",
    "data.videos=demo-videos?count=20&frames=12&size=40", "model.width=0.125", "model.fc6=16",
    "model.fc7=32", "model.lstm=16", "spatial.permutations=12", "temporal.frames=4",
    "temporal.permutations=12", "temporal.stride_max=2", "train.batch_size=8",
    "train.val_size=4", "train.val_every=0", "train.threads=1", "train.steps=4",
    "train.log_every=1",
    "reinforce.sgd_steps=1", "reinforce.episode_batches=1", "reinforce.groups=3",
    "eval.knn_train=demo-photos?subset=gallery&crops=3",
    "eval.knn_test=demo-photos?subset=query&crops=2",
]


def test_ablation_table_resume_and_layout(tmp_path, monkeypatch):
    out = tmp_path / "abl"
    ablate(out, ["S", "S+P", "S&T"], seeds=2, overrides=TINY)
    cells = json.loads((out / "cells.json").read_text())
    assert [(c["variant"], c["seed"]) for c in cells] == [
        ("S", 0), ("S", 1), ("S+P", 0), ("S+P", 1), ("S&T", 0), ("S&T", 1)]
    assert (out / "S+P/seed1/checkpoint.pt").exists() and (out / "S_then_T/seed0").is_dir()
    assert any("episode" in line for line in (out / "S+P/seed0/metrics.jsonl").open())
    serial = [json.loads(line) for line in (out / "S_then_T/seed0/metrics.jsonl").open()]
    assert {"spatial_loss" in r for r in serial if r.get("step") == 1} == {True}
    assert {"temporal_loss" in r for r in serial if r.get("step") == 4 and "lr" in r} == {True}
    # The table is the mean and the sample standard deviation over seeds, in percent.
    rows = list(csv.DictReader((out / "table.csv").open()))
    for row in rows:
        mine = [100 * c["knn"]["top1"] for c in cells if c["variant"] == row["variant"]]
        assert float(row["top1_mean"]) == pytest.approx(statistics.fmean(mine), abs=0.01)
        assert float(row["top1_std"]) == pytest.approx(statistics.stdev(mine), abs=0.01)
        puzzle = [100 * c["puzzle_accuracy"]["spatial"] for c in cells
                  if c["variant"] == row["variant"]]
        assert float(row["spatial_puzzle_mean"]) == pytest.approx(statistics.fmean(puzzle),
                                                                  abs=0.01)
    metrics = [json.loads(line) for line in (out / "S+P/seed1/metrics.jsonl").open()]
    final = [r["spatial_val_accuracy"] for r in metrics if "spatial_val_accuracy" in r][-1]
    assert cells[3]["puzzle_accuracy"]["spatial"] == final  # the run's last validation
    table = (out / "table.md").read_text()
    assert "| S+P |" in table and "2 seed(s)" in table and "42 items" in table
    assert "spatial puzzle" in table and "temporal puzzle" in table  # S&T trains both
    # A rerun skips finished cells: training is never called again.
    monkeypatch.setattr(ablate_module, "train", lambda *a, **k: pytest.fail("retrained"))
    again = ablate(out, ["S", "S+P", "S&T"], seeds=2, overrides=TINY)
    assert [c["knn"] for c in again["cells"]] == [c["knn"] for c in cells]


def test_unknown_variant_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="S\\+Q"):
        ablate(tmp_path, ["S", "S+Q"], seeds=1, overrides=TINY)
    assert not (tmp_path / "S").exists()  # validated before anything trains
