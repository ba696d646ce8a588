"""Throughput of the whole training loop vs the bare model step, in one process.

    python benchmarks/throughput.py                      # cpu preset, spatial task (issue 6)
    python benchmarks/throughput.py --preset paper --tasks spatial,temporal --policy --device cuda

1. bare model step: forward + backward + optimiser step on in-memory tensors of the same batch
   (tiles / frames already built, permutation indices fixed), timed after warm-up;
2. the whole loop: `permrl.train.train` on the built-in data (DataLoader workers, permutation
   draws, shuffling, metrics), samples/s from metrics.jsonl, the median over logging windows
   after the first (which holds worker start-up); no validation, no checkpoints;
3. with --policy: the same loop with the REINFORCE policy (S+T+P vs S+T), whose windows include
   the state computations and policy updates of the schedule.

Prints each rate and the ratios; ratios, not absolute times, are what carries across machines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from permrl.config import Config, load_config, model_tasks
from permrl.data.samples import geometry_of
from permrl.distributed import resolve_device
from permrl.models.build import build_model
from permrl.run import make_optimizer
from permrl.train import train


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_step_seconds(cfg: Config, steps: int, warmup: int = 5) -> float:
    """Seconds per optimiser step of the model alone, on fixed in-memory inputs."""
    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = make_optimizer(cfg, model)
    b = cfg.train.batch_size
    parts_of = {"spatial": (geometry_of(cfg).num_tiles, cfg.spatial.tile),
                "temporal": (cfg.temporal.frames, cfg.temporal.frame_size)}
    parts = {task: torch.randn(b, parts_of[task][0], 3, parts_of[task][1], parts_of[task][1],
                               device=device)
             for task in model_tasks(cfg)}
    targets = {task: torch.randint(0, getattr(cfg, task).permutations, (b,), device=device)
               for task in parts}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=cfg.train.amp and device.type == "cuda")
    forward = torch.compile(model) if cfg.train.compile else model
    for i in range(warmup + steps):
        if i == warmup:
            synchronise(device)
            t0 = time.perf_counter()
        with autocast:
            logits = forward(parts)
        loss = sum(F.cross_entropy(logits[k].float(), targets[k]) for k in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronise(device)
    return (time.perf_counter() - t0) / steps


def loop_samples_per_second(cfg: Config, windows: int = 6) -> float:
    """Median samples/s of the training loop over logging windows (after the first)."""
    with tempfile.TemporaryDirectory() as run_dir:
        train(cfg, run_dir, force=True, progress=False)
        records = [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    return float(np.median(rates[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    p.add_argument("--tasks", default="spatial", help="spatial | temporal | spatial,temporal")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=180, help="loop steps (6 logging windows)")
    p.add_argument("--bare-steps", type=int, default=30)
    p.add_argument("--policy", action="store_true", help="also the loop with policy=reinforce")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",")]
    overrides = [
        f"tasks=[{', '.join(tasks)}]", f"train.device={args.device}",
        f"train.steps={args.steps}", f"train.log_every={args.steps // 6}", "train.val_every=0",
        f"train.checkpoint_every={10 * args.steps}", "eval.knn_every=0", *args.set,
    ]
    cfg = load_config(preset=args.preset, overrides=overrides)
    device = resolve_device(cfg.train.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, preset "
          f"{args.preset}, tasks {'+'.join(tasks)}, batch {cfg.train.batch_size}, "
          f"{cfg.data.workers} DataLoader worker(s) per task")
    # Samples of every task count, as in the loop's samples_per_s (S+T: 2 x batch per step).
    bare = len(tasks) * cfg.train.batch_size / bare_step_seconds(cfg, args.bare_steps)
    print(f"bare model step (in-memory tensors): {bare:8.1f} samples/s")
    loop = loop_samples_per_second(cfg)
    print(f"whole training loop:                 {loop:8.1f} samples/s   "
          f"ratio loop / bare {loop / bare:.2f}")
    if args.policy:
        with_policy = load_config(preset=args.preset, overrides=[*overrides, "policy=reinforce"])
        policy = loop_samples_per_second(with_policy)
        print(f"whole loop with the policy:          {policy:8.1f} samples/s   "
              f"ratio uniform / policy (the policy's overhead) {loop / policy:.2f}")


if __name__ == "__main__":
    main()
