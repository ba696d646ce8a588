"""Figures of a run directory: each writes a readable PNG, or returns None without its data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from permrl.report import figures as F

CONFIG = """preset: cpu
seed: 0
tasks:
- spatial
- temporal
policy: {policy}
data:
  images: dead-leaves?count=4&size=8
  videos: demo-videos?count=4
spatial:
  permutations: 8
temporal:
  permutations: 8
train:
  steps: 40
"""


def make_run(run_dir, policy=True, knn=False, errors=True, steps=(10, 20, 30, 40)):
    """A tiny fake RUN_DIR: config.yaml, metrics.jsonl and permutation_errors.npz."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(CONFIG.format(policy="reinforce" if policy
                                                       else "uniform"))
    records = []
    for i, step in enumerate(steps):
        records.append({"step": step, "lr": 1e-3, "samples_per_s": 100.0, "skipped": 0,
                        "spatial_loss": 2.0 - 0.1 * i, "spatial_accuracy": 0.1 + 0.05 * i,
                        "temporal_loss": 2.1 - 0.05 * i, "temporal_accuracy": 0.12})
        if step % 20 == 0:
            records.append({"step": step, "spatial_val_accuracy": 0.1 + 0.03 * i,
                            "spatial_val_error": 0.9 - 0.03 * i, "temporal_val_accuracy": 0.12,
                            "temporal_val_error": 0.88})
        if policy:
            for task in ("spatial", "temporal"):
                record = {"step": step, "task": task, "episode": i, "group_sizes": [3, 3, 2],
                          "group_medians": [0.2, 0.5, 0.8], "policy_probs": [0.5, 0.3, 0.2],
                          "chosen_groups": [5, 3, 2], "chosen_quartiles": [4 - i % 4, 2, 2, 2],
                          "error_before": 0.9, "error_after": 0.88, "extrapolated_error": None}
                if i:
                    record |= {"extrapolated_error": 0.89, "reward": 0.01 * (-1) ** i,
                               "baseline": 0.001, "advantage": 0.009, "entropy": 1.0}
                records.append(record)
        if knn:
            records.append({"step": step, "knn_top1": 0.2 + 0.01 * i, "knn_top5": 0.5})
    with open(run_dir / "metrics.jsonl", "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    if errors:
        rng = np.random.default_rng(0)
        arrays = {}
        for task in ("spatial", "temporal"):
            arrays[f"{task}_steps"] = np.asarray(steps)
            arrays[f"{task}_errors"] = rng.uniform(0, 1, (len(steps), 8)).astype(np.float16)
        np.savez(run_dir / "permutation_errors.npz", **arrays)
    return run_dir


def check_png(path, min_width=500, min_height=300):
    assert path is not None and path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        assert image.width <= 2500 and image.height <= 2500
        return image.size


def test_read_metrics_skips_broken_lines_and_missing_file(tmp_path):
    assert F.read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n\nnot json\n{"step": 2, "a"')
    assert F.read_metrics(tmp_path) == [{"step": 1}]


def test_training_curves(tmp_path):
    run = make_run(tmp_path / "run")
    size = check_png(F.plot_training_curves(run, tmp_path / "out" / "train.png"))
    assert size[0] > size[1]
    assert F.plot_training_curves(tmp_path / "empty", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_fig4_quartiles_and_policy(tmp_path):
    run = make_run(tmp_path / "run")
    check_png(F.plot_fig4_quartiles(run, tmp_path / "fig4.png", task="temporal"))
    check_png(F.plot_policy(run, tmp_path / "policy.png", "spatial"))
    uniform = make_run(tmp_path / "uniform", policy=False)
    assert F.plot_fig4_quartiles(uniform, tmp_path / "fig4_none.png") is None
    assert F.plot_policy(uniform, tmp_path / "policy_none.png", "spatial") is None
    assert not list(tmp_path.glob("*_none.png"))


def test_fig5_retrieval(tmp_path):
    with_knn = make_run(tmp_path / "a", knn=True)
    curve = F.retrieval_curve(with_knn)
    assert [s for s, _ in curve] == [10, 20, 30, 40]
    assert curve[0][1] == pytest.approx(0.2)
    assert F.retrieval_curve(make_run(tmp_path / "b")) == []
    curves = {"S+T": curve, "S+T+P": [(s, v + 0.05) for s, v in curve], "S": []}
    check_png(F.plot_fig5_retrieval(curves, tmp_path / "fig5.png", reference={"random": 0.2}))
    assert F.plot_fig5_retrieval({}, tmp_path / "x.png") is None
    assert F.plot_fig5_retrieval({"S": []}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_sort_rows_by_mean_by_hand():
    errors = np.array([[0.9, 0.7],    # mean 0.8
                       [0.1, 0.3],    # mean 0.2
                       [0.5, 0.5],    # mean 0.5
                       [0.0, 0.4]])   # mean 0.2, tie with row 1: stable, row 1 first
    rows, order = F.sort_rows_by_mean(errors)
    assert order.tolist() == [1, 3, 2, 0]
    assert order.tolist() == np.argsort(errors.mean(axis=1), kind="stable").tolist()
    np.testing.assert_array_equal(rows, errors[[1, 3, 2, 0]])
    assert np.all(np.diff(rows.mean(axis=1)) >= 0)


def test_fig6_two_panels_one_panel_or_none(tmp_path):
    with_policy = make_run(tmp_path / "S_P")
    without = make_run(tmp_path / "S", policy=False, steps=(20, 40))
    two = check_png(F.plot_fig6_permutation_errors(with_policy, without, tmp_path / "two.png"))
    one = check_png(F.plot_fig6_permutation_errors(None, without, tmp_path / "one.png",
                                                   task="temporal"))
    assert two[0] > one[0]
    no_errors = make_run(tmp_path / "no_errors", errors=False)
    assert F.plot_fig6_permutation_errors(no_errors, None, tmp_path / "none.png") is None
    assert F.plot_fig6_permutation_errors(with_policy, without, tmp_path / "none.png",
                                          task="audio") is None
    assert not (tmp_path / "none.png").exists()


def test_fig3_neighbours(tmp_path):
    rng = np.random.default_rng(0)
    queries = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(2)]
    neighbours = [[rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(5)]
                  for _ in range(2)]
    hits = [[True, False, True, False, False], [False] * 5]
    width, height = check_png(F.plot_fig3_neighbours(queries, neighbours, tmp_path / "f3.png",
                                                     titles=["cat", "dog"], hits=hits))
    assert width > height  # 6 columns, 2 rows
    assert F.plot_fig3_neighbours([], [], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.fixture
def kept_figures(monkeypatch):
    """The figures a plot_* call saves."""
    kept, save = [], F._save
    monkeypatch.setattr(F, "_save", lambda fig, *args, **kw: (kept.append(fig),
                                                              save(fig, *args, **kw))[1])
    return kept


def text_outside(fig) -> list[str]:
    """Titles, captions, axis labels and legend texts whose drawn extent leaves the figure
    (tick labels are left out: matplotlib keeps undrawn ones for ticks outside the view)."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    texts = list(fig.texts) + ([fig._suptitle] if fig._suptitle else [])
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        legend = ax.get_legend()
        texts += list(legend.get_texts()) if legend else []
    outside = []
    for text in texts:
        if not text.get_visible() or not text.get_text().strip():
            continue
        extent = text.get_window_extent(renderer)
        if (extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1
                or extent.y1 > box.y1 + 1):
            outside.append(text.get_text())
    return outside


def test_no_figure_text_is_clipped_even_for_one_task_and_a_long_name(tmp_path, kept_figures):
    """A one-task run is a narrow figure: titles and captions wrap instead of running off."""
    run = make_run(tmp_path / "a_rather_long_run_directory_name_for_a_narrow_figure" / "seed0",
                   steps=(10, 20))
    config = (run / "config.yaml").read_text().replace("- temporal\n", "")
    (run / "config.yaml").write_text(config)
    F.plot_training_curves(run, tmp_path / "train.png")
    F.plot_fig4_quartiles(run, tmp_path / "fig4.png")
    F.plot_policy(run, tmp_path / "policy.png")
    F.plot_fig5_retrieval({"S": [(10, 0.2), (20, 0.3)]}, tmp_path / "fig5.png")
    F.plot_fig6_permutation_errors(run, None, tmp_path / "fig6.png")
    assert len(kept_figures) == 5
    for fig in kept_figures:
        assert text_outside(fig) == [], fig.texts[-1].get_text()


def test_episode_axes_have_whole_ticks_and_fig5_styles_by_config(tmp_path, kept_figures):
    run = make_run(tmp_path / "run", steps=(10, 20, 30))  # three episodes: 0, 1, 2
    F.plot_policy(run, tmp_path / "policy.png")
    F.plot_fig4_quartiles(run, tmp_path / "fig4.png")
    for fig in kept_figures:
        for ax in fig.axes:
            if ax.get_xlabel() == "policy episode":
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), ticks
    kept_figures.clear()
    # The style comes from the runs' configs, never from their names.
    F.plot_fig5_retrieval({"mine": [(1, 0.2), (2, 0.3)], "S+T+P": [(1, 0.1), (2, 0.2)]},
                          tmp_path / "fig5.png", with_policy={"mine"})
    styles = {line.get_label(): line.get_linestyle() for line in kept_figures[0].axes[0].lines}
    assert styles == {"mine": "-", "S+T+P": "--"}


def test_fig6_with_one_state_is_a_narrow_column(tmp_path, kept_figures):
    run = make_run(tmp_path / "run", steps=(10,))
    F.plot_fig6_permutation_errors(run, None, tmp_path / "fig6.png")
    ax = kept_figures[0].axes[0]
    assert ax.get_xlim() == (-0.5, F.MIN_FIG6_COLUMNS - 0.5)
    assert any("only 1 state" in t.get_text() for t in ax.texts)


def test_seed_band_by_hand(tmp_path):
    """Mean, lowest and highest seed at the steps all seeds recorded (step 30: seed 1 only)."""
    runs = [[(10, 0.2), (20, 0.4)], [(10, 0.4), (20, 0.5), (30, 0.9)], [(20, 0.6), (10, 0.0)]]
    steps, mean, low, high = F.seed_band(runs)
    assert steps.tolist() == [10, 20]
    assert mean.tolist() == pytest.approx([0.2, 0.5])
    assert low.tolist() == [0.0, 0.4] and high.tolist() == [0.4, 0.6]
    out = F.plot_seed_bands({"S": {"S": runs, "S+P": runs[:2]}, "T": {"T": []}},
                            tmp_path / "b.png", metric="kNN Top-1", title="t",
                            with_policy={"S+P"}, chance=1.0)
    assert out is not None and out.stat().st_size > 1000
    assert F.plot_seed_bands({"T": {"T": []}}, tmp_path / "none.png", metric="m",
                             title="t") is None


def test_importing_the_figures_never_switches_the_callers_backend():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import permrl.report.figures, "
            "permrl.landscape.report, permrl.report.html; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
