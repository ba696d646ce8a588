"""The HTML report: markdown tables, embedded figures, escaping, the three directory kinds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from permrl.report.html import detect_kind, markdown_to_html, policy_pairs, write_report

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


def make_run(run_dir, policy=True, knn=False):
    """A tiny fake spatial RUN_DIR."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(
        CONFIG.format(tasks="spatial", policy="reinforce" if policy else "uniform"))
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


def test_markdown_table_and_text_by_hand():
    md = ("Intro with `code` & a <tag>.\nsecond line\n\n"
          "- item one\n- item two\n\n"
          "| net | Top1 |\n|---|---:|\n| S+T | 45.1 |\n| a \\| b | - |\n")
    assert markdown_to_html(md) == (
        "<p>Intro with <code>code</code> &amp; a &lt;tag&gt;. second line</p>\n"
        "<ul><li>item one</li><li>item two</li></ul>\n"
        "<table>\n"
        "<tr><th>net</th><th style=\"text-align: right\">Top1</th></tr>\n"
        "<tr><td>S+T</td><td style=\"text-align: right\">45.1</td></tr>\n"
        "<tr><td>a | b</td><td style=\"text-align: right\">-</td></tr>\n"
        "</table>")
    assert markdown_to_html("| a | b |\n|---|---|\n| x | 1.5 |") == (
        "<table>\n<tr><th>a</th><th>b</th></tr>\n"
        "<tr><td>x</td><td class=\"num\">1.5</td></tr>\n</table>")
    assert markdown_to_html("# Title") == "<h3>Title</h3>"


def test_policy_pairs():
    assert policy_pairs(["S", "S+P", "T+P", "S+T", "S+T+P"]) == [("S+P", "S"), ("S+T+P", "S+T")]
    assert policy_pairs(["S_T", "S_T_P"]) == [("S_T_P", "S_T")]
    assert policy_pairs(["S&T", "P"]) == []


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


def make_ablation(root):
    cells = []
    for variant, policy in (("S", False), ("S+P", True)):
        for seed in (0, 1):
            make_run(root / variant / f"seed{seed}", policy=policy, knn=True)
            cells.append({"variant": variant, "seed": seed,
                          "run_dir": f"elsewhere/{variant}/seed{seed}",  # found by name
                          "knn": {"top1": 0.3, "top5": 0.6}})
    (root / "cells.json").write_text(json.dumps(cells))
    (root / "table.md").write_text("| variant | Top1 |\n|---|---|\n| S+P | 31.0 +- 1 |\n")
    return root


def test_ablation_report(tmp_path):
    root = make_ablation(tmp_path / "ablation")
    assert detect_kind(root) == "ablation"
    text, n = count_check(write_report(root), root)
    assert n == 4 + 4  # Figs. 5, 6, 4 and the policy, then training curves of the 4 runs
    assert "<td>S+P</td>" in text and "31.0 +- 1" in text
    assert text.count("<details>") == 4 and "top1: 30.0%" in text
    assert "(A) S+P vs (B) S, first seed" in text


def test_demo_report_with_nested_ablation(tmp_path):
    root = tmp_path / "demo"
    make_ablation(root / "ablation")
    (root / "demo.md").write_text("| network | Top1 |\n|---|---|\n| S+T | 45.1 |\n")
    assert detect_kind(root) == "demo"
    text, n = count_check(write_report(root), root)
    assert n == 8 and "ablation: Results table" in text and "45.1" in text


def test_demo_report(tmp_path):
    root = tmp_path / "demo"
    make_run(root / "S_T", policy=False)
    make_run(root / "S_T_P")
    (root / "demo.md").write_text("Demo <b>text</b>.\n\n| network | Top1 |\n|---|---|\n"
                                  "| S+T | 45.1 |\n")
    text, n = count_check(write_report(root), root)
    assert "Demo &lt;b&gt;text&lt;/b&gt;." in text and "<td>45.1</td>" not in text
    assert "(A) S_T_P vs (B) S_T" in text
    assert n == 1 + 1 + 3  # Fig. 6 pair; S_T: training; S_T_P: training, Fig. 4, policy


def test_detect_kind(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect_kind(tmp_path)
    make_run(tmp_path / "r")
    assert detect_kind(tmp_path / "r") == "run" and detect_kind(tmp_path) == "demo"
