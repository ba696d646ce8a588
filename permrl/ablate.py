"""The ablation of Table 5: every variant for every seed with identical budgets, one table.

Variants (design §7): S, S+P, T, T+P, S&T (spatial for half the steps, then temporal from those
weights), S+T, S+T+P; and the adaptive baselines over the same groups (`policy: exp3`,
`policy: hardness`, design §5) as S+exp3, S+hardness, T+..., S+T+...; the ceiling arm `policy:
fixed` (always the hardest half of Psi) as S+fixed, T+fixed, S+T+fixed. Each cell (variant, seed)
is a normal run directory `OUT/<variant>/seed<k>/` trained with the same config except the
variant's keys and the seed, then evaluated with the same retrieval protocol (image kNN on
`eval.knn_train/knn_test`).
A finished cell has `cell.json`; a rerun of the same command skips it, and resumes a cell
that has a checkpoint. A cell trained with another config (a changed `--set`, `--preset` or
file) is refused by name, or retrained with `--force`; finished cells of variants or seeds not
asked for this time stay in the table when their config is what this command would give them.
`OUT/table.md` and `OUT/table.csv` hold, per variant, the mean, standard deviation and each
seed's value of kNN retrieval and of the final held-out puzzle accuracy over all of Psi (X_val:
held out of training, but the adaptive samplers see its state); `OUT/pairs.csv` and the end of
table.md compare every adaptive variant with its uniform twin seed by seed; table.md opens
with a summary in sentences.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from permrl.config import (
    Config,
    ConfigError,
    config_differences,
    idle_policy,
    load_config,
)
from permrl.distributed import resolve_device
from permrl.evaluate.run import knn, load_trunk
from permrl.files import write_atomic
from permrl.report.tables import paired_rows, policy_rows, summary_sentences, summary_table
from permrl.run_dir import Interrupted, RunError
from permrl.train import train
from permrl.variants import VARIANTS, cell_dir


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
    result = knn(trunk, cfg, cfg.eval.knn_train, cfg.eval.knn_test,
                 device=resolve_device(cfg.train.device))  # where it trained
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
    movement = policy_rows(cells, out)
    md, rows = summary_table(cells, cfg, movement)
    pairs = paired_rows(cells)
    summary = "\n".join(f"- {line}" for line in summary_sentences(rows, pairs, movement))
    write_atomic(out / "table.md", f"Summary:\n{summary}\n\n{md}\n")
    write_csv(out / "table.csv", rows)
    if pairs:
        write_csv(out / "pairs.csv", pairs)
    print(f"{md}\n\nSummary:\n{summary}")
    return {"cells": cells, "table": rows, "pairs": pairs}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows with the union of their keys as columns (a variant with fewer seeds leaves its
    missing per-seed columns empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


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


__all__ = ["VARIANTS", "ablate", "RunError"]
