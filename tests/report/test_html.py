"""The HTML report: tables from the package's JSON, embedded figures, escaping, the three
directory kinds."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from permrl.ablate import variant_config
from permrl.config import load_config, to_yaml
from permrl.report.html import detect_kind, policy_pairs, table_html, write_report
from permrl.report.tables import (
    format_table,
    paired_rows,
    summary_rows,
    summary_sentences,
    summary_table,
)
from permrl.variants import VARIANTS, cell_dir, uniform_twin

IMG = '<img src="data:image/png;base64,'
CONFIG = """preset: cpu
seed: 0
tasks: [{tasks}]
policy: {policy}
note: "a < b <script>alert(1)</script>"
data:
  images: dead-leaves?count=4&size=8
spatial:
  permutations: 8
train:
  steps: 30
"""


def make_run(run_dir, policy=True, knn=False, config=None):
    """A tiny fake spatial RUN_DIR (``config``: the text of its config.yaml)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(
        config or CONFIG.format(tasks="spatial", policy="reinforce" if policy else "uniform"))
    steps = (10, 20, 30)
    records = []
    for i, step in enumerate(steps):
        records.append({"step": step, "spatial_loss": 2.0 - 0.1 * i,
                        "spatial_accuracy": 0.1 * i})
        records.append({"step": step, "spatial_val_accuracy": 0.05 * i,
                        "spatial_val_error": 1 - 0.05 * i})
        if policy:
            records.append({"step": step, "task": "spatial", "episode": i,
                            "policy_probs": [0.6, 0.4], "chosen_quartiles": [1, 2, 3, 4],
                            "reward": 0.01 if i else None, "baseline": 0.0})
        if knn:
            records.append({"step": step, "knn_top1": 0.3 + 0.02 * i})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    errors = np.random.default_rng(1).uniform(0, 1, (len(steps), 6)).astype(np.float16)
    np.savez(run_dir / "permutation_errors.npz", spatial_steps=np.asarray(steps),
             spatial_errors=errors)
    return run_dir


def count_check(html_path, root):
    """One embedded image per PNG written into root/figures; returns that count."""
    text = html_path.read_text()
    pngs = list((root / "figures").glob("*.png"))
    assert text.count(IMG) == len(pngs) > 0
    return text, len(pngs)


def test_table_by_hand():
    assert table_html([["net", "Top1"], ["a <b> & c", "45.1"], ["x", "-"]]) == (
        "<table>\n"
        "<tr><th>net</th><th>Top1</th></tr>\n"
        "<tr><td>a &lt;b&gt; &amp; c</td><td class=\"num\">45.1</td></tr>\n"
        "<tr><td>x</td><td>-</td></tr>\n"
        "</table>")


def variant_yaml(variant, seed=0):
    """config.yaml of an ablation cell, as permrl.ablate configures it."""
    return to_yaml(variant_config(["train.steps=30"], None, "cpu", variant, seed))


def test_policy_pairs(tmp_path):
    runs = {v: tmp_path / v for v in ("S", "S+P", "T+P", "S&T", "S+T", "S+T+P", "S+exp3")}
    for variant, run_dir in runs.items():
        make_run(run_dir, config=variant_yaml(variant))
    # T+P has no T; S+T+P pairs with S+T, not with S&T (serial), listed first
    assert policy_pairs(runs) == [("S+P", "S"), ("S+T+P", "S+T")]
    legacy = {"S_T": make_run(tmp_path / "S_T", policy=False),
              "S_T_P": make_run(tmp_path / "S_T_P")}
    assert policy_pairs(legacy) == [("S_T_P", "S_T")]
    assert policy_pairs({"S&T": runs["S&T"], "P": tmp_path / "missing"}) == []


def test_policy_pairs_are_the_ablations_uniform_twins(tmp_path):
    runs = {v: make_run(tmp_path / f"v{i}", config=variant_yaml(v))
            for i, v in enumerate(VARIANTS)}
    assert policy_pairs(runs) == [(v, uniform_twin(v)) for v in VARIANTS
                                  if variant_config([], None, "cpu", v, 0).policy == "reinforce"]


def test_run_report(tmp_path):
    run = make_run(tmp_path / "run", knn=True)
    out = write_report(run)
    assert out == run / "report.html"
    text, n = count_check(out, run)
    assert n == 5  # training curves, Fig. 5, Fig. 4, policy, Fig. 6 (one panel)
    assert "permutations: 8" in text and "dead-leaves?count=4&amp;size=8" in text
    assert "&lt;script&gt;" in text and "<script>" not in text
    assert "reinforce" in text and "<h1>" in text
    assert "http://" not in text and "https://" not in text  # self-contained


def test_run_report_without_policy_or_knn_to_other_path(tmp_path):
    run = make_run(tmp_path / "run", policy=False)
    out = write_report(run, tmp_path / "elsewhere" / "r.html")
    assert out.is_file() and not (run / "report.html").exists()
    text, n = count_check(out, run)
    assert n == 2  # training curves and Fig. 6 (B, without policy)


KNN = {"layer": "pool5", "train_source": "gallery-g", "gallery": 10, "test_source": "queries-q",
       "queries": 5, "bn_stats": "trained"}


def make_ablation(root, variants=(("S", False), ("S+P", True))):
    """Cells as permrl.ablate writes them: runs in cell_dir, cells.json, no table files."""
    cells = []
    for variant, policy in variants:
        for seed in (0, 1):
            make_run(cell_dir(root, variant, seed), policy=policy, knn=True,
                     config=variant_yaml(variant, seed))
            top1 = 0.3 + 0.02 * seed * policy  # S: 30, 30; S+P: 30, 32
            cells.append({"variant": variant, "seed": seed, "steps": 30,
                          "run_dir": f"elsewhere/{variant}/seed{seed}",  # found by cell_dir
                          "knn": {"top1": top1, "top5": 0.6 + 0.01 * seed, **KNN},
                          "puzzle_accuracy": {"spatial": 0.5 + 0.2 * seed}})
    (root / "cells.json").write_text(json.dumps(cells))
    return root


def test_ablation_report(tmp_path):
    root = make_ablation(tmp_path / "ablation")
    assert detect_kind(root) == "ablation"
    text, n = count_check(write_report(root), root)
    # Figs. 5, 6, 4 and the policy; Fig. 5 and the spatial puzzle accuracy over both seeds
    # (bands); the training curves of the 4 runs.
    assert n == 4 + 2 + 4
    bands = text.index("Every seed of every variant.")  # Fig. 5's caption over seeds
    assert "spatial task: accuracy over all |Psi| x |X_val|" in text
    summary = text.index('id="summary"')  # the ten-second summary opens the report
    assert summary < text.index('id="table"') < bands
    assert "<li>S+P vs S: no difference beyond the seeds&#x27; spread.</li>" in text or \
        "<li>S+P vs S: no difference beyond the seeds' spread.</li>" in text
    assert "<td>S+P</td>" in text and "31.0 ± 1.4" in text
    assert text.count("<details>") == 4 and "top1: 30.0%" in text
    assert "(A) S+P vs (B) S, first seed" in text


def test_ablation_table_from_cells_by_hand(tmp_path):
    """Mean ± sample std over seeds, in %, computed by hand from make_ablation's cells."""
    text = write_report(make_ablation(tmp_path / "ablation")).read_text()
    assert ("<tr><th>variant</th><th>Top1</th><th>Top5</th><th>spatial puzzle</th></tr>\n"
            "<tr><td>S</td><td>30.0 ± 0.0</td><td>60.5 ± 0.7</td><td>60.0 ± 14.1</td></tr>\n"
            "<tr><td>S+P</td><td>31.0 ± 1.4</td><td>60.5 ± 0.7</td><td>60.0 ± 14.1</td></tr>\n"
            "</table>") in text
    assert "mean ± std over 2 seed(s)); gallery gallery-g (10 items), queries queries-q" in text
    assert "Puzzle: held-out accuracy (%)" in text


def test_ablation_cell_directories(tmp_path):
    root = make_ablation(tmp_path / "ablation", variants=(("S&T", False),))
    text = write_report(root).read_text()
    assert "Run directory: <code>ablation/S_then_T/seed1</code>" in text
    assert "<td>S&amp;T</td><td>30.0 ± 0.0</td>" in text


def make_demo_json(root, names=("S+T", "S+T+P")):
    """demo.json with the keys permrl.demo writes; images Top1 45.1%, video level Top5 absent."""
    images = {"top1": 0.451, "top5": 0.7, "layer": "pool5", "bn_stats": "trained",
              "queries": 28, "gallery": 56}
    videos = {"top1": 0.2, "top5": 0.5, "frames_per_video": 10, "queries": 140, "gallery": 140,
              "video_level": {"top1": 0.25, "queries": 14, "gallery": 14}}
    rows = {name: {"images": images, "videos": videos, "puzzle_unseen": 0.123,
                   "puzzle_xval": {"spatial": 0.4}} for name in names}
    rows["random init"] = {"images": images, "videos": videos, "puzzle_unseen": 0.1}
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.json").write_text(json.dumps(
        {"train_seconds": 12.3, "steps": 30, "rows": rows, "unseen_images": 100,
         "permutations": {"spatial": 8}}))


def test_demo_tables_from_json_by_hand(tmp_path):
    root = tmp_path / "demo"
    make_ablation(root / "ablation")
    make_demo_json(root)
    text = write_report(root).read_text()
    num = '<td class="num">'
    assert (f"<tr><td>S+T</td><td>images</td>{num}45.1</td>{num}70.0</td></tr>\n"
            f"<tr><td>S+T</td><td>videos, frame level</td>{num}20.0</td>{num}50.0</td></tr>\n"
            f"<tr><td>S+T</td><td>videos, video level</td>{num}25.0</td><td>-</td></tr>") in text
    assert ("<tr><th>network</th><th>spatial X_val</th>"
            "<th>spatial, 100 unseen photo crops</th></tr>") in text
    assert f"<tr><td>random init</td><td>-</td>{num}10.0</td></tr>" in text
    assert "trained 30 steps, same seed (training and the ablation's evaluation 12 s" in text
    assert "(chance spatial 12.5%)" in text


def test_demo_report_with_nested_ablation(tmp_path):
    root = tmp_path / "demo"
    make_ablation(root / "ablation")
    make_demo_json(root)
    assert detect_kind(root) == "demo"
    text, n = count_check(write_report(root), root)
    assert n == 10 and "ablation: Results table" in text and "45.1" in text  # 2 seeds: bands


def test_demo_report(tmp_path):
    root = tmp_path / "demo"
    make_run(root / "S_T", policy=False)
    make_run(root / "S_T_P")
    make_demo_json(root, names=("Demo <b>text</b>.",))  # a network name, escaped
    text, n = count_check(write_report(root), root)
    assert "Demo &lt;b&gt;text&lt;/b&gt;." in text and "<td>45.1</td>" not in text
    assert "(A) S_T_P vs (B) S_T" in text
    assert n == 1 + 1 + 3  # Fig. 6 pair; S_T: training; S_T_P: training, Fig. 4, policy


def test_detect_kind(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect_kind(tmp_path)
    make_run(tmp_path / "r")
    assert detect_kind(tmp_path / "r") == "run" and detect_kind(tmp_path) == "demo"


def markdown_tables(markdown):
    """The cell texts of each pipe table of a markdown text, its separator row left out."""
    tables, previous = [], ""
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([c.strip() for c in line.strip("| ").split(" | ")])
        previous = line
    return tables


def html_tables(text):
    """The cell texts of each plain <table> of the report (not the key-value ones)."""
    return [[[html.unescape(re.sub(r"</?strong>", "**", c))
              for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
             for row in re.findall(r"<tr>(.*?)</tr>", table)]
            for table in re.findall(r"<table>\n(.*?)\n</table>", text, re.S)]


def test_tables_are_those_of_the_markdown_files(tmp_path):
    """The report's tables, rendered from demo.json and cells.json, are the tables of demo.md
    and table.md cell for cell, and the text around them is theirs."""
    root = tmp_path / "demo"
    make_ablation(root / "ablation")
    make_demo_json(root)
    text = write_report(root).read_text()
    demo_md = format_table(json.loads((root / "demo.json").read_text()))
    cells = json.loads((root / "ablation" / "cells.json").read_text())
    table_md, rows = summary_table(cells, load_config(cell_dir(root / "ablation", "S", 0)
                                                      / "config.yaml"))
    assert html_tables(text) == markdown_tables(demo_md) + markdown_tables(table_md)
    assert len(html_tables(text)) == 2 + 3  # demo: retrieval, puzzle; per variant, per seed, pairs
    for sentence in summary_sentences(summary_rows(cells), paired_rows(cells)):
        assert f"<li>{html.escape(sentence, quote=False)}</li>" in text
    for block in (demo_md + "\n\n" + table_md).split("\n\n"):
        if not block.startswith("|"):
            assert re.sub(r"\*\*(\w+)\*\*", r"<strong>\1</strong>",
                          html.escape(block, quote=False)) in text
