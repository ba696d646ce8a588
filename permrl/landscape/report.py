"""`permrl landscape`: measure a checkpoint's reward landscape, summarise it, write it down.

Files in --out: `landscape.json` (every gain, the Eq. 7 rewards of ordinary cycles, the
summary), `landscape.csv` (one row per arm x replicate x horizon x BN variant x metric),
`landscape.md` (the summary table) and `landscape.png` (mean gain +- standard error per arm).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from permrl.files import atomic_path, write_atomic
from permrl.landscape.measure import (
    BN_VARIANTS,
    METRICS,
    Arm,
    checkpoint_groups,
    landscape_arms,
    loop_rewards,
    measure_arms,
    open_landscape,
    sigma,
)
from permrl.landscape.statistics import (
    arm_share_spread,
    blocked_anova,
    episodes_to_detect,
    size_and_difficulty,
    split_half_agreement,
)
from permrl.policy.groups import group_errors
from permrl.run_dir import RunError

MIXTURES = ("uniform", "tilt", "half")  # what a policy that starts at uniform can move to


def summarise(arms: list[Arm], gains: np.ndarray, sigma_loop: float,
              group_sizes: np.ndarray, group_error: np.ndarray, group_of: np.ndarray,
              batch_size: int, batches: int) -> dict[str, Any]:
    """The statistics of one (BN variant, metric, horizon): `gains` is (arms x replicates).

    groups: the single-group arms (F, p, eta2, split-half agreement, size vs difficulty);
    mixtures: uniform, the tilts and the halves (F, p, eta2, split-half); best: the mixture
    arm with the largest mean gain over uniform (paired per replicate), its standard error,
    and the episodes a policy needs to detect it with Eq. 7's noise (sigma_loop) and with the
    noise of a paired twin (sigma_pair: the replicates' spread of arm - uniform): for a
    comparison of the whole arm with uniform, and for what a policy at pi = q sees, whose
    draws try only sd(alpha) of the arm per episode (`arm_share_spread`, `batches` mini-batches
    of `batch_size`, per-sample or per-batch actions).
    """
    kinds = np.array([a.kind for a in arms])
    reps = gains.shape[1]
    out: dict[str, Any] = {"arms": {a.name: {"mean": float(gains[i].mean()),
                                             "se": float(gains[i].std(ddof=1) / math.sqrt(reps))
                                             if reps > 1 else math.nan}
                                    for i, a in enumerate(arms)}}
    single = np.flatnonzero(kinds == "group")
    if len(single) >= 2:
        members = [arms[i].group for i in single]
        out["groups"] = blocked_anova(gains[single]) | {
            "split_half": split_half_agreement(gains[single])} | size_and_difficulty(
            gains[single].mean(axis=1), group_sizes[members], group_error[members])
    mixtures = np.flatnonzero(np.isin(kinds, MIXTURES))
    out["mixtures"] = blocked_anova(gains[mixtures]) | {
        "split_half": split_half_agreement(gains[mixtures])}
    uniform = int(np.flatnonzero(kinds == "uniform")[0])
    paired = gains[mixtures] - gains[uniform]
    others = [j for j, i in enumerate(mixtures) if i != uniform]
    best = max(others, key=lambda j: paired[j].mean())
    delta, sigma_pair = float(paired[best].mean()), sigma(list(paired[best]))
    spread = arm_share_spread(arms[mixtures[best]].probs, arms[uniform].probs, group_of,
                              batch_size, batches)
    out["best"] = {"arm": arms[mixtures[best]].name, "delta": delta,
                   "se": sigma_pair / math.sqrt(reps), "sigma_pair": sigma_pair,
                   "sigma_loop": sigma_loop, "share_spread": spread,
                   "episodes_loop": episodes_to_detect(delta, sigma_loop),
                   "episodes_batch": episodes_to_detect(delta * spread["batch"], sigma_loop),
                   "episodes_sample": episodes_to_detect(delta * spread["sample"], sigma_loop),
                   "episodes_pair": episodes_to_detect(delta, sigma_pair),
                   "episodes_pair_batch": episodes_to_detect(delta * spread["batch"],
                                                             sigma_pair)}
    return out


def run_landscape(
    checkpoint: str | Path, out: str | Path, *, task: str | None = None,
    horizons: list[int] | None = None, replicates: int = 4, cycles: int = 8,
    bn_batches: int = 4, lr: float | None = None, overrides: list[str] | None = None,
    seed: int = 0, force: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """Measure, summarise and write the landscape of `checkpoint` (see the package)."""
    horizons = sorted(set(horizons or [5, 40]))
    if horizons[0] < 1 or replicates < 2 or cycles < 2 or bn_batches < 1:
        raise RunError(f"landscape: horizons >= 1, replicates >= 2, cycles >= 2, bn batches >= 1 "
                       f"(got {horizons}, {replicates}, {cycles}, {bn_batches})")
    out = Path(out)
    if (out / "landscape.json").exists() and not force:
        raise RunError(f"{out} already holds a landscape; --force replaces it")
    land = open_landscape(checkpoint, task, lr, list(overrides or []), seed)
    cfg, k_max = land.cfg, max(horizons)
    first_loop = land.start_step + replicates * k_max
    loop_span = cycles * (cfg.cycle.sgd_steps + k_max)
    bn_steps = list(range(first_loop + loop_span, first_loop + loop_span + bn_batches))
    groups, errors = checkpoint_groups(land, cfg.cycle.groups)
    arms = landscape_arms(groups, errors)
    if progress:
        print(f"permrl: landscape of {checkpoint} ({land.task.name}, step {land.start_step}, lr "
              f"{land.lr:g} held): {len(arms)} arms x {replicates} replicates x {k_max} steps, "
              f"then {cycles} cycles of {cfg.cycle.sgd_steps} + {k_max} steps",
              file=sys.stderr)
    measured = measure_arms(land, arms, horizons, replicates, bn_steps, progress)
    rewards = loop_rewards(land, horizons, cycles, cfg.cycle.sgd_steps, first_loop)
    group_error = group_errors(groups, errors)
    summary = {bn: {m: {k: summarise(arms, measured["gains"][bn][m][k], sigma(rewards[m][k]),
                                     groups.sizes, group_error, groups.assignment,
                                     cfg.train.batch_size, k) for k in horizons}
                    for m in METRICS} for bn in BN_VARIANTS}
    result = {"checkpoint": str(checkpoint), "task": land.task.name, "step": land.start_step,
              "lr": land.lr, "horizons": horizons, "replicates": replicates, "cycles": cycles,
              "sgd_steps": cfg.cycle.sgd_steps, "bn_batches": bn_batches,
              "psi": len(errors), "x_val": int(land.task.val_parts.shape[0]),
              "group_sizes": groups.sizes.tolist(), "group_errors": group_error.tolist(),
              "arms": [a.name for a in arms], "group_of": groups.assignment.tolist(),
              "arm_probs": {a.name: a.probs.tolist() for a in arms},
              "before": measured["before"],
              "loop_rewards": rewards, "summary": summary,
              "gains": {bn: {m: {k: v.tolist() for k, v in per.items()} for m, per in d.items()}
                        for bn, d in measured["gains"].items()}}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "landscape.json", json.dumps(result, indent=1, default=float))
    write_csv(out / "landscape.csv", arms, measured["gains"])
    write_atomic(out / "landscape.md", summary_table(result))
    plot_landscape(out / "landscape.png", result)
    return result


def write_csv(path: Path, arms: list[Arm], table: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["bn", "metric", "horizon", "arm", "replicate", "gain"])
        for bn, per_metric in table.items():
            for m, per_k in per_metric.items():
                for k, values in per_k.items():
                    for a, arm in enumerate(arms):
                        for r, v in enumerate(values[a]):
                            w.writerow([bn, m, k, arm.name, r, f"{v:.6g}"])


def _n(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:.0f}"


def summary_table(result: dict[str, Any]) -> str:
    """One row per BN variant x metric x horizon (Markdown)."""
    head = ("| BN | metric | K | groups F (p) | eta2 | mixtures F (p) | eta2 | split-half | "
            "r difficulty (partial) | r log size | best mixture | gain over uniform +- se | "
            "sigma_loop | episodes, Eq. 7: whole arm / batch / sample actions | "
            "episodes, twin: whole arm / batch |")
    lines = [f"Landscape of {result['checkpoint']} ({result['task']}, step {result['step']}, "
             f"lr {result['lr']:g}; |Psi| = {result['psi']}, |X_val| = {result['x_val']}, "
             f"{result['replicates']} replicates; gains positive = better)", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for bn, per_metric in result["summary"].items():
        for m, per_k in per_metric.items():
            for k, s in per_k.items():
                g, mix, best = s.get("groups", {}), s["mixtures"], s["best"]
                lines.append(
                    f"| {bn} | {m} | {k} | {g.get('F', math.nan):.1f} ({g.get('p', math.nan):.1g})"
                    f" | {g.get('eta2', math.nan):.2f} | {mix['F']:.1f} ({mix['p']:.1g}) | "
                    f"{mix['eta2']:.2f} | {mix['split_half']:.2f} | "
                    f"{g.get('r_difficulty', math.nan):+.2f} "
                    f"({g.get('partial_r_difficulty', math.nan):+.2f}) | "
                    f"{g.get('r_log_size', math.nan):+.2f} | {best['arm']} | "
                    f"{best['delta']:+.2e} +- {best['se']:.1e} | {best['sigma_loop']:.1e} | "
                    f"{_n(best['episodes_loop'])} / {_n(best['episodes_batch'])} / "
                    f"{_n(best['episodes_sample'])} | {_n(best['episodes_pair'])} / "
                    f"{_n(best['episodes_pair_batch'])} |")
    return "\n".join(lines) + "\n"


def plot_landscape(path: Path, result: dict[str, Any]) -> None:
    """Mean gain +- se of every arm, one panel per metric (stored BN), one bar per horizon."""
    from permrl.report.figures import new_figure

    arms, horizons = result["arms"], result["horizons"]
    fig = new_figure((max(8, 0.45 * len(arms)), 9))
    axes = fig.subplots(len(METRICS), 1, sharex=True)
    x = np.arange(len(arms))
    width = 0.8 / len(horizons)
    for ax, m in zip(axes, METRICS, strict=True):
        for h, k in enumerate(horizons):
            s = result["summary"]["stored"][m][k]["arms"]
            ax.bar(x + h * width, [s[a]["mean"] for a in arms], width,
                   yerr=[s[a]["se"] for a in arms], label=f"K = {k}", capsize=2)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel(f"gain: {m}")
    axes[0].legend()
    axes[0].set_title(f"{result['task']}: gain of an episode per arm (step {result['step']}, "
                      f"{result['replicates']} replicates, mean +- se)")
    axes[-1].set_xticks(x + 0.4 - width / 2, arms, rotation=60, ha="right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
