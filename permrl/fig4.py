"""The paper's Fig. 4 protocol: does a freshly initialised policy learn, from a half-trained CNN?

Sect. 4.3: "we initialize the policy network randomly and the CNN model from an intermediate
checkpoint (average validation error 72.3%). Per episode, the permutations are divided in four
complexities (based on the validation error) and the relative count of permutations selected by
the policy is shown per complexity."

`policy_learning` continues training from a checkpoint's weights and optimiser state (Psi kept)
with a fresh sampler (`policy: reinforce`, or an adaptive baseline) for E cycles of the policy's
schedule (N SGD steps, then an episode of K mini-batches), at a constant learning rate: the
checkpoint's current one (its base rate if that is 0) unless `train.lr` is set. Per episode it
records the share of chosen permutations per difficulty quartile (by validation error at the
episode's start, ties by mean softmax ratio) and the sizes of the k-means groups. Writes a
normal run directory plus `fig4_<task>.png` and `fig4.json` (per episode: quartile shares,
group sizes, probabilities, reward).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from permrl.checkpoint import load_checkpoint
from permrl.config import ADAPTIVE_POLICIES, Config, ConfigError, config_with
from permrl.files import write_atomic
from permrl.policy.cycle import Cycle
from permrl.policy.null import reward_signal
from permrl.run_dir import Interrupted, RunError
from permrl.train import train


def probe_config(ckpt: dict[str, Any], episodes: int, policy: str,
                 overrides: list[str]) -> Config:
    """The checkpoint's config, with the policy, E cycles of steps and a constant rate."""
    if episodes < 2:
        raise ConfigError(f"--episodes: at least 2 (the first episode earns no reward), got "
                          f"{episodes}")
    if policy not in ADAPTIVE_POLICIES:
        raise ConfigError(f"--policy: {policy!r} is not one of {', '.join(ADAPTIVE_POLICIES)}")
    first = config_with(ckpt["config"], [f"policy={policy}", *overrides])
    lr = ckpt["scheduler"]["_last_lr"][0]
    if lr <= 0:  # the last step of a cosine schedule: its base rate instead
        lr = first.train.lr
        print(f"permrl: the checkpoint's learning rate is 0 (end of its schedule); using "
              f"train.lr={lr}", file=sys.stderr)
    cycle = Cycle(first.cycle.sgd_steps, first.cycle.episode_batches)
    fixed = [f"policy={policy}", f"train.steps={episodes * cycle.length}",
             "train.schedule=constant", "train.warmup_steps=0", f"train.lr={lr}",
             "train.serial_switch=0"]
    return config_with(ckpt["config"], fixed + list(overrides))


def quartile_summary(records: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Per episode of `task`: quartile shares (%, easiest first), group sizes, probabilities."""
    out = []
    for r in (r for r in records if r.get("task") == task and "chosen_quartiles" in r):
        total = max(sum(r["chosen_quartiles"]), 1)
        out.append({"episode": r["episode"], "step": r["step"],
                    "quartile_share": [round(100 * c / total, 2) for c in r["chosen_quartiles"]],
                    "group_sizes": r["group_sizes"], "policy_probs": r["policy_probs"],
                    "error_before": r["error_before"], "reward": r.get("reward")})
    return out


def policy_learning(checkpoint: str | Path, out: str | Path, episodes: int, *,
                    policy: str = "reinforce", overrides: list[str] = (), force: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Run the Fig. 4 protocol; returns what `fig4.json` holds."""
    from permrl.report.figures import plot_fig4_quartiles, read_metrics

    ckpt = load_checkpoint(checkpoint)
    cfg = probe_config(ckpt, episodes, policy, list(overrides))
    out = Path(out)
    result = train(cfg, out, force=force, progress=progress, init_from=checkpoint)
    if result.interrupted:
        raise Interrupted(result.stop_signal, "the probe run is kept; start it again with --force")
    records = read_metrics(out)
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint), "checkpoint_step": ckpt["step"], "policy": policy,
        "episodes": episodes, "lr": cfg.train.lr, "steps": cfg.train.steps,
        "tasks": {}, "figures": {}}
    for task in cfg.tasks:
        rows = quartile_summary(records, task)
        if not rows:
            raise RunError(f"no episode of {task} was recorded in {out}")
        summary["tasks"][task] = rows
        summary.setdefault("reward_signal", {})[task] = reward_signal(records, task)
        png = plot_fig4_quartiles(out, out / f"fig4_{task}.png", task)
        summary["figures"][task] = str(png)
    write_atomic(out / "fig4.json", json.dumps(summary, indent=2) + "\n")
    return summary
