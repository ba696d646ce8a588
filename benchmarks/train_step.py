"""Where does a training step of the `cpu` preset go? Run: python benchmarks/train_step.py

Measured in one process, each against a baseline of the same run:
  1. the bare model step (forward + backward + AdamW on in-memory tiles), channels_last vs
     contiguous memory format;
  2. building the batch of one step (image resize, crops, jitter, normalisation) on one thread,
     as a fraction of the model step. It runs in a DataLoader worker (or, with data.workers=0,
     in the main process); on a machine with few cores it competes with the model step, so
     bare / (bare + data) bounds the loop / bare ratio of benchmarks/throughput.py there;
  3. the bare temporal model step (batch 64 x 6 frames) at temporal.frame_size 32 (pool5
     1 x 1), 48 (the cpu preset: 2 x 2) and 64 px (the paper preset: 3 x 3), as ratios to
     32 px: the price of keeping some spatial layout at pool5.
"""

from __future__ import annotations

import time

import torch
from throughput import bare_step_seconds

from permrl.config import load_config
from permrl.tasks import build_permutations, prepare_task

STEPS = 30


def batch_seconds(steps: int = STEPS) -> float:
    """Seconds to build one step's batch of tiles, on one thread as in a worker."""
    cfg = load_config(preset="cpu")
    task = prepare_task(cfg, "spatial", build_permutations(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    task.batches.parts(task.batches[0])
    t0 = time.perf_counter()
    for step in range(1, steps + 1):  # the worker's uint8 crops, then the tiles (on the CPU)
        task.batches.parts(task.batches[step])
    torch.set_num_threads(threads)
    return (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cfg = load_config(preset="cpu", overrides=["model.channels_last=false"])
    contiguous = bare_step_seconds(cfg, STEPS)
    cl = bare_step_seconds(load_config(preset="cpu"), STEPS)
    print(f"model step, batch 64 x 9 tiles: contiguous {1000 * contiguous:.1f} ms, "
          f"channels_last {1000 * cl:.1f} ms, ratio contiguous/channels_last "
          f"{contiguous / cl:.2f}")
    data = batch_seconds()
    print(f"building one batch (one thread): {1000 * data:.1f} ms = {data / cl:.2f} x the model "
          f"step; serial bound on the loop / bare ratio {cl / (cl + data):.2f}")
    base = None
    for size in (32, 48, 64):
        cfg = load_config(preset="cpu", overrides=["tasks=[temporal]",
                                                   f"temporal.frame_size={size}"])
        seconds = bare_step_seconds(cfg, STEPS)
        base = base or seconds
        print(f"temporal model step, 64 x 6 frames of {size} px: {1000 * seconds:.1f} ms, "
              f"{seconds / base:.2f} x the 32 px step")
