"""The ablation harness: every cell trained and evaluated alike, table by hand, resumable."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
from tiny_config import tiny_overrides

import permrl.ablate as ablate_module
from permrl.ablate import ablate
from permrl.config import ConfigError

TINY = tiny_overrides(
    "data.images=dead-leaves?count=30&size=80",
    "data.videos=demo-videos?count=20&frames=12&size=40", "train.steps=4", "train.log_every=1",
    "cycle.sgd_steps=1", "cycle.episode_batches=1",
    "eval.knn_train=demo-photos?subset=gallery&crops=3",
    "eval.knn_test=demo-photos?subset=query&crops=2", "spatial.grid=3", "train.warmup_steps=100"
)


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
    # How far S+P's policy moved: the table's row is the mean over seeds of each seed's own.
    from permrl.policy.null import policy_movement
    from permrl.report.figures import read_metrics

    seeds = [policy_movement(read_metrics(out / f"S+P/seed{s}"), "spatial") for s in (0, 1)]
    moved = statistics.fmean(m["max_deviation"] for m in seeds)
    assert f"| S+P | spatial | 2 | {seeds[0]['updates']:.0f} | {moved:.3f} |" in table
    assert f"- The learned policy (+P) moved {moved:.3f} from uniform draws over Psi" in table
    # A rerun skips finished cells: training is never called again.
    monkeypatch.setattr(ablate_module, "train", lambda *a, **k: pytest.fail("retrained"))
    again = ablate(out, ["S", "S+P", "S&T"], seeds=2, overrides=TINY)
    assert [c["knn"] for c in again["cells"]] == [c["knn"] for c in cells]


def test_each_policy_cell_is_compared_with_its_shuffled_reward_null(tmp_path):
    """4 cycles of 1 + 1 steps: 3 rewarded episodes, enough for a null. The movement table's
    null columns are those of `shuffled_reward_null` on the cell's own records and learner."""
    from permrl.config import load_config
    from permrl.policy.null import shuffled_reward_null
    from permrl.report.tables import NULL_SHUFFLES
    from permrl.run_dir import read_metrics
    from permrl.tasks import make_sampler

    out = tmp_path / "abl"
    ablate(out, ["S", "S+P"], seeds=1, overrides=TINY + ["train.steps=8"])
    cell = out / "S+P/seed0"
    cfg = load_config(cell / "config.yaml")
    records = [r for r in read_metrics(cell) if r.get("task") == "spatial"]
    null = shuffled_reward_null(records, lambda: make_sampler(cfg, "spatial", 12).learner,
                                shuffles=NULL_SHUFFLES, seed=cfg.seed)
    table = (out / "table.md").read_text()
    assert (f"| {null['max_deviation_null_95']:.3f} | {null['max_deviation_percentile']:.0f} / "
            f"{null['mean_abs_t_percentile']:.0f} | {int(null['beyond_null'])}/1 |") in table
    assert "Against its null (the same learner fed the run's own rewards shuffled" in table


def test_a_difference_is_not_called_a_policy_effect_when_the_policy_stayed_in_its_null():
    from permrl.report.tables import paired_rows, summary_rows, summary_sentences

    rows = {r["variant"]: r for r in summary_rows(hand_cells())}
    pairs = {p["variant"]: p for p in paired_rows(hand_cells())}
    stayed = [{"variant": "S+P", "task": "spatial", "seeds": 3, "updates": 12,
               "max_deviation": 0.05, "kl": 0.01, "hardest_share": 0.25, "mean_abs_t": 0.8,
               "null_seeds": 3, "beyond_null": 1, "null_95": 0.07, "null_percentile": 60,
               "t_percentile": 50}]
    said = summary_sentences(list(rows.values()), [pairs["S+P"]], stayed)
    assert ("S+P vs S: Top-1 retrieval +3.0 ± 1.0 (3/3 seeds higher) (its sampler did not "
            "move beyond its null: not a policy effect).") in said
    assert ("Against its null (the same learner fed the run's own rewards shuffled across "
            "episodes): beyond the null's 95th percentile in 1 of 3 runs; max |pi - q| at "
            "percentile 60 of the null, reward signal (mean |t|) at 50.") in said
    moved = [stayed[0] | {"beyond_null": 2}]
    said = summary_sentences(list(rows.values()), [pairs["S+P"]], moved)
    assert "S+P vs S: Top-1 retrieval +3.0 ± 1.0 (3/3 seeds higher)." in said


def test_a_policy_cell_shorter_than_one_cycle_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(ConfigError, match=r"S\+P: policy=reinforce never acts.*cycle\."
                                          r"sgd_steps \+ cycle.episode_batches = 101"):
        ablate(tmp_path / "abl", ["S", "S+P"], seeds=1,
               overrides=TINY + ["train.steps=60", "cycle.sgd_steps=100"])
    assert not (tmp_path / "abl").exists()


def test_unknown_variant_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="S\\+Q"):
        ablate(tmp_path, ["S", "S+Q"], seeds=1, overrides=TINY)
    assert not (tmp_path / "S").exists()  # validated before anything trains


def test_rerun_keeps_other_cells_and_refuses_a_changed_config_by_name(tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "abl"
    first = ablate(out, ["S", "S+P"], seeds=1, overrides=TINY)["cells"]
    real_train = ablate_module.train
    monkeypatch.setattr(ablate_module, "train", lambda *a, **k: pytest.fail("retrained"))
    # Fewer variants: the finished S+P cell stays in the table.
    again = ablate(out, ["S"], seeds=1, overrides=TINY)
    assert again["cells"] == first
    assert "| S+P |" in (out / "table.md").read_text()
    # A changed budget: refused, naming the cell and the key; nothing is retrained.
    with pytest.raises(ConfigError, match=r"S/seed0 \(train.steps: 4 -> 3\).*--force"):
        ablate(out, ["S"], seeds=1, overrides=TINY + ["train.steps=3"])
    # --force retrains it; the S+P cell of the other budget leaves the table, said on stderr.
    monkeypatch.setattr(ablate_module, "train", real_train)
    capsys.readouterr()
    forced = ablate(out, ["S"], seeds=1, overrides=TINY + ["train.steps=3"], force=True)
    assert [(c["variant"], c["steps"]) for c in forced["cells"]] == [("S", 3)]
    assert "S+P/seed0 left out of the table" in capsys.readouterr().err
    assert "| S+P |" not in (out / "table.md").read_text()
    assert (out / "S+P/seed0/cell.json").exists()  # its directory is untouched


def test_an_interrupted_cell_exits_130_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    import signal

    from permrl.cli import main
    from permrl.run import RunResult

    def stopped(cfg, run_dir, **kwargs):
        return RunResult(run_dir, 1, float("nan"), {}, 0, stop_signal=int(signal.SIGINT))

    monkeypatch.setattr(ablate_module, "train", stopped)
    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["ablate", "--out", str(tmp_path / "abl"), "--variants", "S", "--seeds", "1",
                 *sets]) == 130
    err = capsys.readouterr().err
    assert "run the same `permrl ablate` command again" in err and "--resume" not in err
    assert not (tmp_path / "abl/S/seed0/cell.json").exists()


def test_the_table_rounds_once():
    """87.946% must print as 87.9 (rounding to 87.95 first printed 88.0)."""
    from permrl.config import load_config
    from permrl.report.tables import summary_table

    knn = {"layer": "pool5", "train_source": "g", "test_source": "q", "gallery": 2,
           "queries": 2, "bn_stats": "gallery", "top1": 0.879464, "top5": 0.950535}
    md, rows = summary_table([{"variant": "S", "seed": 0, "steps": 1, "knn": knn}],
                             load_config())
    assert "| S | 87.9 ± 0.0 | 95.1 ± 0.0 |" in md
    assert rows[0]["top1_mean"] == pytest.approx(87.9464)


def hand_cells() -> list[dict]:
    knn = {"layer": "pool5", "train_source": "g", "test_source": "q", "gallery": 2,
           "queries": 2, "bn_stats": "gallery"}
    top1 = {"S": [0.50, 0.52, 0.48], "S+P": [0.53, 0.56, 0.50], "T": [0.30, 0.40, 0.20],
            "T+P": [0.31, 0.39, 0.22]}
    puzzle = {"S": [0.10, 0.12, 0.11], "S+P": [0.10, 0.13, 0.10], "T": [0.60, 0.70, 0.50],
              "T+P": [0.61, 0.71, 0.52]}
    task = {"S": "spatial", "S+P": "spatial", "T": "temporal", "T+P": "temporal"}
    return [{"variant": v, "seed": s, "steps": 10, "knn": knn | {"top1": top1[v][s]},
             "puzzle_accuracy": {task[v]: puzzle[v][s]}}
            for v in top1 for s in range(3)]


def test_paired_differences_by_hand():
    """S+P - S per seed: top1 +3, +4, +2 points: mean 3, std 1 (exceeds); T+P - T: +1, -1, +2:
    mean 0.667, std 1.528 (within the spread)."""
    from permrl.report.tables import paired_rows, summary_rows, summary_sentences
    from permrl.variants import uniform_twin

    assert [uniform_twin(v) for v in ("S", "S+P", "T+hardness", "S+T+P", "S&T")] == [
        None, "S", "T", "S+T", None]
    cells = hand_cells()
    rows = {r["variant"]: r for r in summary_rows(cells)}
    assert [rows["S+P"][f"top1_seed{s}"] for s in range(3)] == pytest.approx([53, 56, 50])
    assert rows["S+P"]["top1_mean"] == pytest.approx(53) and rows["S+P"]["top1_std"] == \
        pytest.approx(3)
    assert "temporal_puzzle_seed0" not in rows["S"]
    assert math.isnan(rows["S"]["temporal_puzzle_mean"])
    pairs = {p["variant"]: p for p in paired_rows(cells)}
    sp, tp = pairs["S+P"], pairs["T+P"]
    assert sp["twin"] == "S" and sp["top1_diff"] == pytest.approx(3.0)
    assert sp["top1_diff_std"] == pytest.approx(1.0) and sp["top1_higher"] == 3
    assert sp["top1_exceeds_spread"] is True
    assert tp["top1_diff"] == pytest.approx(2 / 3) and tp["top1_diff_std"] == pytest.approx(
        statistics.stdev([1, -1, 2])) and tp["top1_exceeds_spread"] is False
    assert tp["top1_higher"] == 2
    assert sp["spatial_puzzle_diff"] == pytest.approx((0 + 1 - 1) / 3)  # 0, +1, -1 points
    assert "temporal_puzzle_diff" not in sp
    said = summary_sentences(list(rows.values()), list(pairs.values()))
    assert said[0] == "4 variants, 3 seed(s) each."
    assert "Top-1 retrieval: S+P ahead (53.0 ± 3.0 %), next S (50.0 ± 2.0)." in said
    assert "S+P vs S: Top-1 retrieval +3.0 ± 1.0 (3/3 seeds higher)." in said
    assert "T+P vs T: temporal puzzle accuracy +1.3 ± 0.6 (3/3 seeds higher)." in said  # +1+1+2
    within = pairs["S+P"] | {"top1_exceeds_spread": False, "spatial_puzzle_exceeds_spread": False}
    said = summary_sentences(list(rows.values()), [within])
    assert said[-1] == "S+P vs S: no difference beyond the seeds' spread."


def test_table_md_lists_every_seed_and_the_pairs():
    from permrl.config import load_config
    from permrl.report.tables import summary_table

    md, _ = summary_table(hand_cells(), load_config())
    assert "| S+P | 53.0 ± 3.0 |" in md
    assert "| S+P | 0: 53.0, 1: 56.0, 2: 50.0 |" in md
    assert "| S+P | S | **+3.0** ± 1.0 [3/3] |" in md
    assert "| T+P | T | +0.7 ± 1.5 [2/3] |" in md


def test_two_seeds_on_a_folder_of_real_photos_write_mean_spread_and_pairs(tmp_path):
    """The issue's check: a 2-seed ablation on a small real photo folder (scikit-image's
    bundled photographs, copied as files) writes mean, spread, each seed and the S+P - S pair,
    all equal to what cells.json gives by hand."""
    import shutil

    from permrl.data.builtin import DEMO_PHOTO_NAMES, demo_photo_path

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in DEMO_PHOTO_NAMES:
        path = demo_photo_path(name)
        shutil.copy(path, photos / path.name)
    out = tmp_path / "abl"
    overrides = [o for o in TINY if not o.startswith("data.images")] + [
        f"data.images=folder:{photos}"]
    ablate(out, ["S", "S+P"], seeds=2, overrides=overrides)
    cells = json.loads((out / "cells.json").read_text())
    top1 = {(c["variant"], c["seed"]): 100 * c["knn"]["top1"] for c in cells}
    rows = {r["variant"]: r for r in csv.DictReader((out / "table.csv").open())}
    for v in ("S", "S+P"):
        seeds = [top1[(v, 0)], top1[(v, 1)]]
        assert float(rows[v]["top1_mean"]) == pytest.approx(statistics.fmean(seeds))
        assert float(rows[v]["top1_std"]) == pytest.approx(statistics.stdev(seeds))
        assert [float(rows[v][f"top1_seed{s}"]) for s in (0, 1)] == pytest.approx(seeds)
    (pair,) = csv.DictReader((out / "pairs.csv").open())
    diffs = [top1[("S+P", s)] - top1[("S", s)] for s in (0, 1)]
    assert pair["variant"] == "S+P" and pair["twin"] == "S"
    assert float(pair["top1_diff"]) == pytest.approx(statistics.fmean(diffs))
    assert float(pair["top1_diff_std"]) == pytest.approx(statistics.stdev(diffs))
    assert int(pair["top1_higher"]) == sum(d > 0 for d in diffs)
    table = (out / "table.md").read_text()
    assert table.startswith("Summary:\n- 2 variants, 2 seed(s) each.")
    assert f"images folder:{photos}" in table and "Per seed (seed: value):" in table


def test_one_seed_says_there_is_no_spread_and_missing_tasks_print_a_dash():
    from permrl.config import load_config
    from permrl.report.tables import (
        paired_rows,
        summary_rows,
        summary_sentences,
        summary_table,
    )

    cells = [c for c in hand_cells() if c["seed"] == 0]
    said = summary_sentences(summary_rows(cells), paired_rows(cells))
    assert said[0] == "4 variants, 1 seed(s) each."
    assert said[-1].startswith("One seed per variant: the adaptive-vs-uniform differences")
    md, _ = summary_table(cells, load_config())
    assert "| S | 50.0 ± 0.0 | 10.0 ± 0.0 | - |" in md and "nan" not in md


def test_the_ceiling_arm_is_paired_with_uniform_and_never_called_a_policy_effect():
    from permrl.ablate import variant_config
    from permrl.report.tables import policy_effect
    from permrl.variants import uniform_twin

    assert [uniform_twin(v) for v in ("S+fixed", "T+fixed", "S+T+fixed")] == ["S", "T", "S+T"]
    assert policy_effect([], "S+fixed") is None  # it learns nothing: no null, no caveat
    assert variant_config([], None, "cpu", "T+fixed", 1).policy == "fixed"
