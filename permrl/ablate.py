"""The ablation of Table 5: every variant for every seed with identical budgets, one table.

Variants (design §7): S, S+P, T, T+P, S&T (spatial for half the steps, then temporal from those
weights), S+T, S+T+P; and the adaptive baselines over the same groups (`policy: exp3`,
`policy: hardness`, design §5) as S+exp3, S+hardness, T+..., S+T+.... Each cell (variant, seed)
is a normal run directory `OUT/<variant>/seed<k>/` trained with the same config except the
variant's keys and the seed, then evaluated with the same retrieval protocol (image kNN on
`eval.knn_train/knn_test`).
A finished cell has `cell.json`; a rerun of the same command skips it, and resumes a cell
that has a checkpoint. A cell trained with another config (a changed `--set`, `--preset` or
file) is refused by name, or retrained with `--force`; finished cells of variants or seeds not
asked for this time stay in the table when their config is what this command would give them.
`OUT/table.md` and `OUT/table.csv` hold mean and standard deviation over seeds of kNN
retrieval and of the final held-out puzzle accuracy over all of Psi (X_val: held out of
training, but the adaptive samplers see its state).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from permrl.config import (
    TASKS,
    Config,
    ConfigError,
    config_differences,
    idle_policy,
    load_config,
)
from permrl.evaluate.run import knn, load_trunk
from permrl.files import write_atomic
from permrl.run_dir import Interrupted
from permrl.train import RunError, train

VARIANTS: dict[str, list[str]] = {
    "S": ["tasks=[spatial]", "policy=uniform"],
    "S+P": ["tasks=[spatial]", "policy=reinforce"],
    "T": ["tasks=[temporal]", "policy=uniform"],
    "T+P": ["tasks=[temporal]", "policy=reinforce"],
    "S&T": ["tasks=[spatial, temporal]", "policy=uniform"],  # + serial_switch = steps // 2
    "S+T": ["tasks=[spatial, temporal]", "policy=uniform"],
    "S+T+P": ["tasks=[spatial, temporal]", "policy=reinforce"],
    # Beyond the paper: simple adaptive samplers over the same groups (permrl.policy.bandits).
    "S+exp3": ["tasks=[spatial]", "policy=exp3"],
    "S+hardness": ["tasks=[spatial]", "policy=hardness"],
    "T+exp3": ["tasks=[temporal]", "policy=exp3"],
    "T+hardness": ["tasks=[temporal]", "policy=hardness"],
    "S+T+exp3": ["tasks=[spatial, temporal]", "policy=exp3"],
    "S+T+hardness": ["tasks=[spatial, temporal]", "policy=hardness"],
}
KS = ("top1", "top5", "top10", "top20", "top50")


def variant_config(base: list[str], config_file: str | None, preset: str | None, variant: str,
                   seed: int) -> Config:
    if variant not in VARIANTS:
        raise ConfigError(f"--variants: {variant!r} is not one of {', '.join(VARIANTS)}")
    overrides = base + VARIANTS[variant] + [f"seed={seed}"]
    cfg = load_config(config_file, preset, overrides)
    if variant == "S&T":
        if cfg.train.steps < 2:
            raise ConfigError("train.steps: S&T needs at least 2 steps (spatial, then temporal)")
        cfg = load_config(config_file, preset, overrides + [
            f"train.serial_switch={cfg.train.steps // 2}"])
    return cfg


def cell_dir(out: Path, variant: str, seed: int) -> Path:
    return out / variant.replace("&", "_then_") / f"seed{seed}"


def cell_changes(cfg: Config, run_dir: Path) -> list[str]:
    """How the config a cell was trained with differs from `cfg` (empty for a new cell)."""
    stored = run_dir / "config.yaml"
    return config_differences(load_config(stored), cfg) if stored.is_file() else []


RESUME_HINT = ("run the same `permrl ablate` command again to continue: finished cells are kept "
               "and this cell resumes from its checkpoint")


def run_cell(cfg: Config, run_dir: Path, variant: str, seed: int) -> dict[str, Any]:
    """Train (or resume) one cell and evaluate it; the result is saved as run_dir/cell.json."""
    done = run_dir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    resume = (run_dir / "checkpoint.pt").exists()
    run = train(cfg, run_dir, resume=resume, force=not resume)
    if run.interrupted:  # a half-trained cell is never evaluated nor marked done
        raise Interrupted(run.stop_signal, RESUME_HINT)
    trunk, _, _ = load_trunk(run_dir / "checkpoint.pt")
    result = knn(trunk, cfg, cfg.eval.knn_train, cfg.eval.knn_test)
    cell = {"variant": variant, "seed": seed, "run_dir": str(run_dir), "steps": cfg.train.steps,
            "knn": result, "puzzle_accuracy": run.val_accuracy}
    write_atomic(done, json.dumps(cell, indent=2))
    return cell


def ablate(
    out: str | Path, variants: list[str], seeds: int, *, config_file: str | None = None,
    preset: str | None = None, overrides: list[str] = (), force: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every (variant, seed) cell; write table.md, table.csv, cells.json.

    `force`: retrain the cells whose config differs from this command's (refused otherwise)."""
    out = Path(out)
    if seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {seeds}")
    if not variants:
        raise ConfigError(f"--variants: give at least one of {', '.join(VARIANTS)}")
    configs = {(v, s): variant_config(list(overrides), config_file, preset, v, s)
               for v in variants for s in range(seeds)}  # every config validated up front
    for (variant, _), cfg in configs.items():
        if idle := idle_policy(cfg):  # the cell would equal its uniform twin, silently
            raise ConfigError(f"{variant}: {idle}")
    stale = {key: changed for key, cfg in configs.items()
             if (changed := cell_changes(cfg, cell_dir(out, *key)))}
    if stale and not force:
        names = "; ".join(f"{v}/seed{s} ({', '.join(c)})" for (v, s), c in stale.items())
        raise ConfigError(f"{len(stale)} cell(s) in {out} were trained with another config: "
                          f"{names}; retrain them with --force, or choose another --out")
    for variant, seed in stale:
        shutil.rmtree(cell_dir(out, variant, seed))
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for (variant, seed), cfg in configs.items():
        print(f"permrl ablate: {variant}, seed {seed} -> {cell_dir(out, variant, seed)}")
        cells.append(run_cell(cfg, cell_dir(out, variant, seed), variant, seed))
    cells = sorted(cells + earlier_cells(out, configs, list(overrides), config_file, preset),
                   key=lambda c: (list(VARIANTS).index(c["variant"]), c["seed"]))
    (out / "cells.json").write_text(json.dumps(cells, indent=2))
    cfg = next(iter(configs.values()))
    md, rows = summary_table(cells, cfg)
    (out / "table.md").write_text(md + "\n")
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(md)
    return {"cells": cells, "table": rows}


def earlier_cells(out: Path, asked: dict[tuple[str, int], Config], overrides: list[str],
                  config_file: str | None, preset: str | None) -> list[dict[str, Any]]:
    """Finished cells of `out` that this command did not ask for, kept in the table when their
    config is the one this command would give them (said on stderr when it is not)."""
    kept = []
    for path in sorted(out.glob("*/seed*/cell.json")):
        cell = json.loads(path.read_text())
        key = (cell["variant"], cell["seed"])
        if key in asked or cell["variant"] not in VARIANTS:
            continue
        changed = cell_changes(variant_config(overrides, config_file, preset, *key), path.parent)
        if changed:
            print(f"permrl ablate: {key[0]}/seed{key[1]} left out of the table: trained with "
                  f"another config ({', '.join(changed)})", file=sys.stderr)
        else:
            kept.append(cell)
    return kept


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_table(cells: list[dict[str, Any]], cfg: Config) -> tuple[str, list[dict[str, Any]]]:
    """Table 5 layout: one row per variant, mean and standard deviation over seeds."""
    variants = list(dict.fromkeys(c["variant"] for c in cells))
    first = cells[0]["knn"]
    ks = [k for k in KS if k in first]
    puzzles = [t for t in TASKS if any(t in c.get("puzzle_accuracy", {}) for c in cells)]
    rows = []
    for v in variants:
        mine = [c for c in cells if c["variant"] == v]
        row: dict[str, Any] = {"variant": v, "seeds": len(mine)}
        for k in ks:
            m, sd = mean_std([100 * c["knn"][k] for c in mine])
            row |= {f"{k}_mean": m, f"{k}_std": sd}  # rounded once, where they are printed
        for task in puzzles:
            values = [100 * c["puzzle_accuracy"][task] for c in mine
                      if task in c.get("puzzle_accuracy", {})]
            m, sd = mean_std(values) if values else (float("nan"), float("nan"))
            row |= {f"{task}_puzzle_mean": m, f"{task}_puzzle_std": sd}
        rows.append(row)
    buf = io.StringIO()
    buf.write(
        f"kNN retrieval ({first['layer']}, cosine, recall@k in %, mean ± std over "
        f"{rows[0]['seeds']} seed(s)); gallery {first['train_source']} ({first['gallery']} "
        f"items), queries {first['test_source']} ({first['queries']} items); BN statistics: "
        f"{first['bn_stats']}; every variant trained {cells[0]['steps']} steps with the same "
        f"config (preset {cfg.preset}, images {cfg.data.images}, videos {cfg.data.videos}); "
        "nothing selected on the test set.\n\n")
    if puzzles:
        buf.write("Puzzle: held-out accuracy (%) over all |Psi| x |X_val| permuted X_val samples "
                  "at the end (chance 100/|Psi|; X_val is never trained on, but the adaptive "
                  "samplers see its state).\n\n")
    heads = [k.capitalize() for k in ks] + [f"{t} puzzle" for t in puzzles]
    buf.write("| variant | " + " | ".join(heads) + " |\n")
    buf.write("|---|" + "---|" * len(heads) + "\n")
    for row in rows:
        keys = ks + [f"{t}_puzzle" for t in puzzles]
        cells_text = " | ".join(f"{row[f'{k}_mean']:.1f} ± {row[f'{k}_std']:.1f}" for k in keys)
        buf.write(f"| {row['variant']} | {cells_text} |\n")
    return buf.getvalue().rstrip("\n"), rows


__all__ = ["VARIANTS", "ablate", "summary_table", "RunError"]
