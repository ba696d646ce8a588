"""Figures of a training run (matplotlib's object API, no pyplot: importing this module never
switches the caller's backend): one PNG per function.

Every ``plot_*`` function writes one PNG and returns its path, or returns None (and writes no
file) when the data it needs is absent from the run directory. The figures follow the paper
(Buechler, Brattoli, Ommer, ECCV 2018):

- Fig. 3 (:func:`plot_fig3_neighbours`): queries and their top-5 nearest neighbours.
- Fig. 4 (:func:`plot_fig4_quartiles`): per episode, the share of chosen permutations in each
  difficulty quartile (quartile 0 = easiest, by validation error at the episode's start).
- Fig. 5 (:func:`plot_fig5_retrieval`): kNN Top-1 over training steps, one line per variant;
  over several seeds (:func:`plot_seed_bands`) the mean with a band from the lowest to the
  highest seed, as for the held-out puzzle accuracy over training.
- Fig. 6 (:func:`plot_fig6_permutation_errors`): per-permutation validation error over time,
  rows sorted by mean error, (A) with the policy and (B) without.

Plus :func:`plot_training_curves` (loss, training and held-out accuracy) and
:func:`plot_policy` (policy probabilities per group over episodes, and the reward).

Why this long: one independent function per figure of the paper (Fig. 3-6) and of a run;
they share the helpers at the top and nothing else.
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from permrl.config import TASKS
from permrl.run_dir import read_metrics

DPI = 120
QUARTILE_LABELS = ("easiest 25%", "2nd 25%", "3rd 25%", "hardest 25%")
QUARTILE_COLOURS = ("#1a9850", "#a6d96a", "#fdae61", "#d73027")  # green (easy) .. red (hard)
TASK_COLOURS = {"spatial": "#1f77b4", "temporal": "#ff7f0e"}


# Reading a run directory ------------------------------------------------------------------
def read_config(run_dir: str | Path) -> dict[str, Any]:
    """RUN_DIR/config.yaml as a dict ({} if absent or unreadable)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def run_tasks(run_dir: str | Path, records: list[dict] | None = None) -> list[str]:
    """Tasks of a run: from config.yaml, else those with loss records in metrics.jsonl."""
    tasks = read_config(run_dir).get("tasks")
    if isinstance(tasks, str):
        tasks = [tasks]
    if tasks:
        return [str(t) for t in tasks]
    records = read_metrics(run_dir) if records is None else records
    return [t for t in TASKS if any(f"{t}_loss" in r for r in records)]


def episode_records(records: list[dict], task: str) -> list[dict]:
    """Policy episode records of one task, in file order."""
    return [r for r in records if r.get("task") == task and "episode" in r]


def retrieval_curve(run_dir: str | Path, key: str = "knn_top1") -> list[tuple[int, float]]:
    """(step, Top-1) of every retrieval-over-training record of a run, sorted by step."""
    points = [(int(r["step"]), float(r[key])) for r in read_metrics(run_dir)
              if "step" in r and r.get(key) is not None]
    return sorted(points)


def load_permutation_errors(run_dir: str | Path, task: str
                            ) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps (T,), errors (T, |Psi|) float32) from RUN_DIR/permutation_errors.npz, or None."""
    path = Path(run_dir) / "permutation_errors.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        if f"{task}_errors" not in data:
            return None
        errors = np.asarray(data[f"{task}_errors"], dtype=np.float32)
        steps = (np.asarray(data[f"{task}_steps"]) if f"{task}_steps" in data
                 else np.arange(len(errors)))
    if errors.ndim != 2 or errors.size == 0:
        return None
    return steps, errors


def sort_rows_by_mean(errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a (rows, cols) array sorted by their mean, ascending (stable on ties).

    Returns (sorted array, order) with ``sorted = errors[order]``: row 0 has the lowest mean.
    """
    errors = np.asarray(errors)
    order = np.argsort(errors.mean(axis=1), kind="stable")
    return errors[order], order


# Helpers ----------------------------------------------------------------------------------
HEADER_IN = 0.62  # inches above the axes for a one-line title and a one-line caption
TITLE_LINE_IN = 0.24  # inches per extra line of a wrapped title (13 pt)
CAPTION_LINE_IN = 0.17  # ... and of a wrapped caption (9 pt)


def _wrapped(fig: Figure, text: str, **style: Any) -> list[str]:
    """`text` broken into lines that fit the figure's width, measured with its renderer."""
    renderer = fig.canvas.get_renderer()
    limit = 0.96 * fig.get_figwidth() * fig.dpi
    width = len(text)
    while True:
        lines = textwrap.wrap(text, width) or [""]
        probe = fig.text(0, 0, "\n".join(lines), **style)
        fits = probe.get_window_extent(renderer).width <= limit
        probe.remove()
        if fits or width <= 20:
            return lines
        width = int(width * 0.9)


def _title(fig: Figure, title: str, subtitle: str) -> None:
    """Bold title and a grey caption at fixed distances (inches) from the top, wrapped to the
    figure's width; each extra line makes the figure taller (the axes keep their place)."""
    title_style = {"fontsize": 13, "fontweight": "bold"}
    sub_style = {"fontsize": 9, "color": "#444444"}
    titles, subs = _wrapped(fig, title, **title_style), _wrapped(fig, subtitle, **sub_style)
    extra = TITLE_LINE_IN * (len(titles) - 1) + CAPTION_LINE_IN * (len(subs) - 1)
    if extra:
        old = fig.get_figheight()
        fig.set_figheight(old + extra)
        for ax in fig.axes:  # fixed layouts: the axes stay where they were, in inches
            box = ax.get_position()
            ax.set_position((box.x0, box.y0 * old / (old + extra), box.width,
                             box.height * old / (old + extra)))
    fig.permrl_header_in = HEADER_IN + extra  # read by _save's tight layout
    height = fig.get_figheight()
    fig.suptitle("\n".join(titles), y=1 - 0.06 / height, va="top", **title_style)
    caption_top = 0.36 + TITLE_LINE_IN * (len(titles) - 1)
    fig.text(0.5, 1 - caption_top / height, "\n".join(subs), ha="center", va="top", **sub_style)


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas, without pyplot: no global figure state to close, and
    the caller's matplotlib backend is never switched."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _subplots(*grid: int, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    fig = new_figure(figsize)
    return fig, fig.subplots(*grid, **options)


def _save(fig: Figure, out_png: str | Path, tight: bool = True) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        header = getattr(fig, "permrl_header_in", HEADER_IN)
        fig.tight_layout(pad=0.6, h_pad=1.2, w_pad=1.2,
                         rect=(0, 0, 1, 1 - header / fig.get_figheight()))
    fig.savefig(out, dpi=DPI)
    return out


def run_label(run_dir: str | Path) -> str:
    path = Path(run_dir)
    return path.name if not path.name.startswith("seed") else f"{path.parent.name}/{path.name}"


def _percent(values: Sequence[float]) -> np.ndarray:
    """Values in % (fractions in 0..1 are scaled by 100; values already above 1 are kept)."""
    values = np.asarray(values, dtype=np.float64)
    return values * 100 if values.size and np.nanmax(np.abs(values)) <= 1.0 else values


def _chance(run_dir: str | Path, task: str) -> float | None:
    n = read_config(run_dir).get(task, {})
    n = n.get("permutations") if isinstance(n, dict) else None
    return 100.0 / n if isinstance(n, int) and n > 0 else None


def _episode_axis(ax, episodes: list[dict]) -> np.ndarray:
    """x = episode ordinal (0, 1, ... in file order; the records' own ``episode`` field can
    repeat, e.g. a first episode without an update), with the training step on a top axis."""
    x = np.arange(len(episodes))
    steps = [r.get("step") for r in episodes]
    if all(isinstance(s, int | float) for s in steps):
        top = ax.twiny()
        top.set_xlim(ax.get_xlim())
        idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), 6)).round().astype(int))
        top.set_xticks(idx)
        top.set_xticklabels([str(int(steps[i])) for i in idx], fontsize=7, color="#555555")
        top.set_xlabel("training step at the episode's end", fontsize=8, color="#555555")
    return x


# Training curves --------------------------------------------------------------------------
def plot_training_curves(run_dir: str | Path, out_png: str | Path) -> Path | None:
    """Per task: training loss (top) and training / held-out accuracy (bottom) vs step."""
    records = read_metrics(run_dir)
    tasks = [t for t in run_tasks(run_dir, records)
             if any(f"{t}_loss" in r or f"{t}_val_accuracy" in r for r in records)]
    if not tasks:
        return None
    fig, axes = _subplots(2, len(tasks), figsize=(5.2 * len(tasks), 6.6), squeeze=False)
    for col, task in enumerate(tasks):
        colour = TASK_COLOURS.get(task, "#1f77b4")
        train = [r for r in records if f"{task}_loss" in r and "step" in r]
        val = [r for r in records if f"{task}_val_accuracy" in r and "step" in r]
        ax = axes[0, col]
        if train:
            ax.plot([r["step"] for r in train], [r[f"{task}_loss"] for r in train],
                    color=colour, lw=1.5, label="training loss")
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no training records", ha="center", transform=ax.transAxes)
        ax.set_title(f"{task} task: loss")
        ax.set_xlabel("training step")
        ax.set_ylabel("cross-entropy loss (nats)")
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        train_acc = [r for r in train if f"{task}_accuracy" in r]
        if train_acc:
            ax.plot([r["step"] for r in train_acc],
                    _percent([r[f"{task}_accuracy"] for r in train_acc]),
                    color=colour, lw=1.2, alpha=0.8, label="training batches")
        if val:
            ax.plot([r["step"] for r in val], _percent([r[f"{task}_val_accuracy"] for r in val]),
                    color="black", marker="o", ms=4, lw=1.5, label="held-out (X_val)")
        chance = _chance(run_dir, task)
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance ({chance:.2g}%)")
        ax.set_title(f"{task} task: accuracy")
        ax.set_xlabel("training step")
        ax.set_ylabel("permutation accuracy (%)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    _title(fig, f"Training curves: {run_label(run_dir)}",
           "Loss and accuracy of the permutation classifier on training batches (lines) and "
           "on held-out puzzles X_val (dots)")
    return _save(fig, out_png)


# Fig. 4 -----------------------------------------------------------------------------------
def plot_fig4_quartiles(run_dir: str | Path, out_png: str | Path,
                        task: str = "spatial") -> Path | None:
    """Paper Fig. 4: share of chosen permutations per difficulty quartile, per episode; below,
    the sizes of the k-means groups the policy chose among (hardest group at the bottom)."""
    episodes = [r for r in episode_records(read_metrics(run_dir), task)
                if r.get("chosen_quartiles") and sum(r["chosen_quartiles"]) > 0]
    if not episodes:
        return None
    counts = np.asarray([r["chosen_quartiles"][:4] for r in episodes], dtype=np.float64)
    shares = 100 * counts / counts.sum(axis=1, keepdims=True)
    x = np.arange(len(episodes))
    sized = [r for r in episodes if r.get("group_sizes")]
    fig, axes = _subplots(2 if sized else 1, 1, sharex=True, squeeze=False,
                             figsize=(max(6.5, min(14.0, 0.3 * len(x) + 4)),
                                      7.4 if sized else 4.8),
                             gridspec_kw={"height_ratios": (3, 2)} if sized else None)
    ax = axes[0, 0]
    bottom = np.zeros(len(x))
    width = 0.85 if len(x) > 1 else 0.5
    for q in range(4):
        ax.bar(x, shares[:, q], bottom=bottom, width=width, color=QUARTILE_COLOURS[q],
               label=QUARTILE_LABELS[q], edgecolor="white", linewidth=0.3)
        bottom += shares[:, q]
    for level in (25, 50, 75):
        ax.axhline(level, color="black", ls=":", lw=0.8, alpha=0.6)
    ax.set_xlim(x.min() - 0.6, x.max() + 0.6)
    ax.set_ylim(0, 100)
    ax.set_ylabel("chosen permutations (%)")
    _episode_axis(ax, episodes)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5),
              fontsize=8, title="difficulty quartile", title_fontsize=8)
    if sized:
        ax2 = axes[1, 0]
        n_groups = max(len(r["group_sizes"]) for r in episodes)
        sizes = np.zeros((len(episodes), n_groups))
        for k, r in enumerate(episodes):
            sizes[k, : len(r["group_sizes"])] = r["group_sizes"]
        sizes = 100 * sizes / sizes.sum(axis=1, keepdims=True)
        colours = colormaps["RdYlGn"](np.linspace(0.05, 0.95, n_groups))
        bottom = np.zeros(len(x))
        for g in range(n_groups):
            ax2.bar(x, sizes[:, g], bottom=bottom, width=width, color=colours[g],
                    edgecolor="white", linewidth=0.3,
                    label="hardest group" if g == 0 else "easiest" if g == n_groups - 1
                    else None)
            bottom += sizes[:, g]
        ax2.set_ylim(0, 100)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel("group sizes (% of Psi)")
        ax2.set_xlabel("policy episode")
        ax2.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                   title="k-means groups", title_fontsize=8)
    else:
        ax.set_xlabel("policy episode")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _title(fig, f"Fig. 4: permutations chosen by the policy ({task}, {run_label(run_dir)})",
           "Quartiles by validation error at the episode's start (ties: softmax ratio); "
           "dotted = uniform (25% each)")
    return _save(fig, out_png)


# Fig. 5 -----------------------------------------------------------------------------------
def _variant_axes(ax, metric: str, references: dict[str, float]) -> None:
    """Labels, grid and the variant legend of a curves-over-training figure, with a dotted
    horizontal line per reference value (random init, chance)."""
    for name, value in references.items():
        ax.axhline(value, color="grey", ls=":", lw=1.2)
        ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), ha="right",
                    va="bottom", fontsize=8, color="#555555")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="variant",
              title_fontsize=8)


def plot_fig5_retrieval(curves: dict[str, list[tuple[int, float]]], out_png: str | Path,
                        reference: dict[str, float] | None = None,
                        metric: str = "kNN Top-1",
                        with_policy: Collection[str] = ()) -> Path | None:
    """Paper Fig. 5: kNN Top-1 (%) over training steps, one line per variant.

    ``curves`` maps a variant name to (step, top1) points (fractions or %); ``reference``
    optionally maps a name (e.g. "random init") to a horizontal line; the curves named in
    ``with_policy`` (runs whose config has an adaptive sampler) are solid, the others dashed.
    """
    curves = {name: sorted(points) for name, points in curves.items() if points}
    if not curves:
        return None
    scale = 100.0 if all(v <= 1.0 for pts in curves.values() for _, v in pts) else 1.0
    fig, ax = _subplots(figsize=(7.5, 4.6))
    cmap = colormaps["tab10"]
    for i, (name, points) in enumerate(curves.items()):
        steps = [s for s, _ in points]
        values = [v * scale for _, v in points]
        ax.plot(steps, values, marker="o", ms=3.5, lw=1.6, color=cmap(i % 10), label=name,
                ls="-" if name in with_policy else "--")
    _variant_axes(ax, metric, {name: value * 100 if value <= 1.0 and scale == 100.0 else value
                               for name, value in (reference or {}).items()})
    _title(fig, f"Fig. 5: {metric} nearest-neighbour retrieval during training",
           "Cosine similarity of pool5 features, test items as queries; solid = an adaptive "
           "sampler (config policy other than uniform), dashed = uniform")
    return _save(fig, out_png)


def seed_band(runs: Sequence[Sequence[tuple[int, float]]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, min, max) over seeds at the steps every seed recorded."""
    common = sorted(set.intersection(*(set(s for s, _ in points) for points in runs)))
    values = np.array([[dict(points)[s] for s in common] for points in runs], dtype=np.float64)
    return np.array(common), values.mean(0), values.min(0), values.max(0)


def plot_seed_bands(panels: dict[str, dict[str, Sequence[Sequence[tuple[int, float]]]]],
                    out_png: str | Path, *, metric: str, title: str,
                    with_policy: Collection[str] = (), chance: float | None = None
                    ) -> Path | None:
    """One panel per group of variants (e.g. those sharing a uniform twin: S, S+P, S+exp3),
    one line per variant (the mean over its seeds) and a band from the lowest to the highest
    seed at each step. ``panels`` maps a panel title to {variant: one list of (step, value)
    points per seed} (fractions or %); solid = an adaptive sampler, dashed = uniform; a
    variant keeps its colour in every panel."""
    bands = {title_: {name: (seed_band(runs), len(runs)) for name, runs in series.items()
                      if runs and all(runs) and len(seed_band(runs)[0])}
             for title_, series in panels.items()}
    bands = {t: b for t, b in bands.items() if b}
    if not bands:
        return None
    names = list(dict.fromkeys(n for b in bands.values() for n in b))
    scale = 100.0 if all(band[3].max() <= 1.0 for b in bands.values()
                         for band, _ in b.values()) else 1.0
    fig, axes = _subplots(1, len(bands), figsize=(4.6 * len(bands) + 1.6, 4.6),
                             squeeze=False, sharey=True)
    cmap = colormaps["tab10"]
    for ax, (panel, series) in zip(axes[0], bands.items(), strict=True):
        for name, ((steps, mean, low, high), seeds) in series.items():
            colour = cmap(names.index(name) % 10)
            ax.fill_between(steps, low * scale, high * scale, color=colour, alpha=0.18, lw=0)
            ax.plot(steps, mean * scale, marker="o", ms=3, lw=1.6, color=colour,
                    ls="-" if name in with_policy else "--", label=f"{name} ({seeds} seeds)")
        _variant_axes(ax, metric, {} if chance is None else {"chance": chance})
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(panel, fontsize=10)
    _title(fig, title, "Line: mean over seeds; band: lowest to highest seed; solid = an "
           "adaptive sampler, dashed = uniform")
    return _save(fig, out_png)


# Fig. 6 -----------------------------------------------------------------------------------
MIN_FIG6_COLUMNS = 4  # a panel is at least this many states wide
def _step_ticks(ax, steps: np.ndarray) -> None:
    n = len(steps)
    idx = np.unique(np.linspace(0, n - 1, min(n, 6)).round().astype(int))
    ax.set_xticks(idx)
    ax.set_xticklabels([str(int(s)) for s in steps[idx]], fontsize=8)


def plot_fig6_permutation_errors(with_policy_run: str | Path | None,
                                 without_policy_run: str | Path | None,
                                 out_png: str | Path, task: str = "spatial") -> Path | None:
    """Paper Fig. 6: per-permutation validation error over time, rows sorted by mean error.

    One heatmap per available run, (A) with the policy and (B) without; each panel's rows
    (permutations) are sorted by that panel's mean error, lowest at the top. Columns are the
    recorded states in order (x tick labels give their training step).
    """
    panels = []
    for letter, label, run in (("A", "with policy", with_policy_run),
                               ("B", "without policy", without_policy_run)):
        data = load_permutation_errors(run, task) if run is not None else None
        if data is not None:
            panels.append((letter, label, run, *data))
    if not panels:
        return None
    width, height = max(8.0, 5.2 * len(panels) + 1.4), 5.6
    fig, axes = _subplots(1, len(panels), figsize=(width, height), squeeze=False)
    panel_right = 1 - 1.3 / width
    fig.subplots_adjust(left=0.75 / width, right=panel_right, bottom=0.75 / height,
                        top=1 - (HEADER_IN + 0.3) / height, wspace=0.9 / 5.2)
    image = None
    for ax, (letter, label, run, steps, errors) in zip(axes[0], panels, strict=True):
        rows, _ = sort_rows_by_mean(errors.T)  # (|Psi|, T)
        image = ax.imshow(rows, aspect="auto", interpolation="nearest", cmap="viridis",
                          vmin=0.0, vmax=1.0)
        _step_ticks(ax, steps)
        if len(steps) < MIN_FIG6_COLUMNS:  # a state or two: narrow columns, not one wide band
            ax.set_xlim(-0.5, MIN_FIG6_COLUMNS - 0.5)
            ax.text((len(steps) + MIN_FIG6_COLUMNS - 1) / 2, rows.shape[0] / 2,
                    f"only {len(steps)} state(s)\nrecorded", ha="center", va="center",
                    fontsize=9, color="#555555")
        ax.set_xlabel(f"validation state ({len(steps)} in all; tick = training step)")
        ax.set_ylabel(f"permutation, sorted by mean error ({rows.shape[0]} rows)")
        ax.set_title(f"({letter}) {label}: {run_label(run)}", fontsize=10)
    cax = fig.add_axes((panel_right + 0.25 / width, 0.75 / height, 0.2 / width,
                        1 - (HEADER_IN + 1.05) / height))
    cbar = fig.colorbar(image, cax=cax)
    cbar.set_label("validation error (0..1)")
    _title(fig, f"Fig. 6: per-permutation validation error over time ({task} task)",
           "Each row is one permutation (lowest mean error at the top); "
           "colour = its error on X_val at that state")
    return _save(fig, out_png, tight=False)


# Fig. 3 -----------------------------------------------------------------------------------
def plot_fig3_neighbours(query_images: Sequence[np.ndarray],
                         neighbour_images: Sequence[Sequence[np.ndarray]],
                         out_png: str | Path, titles: Sequence[Any] | None = None,
                         hits: Sequence[Sequence[bool]] | None = None) -> Path | None:
    """Paper Fig. 3: one row per query: the query, then its nearest neighbours (Top-1 first).

    Images are uint8 (H, W, 3) (or (H, W) grey) arrays. ``titles``: per row either one string
    (the query's label) or a list with one string per cell (query first). ``hits[i][j]`` marks
    neighbour j of query i as the same class (green border) or not (red border).
    """
    if len(query_images) == 0:
        return None
    n_rows = len(query_images)
    n_cols = 1 + max((len(n) for n in neighbour_images), default=0)
    width, height = 1.7 * n_cols + 0.3, 1.95 * n_rows + HEADER_IN + 0.1
    fig, axes = _subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.1 / width, right=1 - 0.1 / width, bottom=0.1 / height,
                        top=1 - (HEADER_IN + 0.25) / height, wspace=0.08,
                        hspace=0.3 / 1.65)
    for i in range(n_rows):
        neighbours = list(neighbour_images[i]) if i < len(neighbour_images) else []
        row_titles = titles[i] if titles is not None and i < len(titles) else None
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = query_images[i] if j == 0 else (
                neighbours[j - 1] if j - 1 < len(neighbours) else None)
            if image is None:
                ax.axis("off")
                continue
            image = np.asarray(image)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            colour, width = "black", 1.0
            if j > 0 and hits is not None and i < len(hits) and j - 1 < len(hits[i]):
                colour, width = ("#1a9850", 4.0) if hits[i][j - 1] else ("#d73027", 4.0)
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width)
            if isinstance(row_titles, str):
                label = f"query: {row_titles}" if j == 0 else f"Top-{j}"
            elif row_titles is not None and j < len(row_titles):
                label = str(row_titles[j])
            else:
                label = "query" if j == 0 else f"Top-{j}"
            ax.set_title(label, fontsize=8)
    subtitle = "Query (left) and its nearest training images by cosine similarity of pool5 " \
        "features, Top-1 first"
    if hits is not None:
        subtitle += "; green = same class, red = other class"
    _title(fig, "Fig. 3: nearest neighbours", subtitle)
    return _save(fig, out_png, tight=False)


# Policy -----------------------------------------------------------------------------------
def plot_policy(run_dir: str | Path, out_png: str | Path, task: str = "spatial") -> Path | None:
    """Policy probability of each group (hardest group first) per episode, and the reward."""
    episodes = [r for r in episode_records(read_metrics(run_dir), task) if r.get("policy_probs")]
    if not episodes:
        return None
    n_groups = max(len(r["policy_probs"]) for r in episodes)
    probs = np.full((n_groups, len(episodes)), np.nan)
    for k, r in enumerate(episodes):
        probs[: len(r["policy_probs"]), k] = r["policy_probs"]
    x = np.arange(len(episodes))
    rewarded = [(xi, r) for xi, r in zip(x, episodes, strict=True) if r.get("reward") is not None]
    n_panels = 2 if rewarded else 1
    bottom = 0.95 if rewarded else 0.55  # (the reward panel's legend goes under its axis)
    width, height = max(7.5, min(14.0, 0.25 * len(x) + 5.5)), 3.5 * n_panels + bottom + 0.45
    fig = new_figure((width, height))
    grid = fig.add_gridspec(n_panels, 2, width_ratios=(1, 0.025), wspace=0.03, hspace=0.25,
                            left=1.1 / width, right=1 - 0.8 / width, bottom=bottom / height,
                            top=1 - (HEADER_IN + 0.55) / height)
    ax = fig.add_subplot(grid[0, 0])
    vmax = max(float(np.nanmax(probs)), 2.0 / n_groups)
    image = ax.imshow(probs, aspect="auto", interpolation="nearest", cmap="magma", vmin=0.0,
                      vmax=vmax, extent=(x.min() - 0.5, x.max() + 0.5, n_groups - 0.5, -0.5))
    ax.set_yticks(range(n_groups))
    ax.set_yticklabels([f"{g}" + (" (hardest)" if g == 0 else " (easiest)" if g == n_groups - 1
                                  else "") for g in range(n_groups)], fontsize=7)
    ax.set_ylabel("permutation group (hardest first)")
    if rewarded:
        ax.tick_params(labelbottom=False)
    else:
        ax.set_xlabel("policy episode")
    cbar = fig.colorbar(image, cax=fig.add_subplot(grid[0, 1]))
    cbar.set_label(f"policy probability (uniform = {1 / n_groups:.2f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # episodes are whole numbers
    _episode_axis(ax, episodes)
    if rewarded:
        ax = fig.add_subplot(grid[1, 0], sharex=ax)
        rx = [xi for xi, _ in rewarded]
        ax.bar(rx, [r["reward"] for _, r in rewarded], color="#4c72b0", width=0.8,
               label="reward: extrapolated error - error after the episode")
        based = [(xi, r["baseline"]) for xi, r in rewarded if r.get("baseline") is not None]
        if based:
            ax.plot([b[0] for b in based], [b[1] for b in based], color="black", lw=1.2,
                    label="baseline (moving average of rewards)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel("reward (validation error)")
        ax.set_xlabel("policy episode")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                  frameon=False)  # under the axis: never over a bar
        ax.grid(alpha=0.3)
    _title(fig, f"Policy over episodes ({task}, {run_label(run_dir)})",
           "Top: probabilities of the policy's actions (k-means groups of permutations); "
           "bottom: reward of each episode")
    return _save(fig, out_png, tight=False)
