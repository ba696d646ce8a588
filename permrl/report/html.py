"""One self-contained HTML report of a run, an ablation or a demo directory.

:func:`write_report` detects what ``path`` is:

- a RUN_DIR (``metrics.jsonl`` / ``config.yaml``): header from the resolved config, training
  curves, Figs. 4 and 6 and the policy (per task, when the run has them), Fig. 5 when the run
  logged retrieval-over-training records, and the config;
- an ablation directory (``cells.json``): the summary and tables of ``table.md`` (rendered from
  the cells with :mod:`permrl.ablate`'s functions), Fig. 5 over the variants' first seeds,
  Fig. 6 of the first "with policy" variant against the same variant without it, Fig. 4 of
  the first policy run, then one section per run (:func:`permrl.variants.cell_dir`) with its
  training curves;
- a demo directory (``demo.json``, ablation or run sub-directories): the demo's tables, Fig. 6
  of a policy run against its partner without the policy, and one section per sub run with its
  figures.

Tables are rendered from the JSON the package writes (``cells.json``, ``demo.json``); the
sentences around them come from the functions that write ``table.md`` and ``demo.md``.
Figures go to ``path/figures/`` and are embedded in the HTML as base64 data URIs; the page has
inline CSS only (no external CSS, JS, fonts or images). All text from files is escaped.

Why this long: the page builder and one section writer per kind of directory (run, ablation,
demo, Fig. 4, landscape), each short.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from permrl.config import TASKS, load_config
from permrl.report import figures as F
from permrl.report.tables import (
    ablation_tables,
    demo_tables,
    format_table,
    paired_rows,
    policy_rows,
    summary_rows,
    summary_sentences,
    summary_table,
)
from permrl.variants import KS, cell_dir, uniform_twin

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #333; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { text-align: right; background: #f7f7f7; font-weight: 600; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 90%; color: #444; margin-top: .3em; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .8em; overflow-x: auto;
      font-size: 85%; }
code { background: #f2f2f2; padding: 0 .2em; }
nav ul { columns: 3; }
.muted { color: #777; }
.notes { white-space: pre-line; }
"""

CAPTIONS = {
    "training": "Training loss (top) and permutation accuracy (bottom) per task: thin lines on "
                "training batches, dots on the held-out puzzles X_val; dotted line = chance.",
    "fig4": "Paper Fig. 4: share of the permutations chosen in each policy episode, by "
            "difficulty quartile of their validation error at the episode's start (green = "
            "easiest 25%, red = hardest 25%). Uniform sampling gives 25% each.",
    "policy": "The policy's probability for each k-means group of permutations (group 0 = "
              "hardest) per episode, and the episode's reward (Eq. 7) with the baseline.",
    "fig5": "Paper Fig. 5: nearest-neighbour retrieval Top-1 (pool5 features, cosine "
            "similarity) over training steps, one line per variant.",
    "fig6": "Paper Fig. 6: validation error of every permutation (rows, sorted by mean error "
            "within each panel) over the recorded validation states; (A) with the policy, "
            "(B) without. A uniform decrease means all permutations improve alike.",
}


# Tables -----------------------------------------------------------------------------------
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?$")


def _inline(text: str) -> str:
    """Escape text, then render the **bold** of the package's notes and paired cells."""
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))


def table_html(rows: list[list[str]]) -> str:
    """An HTML table of string rows (the first is the header, all escaped); numeric cells get
    class "num"."""
    parts = ["<table>"]
    for i, row in enumerate(rows):
        tag = "th" if i == 0 else "td"
        cells = []
        for text in row:
            attrs = ' class="num"' if i and _NUMBER.match(text) else ""
            cells.append(f"<{tag}{attrs}>{_inline(text)}</{tag}>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def with_tables(markdown: str, tables: list[list[list[str]]]) -> str:
    """A markdown text the package writes, as HTML: its paragraphs as text (line breaks kept),
    its tables replaced, in order, by ``tables``, the same tables rendered from their data."""
    rest, out = iter(tables), []
    for block in markdown.split("\n\n"):
        out.append(table_html(next(rest)) if block.startswith("|")
                   else f'<p class="notes">{_inline(block)}</p>')
    return "\n".join(out)


# Page building ----------------------------------------------------------------------------
@dataclass
class _Page:
    root: Path
    figures_dir: Path
    body: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    n_figures: int = 0

    def section(self, title: str, anchor: str, level: int = 2) -> None:
        if level == 2:
            self.toc.append((anchor, title))
        self.body.append(f'<h{level} id="{html.escape(anchor)}">{html.escape(title)}</h{level}>')

    def add(self, fragment: str) -> None:
        self.body.append(fragment)

    def figure(self, name: str, make, caption: str) -> Path | None:
        """Run ``make(png_path)``; embed the PNG it wrote (or drop a stale one if None)."""
        target = self.figures_dir / f"{name}.png"
        made = make(target)
        if made is None:
            target.unlink(missing_ok=True)
            return None
        data = base64.b64encode(Path(made).read_bytes()).decode("ascii")
        alt = html.escape(caption.split(":")[0], quote=True)
        self.body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.n_figures += 1
        return Path(made)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text.replace("&", "and"))
    return slug.strip("_") or "run"


def _kv_table(pairs: list[tuple[str, Any]]) -> str:
    rows = [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in pairs if v is not None and v != ""]
    return '<table class="kv">' + "".join(rows) + "</table>" if rows else ""


def _uses_policy(config: dict[str, Any]) -> bool:
    policy = config.get("policy")
    return bool(policy) and str(policy).lower() not in {"none", "uniform", "random", "false"}


def _policy_names(runs: dict[str, Path]) -> set[str]:
    """The names whose run directory's config draws permutations adaptively."""
    return {name for name, run_dir in runs.items() if _uses_policy(F.read_config(run_dir))}


def _fmt(value: Any, percent: bool = True) -> str:
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent and abs(value) <= 1 else f"{value:.4g}"
    return str(value)


def run_summary(run_dir: Path) -> list[tuple[str, Any]]:
    """(label, value) pairs describing a run: what it is (config.yaml) and where it ended."""
    config = F.read_config(run_dir)
    records = F.read_metrics(run_dir)
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    tasks = F.run_tasks(run_dir, records)
    pairs: list[tuple[str, Any]] = [
        ("tasks", ", ".join(tasks) if tasks else None),
        ("policy", config.get("policy", "(not in config)") if config else None),
        ("preset", config.get("preset")),
        ("seed", config.get("seed")),
        ("steps", train.get("steps")),
        ("batch size", train.get("batch_size")),
        ("image data", data.get("images") if "spatial" in tasks else None),
        ("video data", data.get("videos") if "temporal" in tasks else None),
    ]
    for task in tasks:
        block = config.get(task) if isinstance(config.get(task), dict) else {}
        if block.get("permutations"):
            pairs.append((f"{task} permutations |Psi|", block["permutations"]))
    steps = [r["step"] for r in records if "step" in r and any(k.endswith("_loss") for k in r)]
    if steps:
        pairs.append(("last logged step", max(steps)))
    for task in tasks:
        val = [r for r in records if f"{task}_val_accuracy" in r]
        if val:
            pairs.append((f"final held-out {task} accuracy",
                          f"{_fmt(val[-1][f'{task}_val_accuracy'])} (step {val[-1].get('step')})"))
    knn = F.retrieval_curve(run_dir)
    if knn:
        pairs.append(("final kNN Top-1", f"{_fmt(knn[-1][1])} (step {knn[-1][0]})"))
    return pairs


def _config_block(run_dir: Path, collapsed: bool) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return ""
    pre = f"<pre>{html.escape(path.read_text())}</pre>"
    if collapsed:
        return f"<details><summary>resolved config (config.yaml)</summary>{pre}</details>"
    return f"<h3>Resolved config (config.yaml)</h3>{pre}"


def _run_figures(page: _Page, run_dir: Path, prefix: str, *, fig6: bool = True,
                 fig5: bool = True, policy_figs: bool = True) -> None:
    """Training curves, then per task Fig. 4, the policy and (one-panel) Fig. 6."""
    label = F.run_label(run_dir)
    page.figure(f"{prefix}training", lambda p: F.plot_training_curves(run_dir, p),
                f"Training curves of {label}. " + CAPTIONS["training"])
    if fig5:
        curve = F.retrieval_curve(run_dir)
        page.figure(f"{prefix}fig5_retrieval",
                    lambda p: F.plot_fig5_retrieval(
                        {label: curve}, p, with_policy=_policy_names({label: run_dir})),
                    f"Retrieval over training of {label}. " + CAPTIONS["fig5"])
    with_policy = _uses_policy(F.read_config(run_dir)) or bool(
        [r for r in F.read_metrics(run_dir) if "episode" in r])
    for task in F.run_tasks(run_dir):
        if policy_figs:
            page.figure(f"{prefix}fig4_{task}",
                        lambda p, t=task: F.plot_fig4_quartiles(run_dir, p, task=t),
                        f"{task} task of {label}. " + CAPTIONS["fig4"])
            page.figure(f"{prefix}policy_{task}",
                        lambda p, t=task: F.plot_policy(run_dir, p, t),
                        f"{task} task of {label}. " + CAPTIONS["policy"])
        if fig6:
            pair = (run_dir, None) if with_policy else (None, run_dir)
            page.figure(f"{prefix}fig6_{task}",
                        lambda p, t=task, pr=pair: F.plot_fig6_permutation_errors(*pr, p, task=t),
                        f"{task} task of {label}. " + CAPTIONS["fig6"])


def policy_pairs(runs: dict[str, Path]) -> list[tuple[str, str]]:
    """(with the policy, without it) names, in the order of ``runs``: each REINFORCE run and the
    first uniform run whose config.yaml is the same but for the seed (S+T+P and S+T, not S&T,
    whose serial switch differs)."""
    def rest(config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in ("policy", "seed")}

    configs = {name: F.read_config(run_dir) for name, run_dir in runs.items()}
    uniform = [name for name, config in configs.items() if config.get("policy") == "uniform"]
    pairs = []
    for name, config in configs.items():
        partner = next((u for u in uniform if rest(configs[u]) == rest(config)), None)
        if config.get("policy") == "reinforce" and partner is not None:
            pairs.append((name, partner))
    return pairs


def _fig6_pair(page: _Page, with_run: Path, without_run: Path, prefix: str, title: str) -> None:
    tasks = [t for t in F.run_tasks(with_run) if t in F.run_tasks(without_run)]
    for task in tasks:
        page.figure(f"{prefix}fig6_{task}",
                    lambda p, t=task: F.plot_fig6_permutation_errors(with_run, without_run, p,
                                                                     task=t),
                    f"{title}, {task} task. " + CAPTIONS["fig6"])


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "metrics.jsonl").is_file()
                              or (path / "config.yaml").is_file())


def detect_kind(path: Path) -> str:
    """"run", "ablation" or "demo" (``demo.json``, run directories or ablation directories)."""
    if (path / "cells.json").is_file():
        return "ablation"
    if (path / "metrics.jsonl").is_file() or (path / "config.yaml").is_file():
        return "run"
    if (path / "demo.json").is_file() or any(
            _is_run_dir(p) or (p / "cells.json").is_file() for p in path.iterdir()):
        return "demo"
    raise FileNotFoundError(f"{path} is not a run, ablation or demo directory (no "
                            "metrics.jsonl, config.yaml, cells.json, demo.json or run "
                            "sub-directories)")


# The three kinds --------------------------------------------------------------------------
def _report_run(page: _Page, run_dir: Path) -> str:
    page.add(_kv_table(run_summary(run_dir)))
    page.section("Figures", "figures")
    _run_figures(page, run_dir, "")
    page.section("Resolved config", "config")
    page.add(_config_block(run_dir, collapsed=False).replace(
        "<h3>Resolved config (config.yaml)</h3>", ""))
    return f"Training run {run_dir.name}"


def _cell_summary(cell: dict[str, Any]) -> str:
    knn = cell.get("knn", {})
    values = [f"{k}: {_fmt(knn[k])}" for k in KS if k in knn]
    return f"<p>kNN retrieval of this run: {html.escape(', '.join(values))}</p>" if values else ""


def _report_ablation(page: _Page, root: Path, prefix: str = "", title: str = "") -> str:
    """Table, Figs. 5/6/4 and one section per run; ``prefix`` names figures and anchors of
    an ablation nested in a demo directory, ``title`` prefixes its section titles."""
    cells = json.loads((root / "cells.json").read_text())
    runs = [(cell, cell_dir(root, cell["variant"], cell["seed"])) for cell in cells]
    variants = list(dict.fromkeys(cell["variant"] for cell in cells))
    first = {v: min((r for r in runs if r[0]["variant"] == v), key=lambda r: r[0]["seed"])[1]
             for v in variants}
    page.section(f"{title}Summary", f"{prefix}summary")
    movement = policy_rows(cells, root)
    sentences = summary_sentences(summary_rows(cells), paired_rows(cells), movement)
    page.add("<ul>" + "".join(f"<li>{_inline(s)}</li>" for s in sentences) + "</ul>")
    page.section(f"{title}Results table", f"{prefix}table")
    shared = dict(run_summary(runs[0][1]))
    seeds = list(dict.fromkeys(str(cell["seed"]) for cell in cells))
    page.add(_kv_table([("runs", len(runs)), ("variants", ", ".join(variants)),
                        ("seeds", ", ".join(seeds))]
                       + [(k, shared.get(k)) for k in ("preset", "steps", "batch size",
                                                       "image data", "video data")]))
    notes, _ = summary_table(cells, load_config(runs[0][1] / "config.yaml"), movement)
    page.add(with_tables(notes, ablation_tables(cells, movement)))

    page.section(f"{title}Paper figures", f"{prefix}paper-figures")
    curves = {v: F.retrieval_curve(first[v]) for v in variants}
    if page.figure(f"{prefix}fig5_retrieval",
                   lambda p: F.plot_fig5_retrieval(curves, p,
                                                   with_policy=_policy_names(first)),
                   "First seed of each variant. " + CAPTIONS["fig5"]) is None:
        page.add('<p class="muted">Fig. 5: no retrieval-over-training (knn_top1) records.</p>')
    if len(seeds) > 1:
        _seed_band_figures(page, runs, prefix)
    pairs = policy_pairs(first)
    if pairs:
        with_v, without_v = pairs[0]
        _fig6_pair(page, first[with_v], first[without_v], prefix,
                   f"(A) {with_v} vs (B) {without_v}, first seed")
        for task in F.run_tasks(first[with_v]):
            page.figure(f"{prefix}fig4_{task}",
                        lambda p, t=task: F.plot_fig4_quartiles(first[with_v], p, task=t),
                        f"{with_v}, first seed, {task} task. " + CAPTIONS["fig4"])
            page.figure(f"{prefix}policy_{task}",
                        lambda p, t=task: F.plot_policy(first[with_v], p, t),
                        f"{with_v}, first seed, {task} task. " + CAPTIONS["policy"])

    page.section(f"{title}Runs", f"{prefix}runs")
    for index, (cell, run_dir) in enumerate(runs):
        variant, seed = cell["variant"], cell["seed"]
        page.section(f"{variant}, seed {seed}", f"{prefix}run-{index:02d}-{_slug(variant)}",
                     level=3)
        rel = run_dir.relative_to(root.parent) if run_dir.is_relative_to(root.parent) \
            else run_dir
        page.add(f'<p>Run directory: <code>{html.escape(str(rel))}</code></p>')
        page.add(_kv_table(run_summary(run_dir)))
        page.add(_cell_summary(cell))
        page.figure(f"{prefix}run{index:02d}_{_slug(variant)}_seed{seed}_training",
                    lambda p, r=run_dir: F.plot_training_curves(r, p),
                    f"Training curves of {variant}, seed {seed}. " + CAPTIONS["training"])
        page.add(_config_block(run_dir, collapsed=True))
    return f"Ablation {root.name}"


def _seed_band_figures(page: _Page, runs: list[tuple[dict[str, Any], Path]],
                       prefix: str) -> None:
    """Fig. 5 and the held-out puzzle accuracy over training, every seed of every variant (the
    mean and a band from the lowest to the highest seed), one panel per uniform variant and
    the adaptive ones compared with it."""
    by_variant: dict[str, list[Path]] = {}
    for cell, run_dir in runs:
        by_variant.setdefault(cell["variant"], []).append(run_dir)
    adaptive = {v for v in by_variant if uniform_twin(v) is not None}

    def panels(curve, task: str | None = None) -> dict[str, dict[str, list]]:
        out: dict[str, dict[str, list]] = {}
        for v, dirs in by_variant.items():
            if task is None or task in F.run_tasks(dirs[0]):
                family = uniform_twin(v) or ("S+T" if v == "S&T" else v)
                out.setdefault(f"{family} and its samplers", {})[v] = [curve(r) for r in dirs]
        return out

    page.figure(f"{prefix}fig5_seed_bands", lambda p: F.plot_seed_bands(
        panels(F.retrieval_curve), p, metric="kNN Top-1",
        title="Fig. 5 over seeds: nearest-neighbour retrieval during training",
        with_policy=adaptive), "Every seed of every variant. " + CAPTIONS["fig5"])
    for task in TASKS:
        chance = F._chance(runs[0][1], task)
        page.figure(f"{prefix}{task}_puzzle_seed_bands", lambda p, t=task, c=chance:
                    F.plot_seed_bands(
                        panels(lambda r, t=t: F.retrieval_curve(r, f"{t}_val_accuracy"), t), p,
                        metric=f"{t} puzzle accuracy", with_policy=adaptive, chance=c,
                        title=f"Held-out {t} puzzle accuracy during training, over seeds"),
                    f"{task} task: accuracy over all |Psi| x |X_val| permuted held-out "
                    "samples at each validation, every seed of every variant that trains it.")


def _report_demo(page: _Page, root: Path) -> str:

    runs = sorted(p for p in root.iterdir() if _is_run_dir(p))
    if (root / "demo.json").is_file():
        report = json.loads((root / "demo.json").read_text())
        page.section("Summary", "summary")
        page.add(with_tables(format_table(report), demo_tables(report)))
    if (root / "fig3_neighbours.npz").is_file():
        with np.load(root / "fig3_neighbours.npz") as f:
            grid = {k: f[k] for k in f.files}
        page.figure("fig3_neighbours", lambda p: F.plot_fig3_neighbours(
            list(grid["queries"]), [list(row) for row in grid["neighbours"]], p,
            titles=[str(t) for t in grid["titles"]], hits=grid["hits"].tolist()),
            "Paper Fig. 3: test queries (left) and their top-5 nearest training items by "
            "cosine similarity of pool5 features (Top-1 first); green border = same class.")
    for nested in sorted(p for p in root.iterdir() if (p / "cells.json").is_file()):
        _report_ablation(page, nested, prefix=f"{_slug(nested.name)}_",
                         title=f"{nested.name}: ")
    pairs = policy_pairs({r.name: r for r in runs})
    if pairs:
        page.section("Fig. 6: with and without the policy", "fig6")
        for with_name, without_name in pairs:
            _fig6_pair(page, root / with_name, root / without_name,
                       f"{_slug(with_name)}_vs_{_slug(without_name)}_",
                       f"(A) {with_name} vs (B) {without_name}")
    curves = {r.name: F.retrieval_curve(r) for r in runs}
    if any(curves.values()):
        page.section("Fig. 5: retrieval over training", "fig5")
        page.figure("fig5_retrieval",
                    lambda p: F.plot_fig5_retrieval(
                        curves, p, with_policy=_policy_names({r.name: r for r in runs})),
                    CAPTIONS["fig5"])
    for index, run_dir in enumerate(runs):
        page.section(f"Run {run_dir.name}", f"run-{_slug(run_dir.name)}")
        page.add(_kv_table(run_summary(run_dir)))
        _run_figures(page, run_dir, f"run{index:02d}_{_slug(run_dir.name)}_", fig6=not pairs,
                     fig5=False)
        page.add(_config_block(run_dir, collapsed=True))
    return f"permrl demo: {root.name}"


def write_report(path: str | Path, out_html: str | Path | None = None) -> Path:
    """Render ``path`` (a RUN_DIR, an ablation or a demo directory) into one HTML file.

    Figures are written to ``path/figures/`` and embedded; the page goes to ``out_html``
    (default ``path/report.html``). Returns the HTML path.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    kind = detect_kind(root)
    page = _Page(root, root / "figures")
    page.figures_dir.mkdir(parents=True, exist_ok=True)
    title = {"run": _report_run, "ablation": _report_ablation,
             "demo": _report_demo}[kind](page, root)
    nav = ""
    if len(page.toc) > 1:
        nav = "<nav><ul>" + "".join(
            f'<li><a href="#{html.escape(a, quote=True)}">{html.escape(t)}</a></li>'
            for a, t in page.toc) + "</ul></nav>"
    document = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">permrl report of <code>{html.escape(str(root.resolve()))}</code> '
        f"({kind}); figures in <code>figures/</code>, embedded below.</p>",
        nav, *page.body, "</body>", "</html>", ""])
    out = Path(out_html) if out_html is not None else root / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
