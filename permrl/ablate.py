"""The ablation of Table 5: every variant for every seed with identical budgets, one table.

Variants (SPEC 7): S, S+P, T, T+P, S&T (spatial for half the steps, then temporal from those
weights), S+T, S+T+P; and the adaptive baselines over the same groups (`policy: exp3`,
`policy: hardness`, SPEC 5) as S+exp3, S+hardness, T+..., S+T+.... Each cell (variant, seed)
is a normal run directory `OUT/<variant>/seed<k>/` trained with the same config except the
variant's keys and the seed, then evaluated with the same retrieval protocol (image kNN on
`eval.knn_train/knn_test`).
A finished cell has `cell.json`; a rerun skips it, and resumes a cell that has a checkpoint.
`OUT/table.md` and `OUT/table.csv` hold mean and standard deviation over seeds of kNN
retrieval and of the final held-out puzzle accuracy over all of Psi (X_val: held out of
training, but the adaptive samplers see its state).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

from permrl.config import TASKS, Config, ConfigError, load_config
from permrl.evaluate.run import knn, load_trunk
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


def run_cell(cfg: Config, run_dir: Path, variant: str, seed: int) -> dict[str, Any]:
    """Train (or resume) one cell and evaluate it; the result is saved as run_dir/cell.json."""
    done = run_dir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    resume = (run_dir / "checkpoint.pt").exists()
    run = train(cfg, run_dir, resume=resume, force=not resume)
    if run.interrupted:
        raise KeyboardInterrupt  # a half-trained cell is never evaluated nor marked finished
    trunk, _, _ = load_trunk(run_dir / "checkpoint.pt")
    result = knn(trunk, cfg, cfg.eval.knn_train, cfg.eval.knn_test)
    cell = {"variant": variant, "seed": seed, "run_dir": str(run_dir), "steps": cfg.train.steps,
            "knn": result, "puzzle_accuracy": run.val_accuracy}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=2))
    tmp.replace(done)
    return cell


def ablate(
    out: str | Path, variants: list[str], seeds: int, *, config_file: str | None = None,
    preset: str | None = None, overrides: list[str] = (),
) -> dict[str, Any]:
    """Train and evaluate every (variant, seed) cell; write table.md, table.csv, cells.json."""
    out = Path(out)
    if seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {seeds}")
    if not variants:
        raise ConfigError(f"--variants: give at least one of {', '.join(VARIANTS)}")
    configs = {(v, s): variant_config(list(overrides), config_file, preset, v, s)
               for v in variants for s in range(seeds)}  # every config validated up front
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for (variant, seed), cfg in configs.items():
        print(f"permrl ablate: {variant}, seed {seed} -> {cell_dir(out, variant, seed)}")
        cells.append(run_cell(cfg, cell_dir(out, variant, seed), variant, seed))
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
            row |= {f"{k}_mean": round(m, 2), f"{k}_std": round(sd, 2)}
        for task in puzzles:
            values = [100 * c["puzzle_accuracy"][task] for c in mine
                      if task in c.get("puzzle_accuracy", {})]
            m, sd = mean_std(values) if values else (float("nan"), float("nan"))
            row |= {f"{task}_puzzle_mean": round(m, 2), f"{task}_puzzle_std": round(sd, 2)}
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
