"""`make demo` end to end on a tiny configuration: both variants train, the table prints."""

from __future__ import annotations

import json

from tiny_config import tiny_overrides

import permrl.demo as demo

TINY = tiny_overrides(
    "tasks=[spatial, temporal]", "data.images=dead-leaves?count=30&size=80",
    "data.videos=demo-videos?count=20&frames=12&size=40", "cycle.sgd_steps=2",
    "cycle.episode_batches=1", "eval.knn_train=demo-photos?subset=gallery&crops=3",
    "eval.knn_test=demo-photos?subset=query&crops=2", "spatial.grid=3", "train.warmup_steps=100"
)


def test_demo_trains_both_variants_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "DEMO_OVERRIDES", TINY)
    monkeypatch.setattr(demo, "VIDEO_GALLERY", "demo-videos?subset=gallery&label=photo&count=14"
                        "&size=40")
    monkeypatch.setattr(demo, "VIDEO_QUERIES", "demo-videos?subset=query&label=photo&count=14"
                        "&size=40")
    report = demo.run_demo(tmp_path, steps=4)
    out = capsys.readouterr().out
    assert list(report["rows"]) == ["S+T", "S+T+P", "random init"]
    for name in ("| S+T | images |", "| S+T+P | videos, frame level |",
                 "| random init | videos, video level |"):
        assert name in out
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["rows"]["S+T+P"]["images"]["queries"] == 28  # the ablation's evaluation
    assert saved["rows"]["random init"]["images"]["queries"] == 28
    runs = tmp_path / "ablation"
    episodes = [json.loads(line) for line in (runs / "S+T+P/seed0/metrics.jsonl").open()
                if "episode" in line]
    assert episodes and not (runs / "S+T/seed0/metrics.jsonl").read_text().count("episode")
    assert (runs / "table.md").exists() and (tmp_path / "report.html").stat().st_size > 10_000
    assert "report.html" in out


def test_the_demo_is_seed_0_of_the_table5_command():
    """`make demo`'s two runs have exactly the config of examples/table5.yaml's S+T, S+T+P."""
    from pathlib import Path

    from permrl.ablate import variant_config
    from permrl.config import config_differences

    table5 = str(Path(__file__).parents[1] / "examples/table5.yaml")
    steps = demo.DEMO_STEPS
    overrides = demo.DEMO_OVERRIDES + [f"train.steps={steps}", f"train.val_every={steps // 6}",
                                       f"eval.knn_every={steps // 6}"]
    for variant in demo.VARIANTS:
        mine = variant_config(overrides, None, "cpu", variant, 0)
        theirs = variant_config([], table5, None, variant, 0)
        assert config_differences(theirs, mine) == []
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "examples/table5.yaml" in makefile and demo.TABLE5_COMMAND == "make table5"
