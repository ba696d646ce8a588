"""Where does a training step of the `cpu` preset go? Run: python benchmarks/train_step.py

Measured in one process, each against a baseline of the same run:
  1. the bare model step (forward + backward + AdamW on in-memory tiles), channels_last vs
     contiguous memory format;
  2. building the batch of tiles (crops, jitter, normalisation) from in-memory images, as a
     fraction of the model step (it runs in a DataLoader worker during training);
  3. the whole loop (`permrl.train.train` with one worker on the built-in demo source) vs the
     bare model step: samples/s ratio.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from permrl.config import load_config
from permrl.data.samples import make_tiles, shuffle_tiles
from permrl.train import build_model, build_permutations, geometry_of, make_optimizer, train

STEPS, WARMUP = 30, 5


def model_step_seconds(channels_last: bool) -> float:
    cfg = load_config(preset="cpu", overrides=[f"model.channels_last={str(channels_last).lower()}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = make_optimizer(cfg, model)
    g = geometry_of(cfg)
    tiles = torch.randn(cfg.train.batch_size, g.num_tiles, 3, g.tile, g.tile)
    target = torch.randint(0, cfg.spatial.permutations, (cfg.train.batch_size,))
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            t0 = time.perf_counter()
        loss = F.cross_entropy(model(tiles), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - t0) / STEPS


def tile_seconds() -> float:
    cfg = load_config(preset="cpu")
    g = geometry_of(cfg)
    images = torch.randint(0, 256, (cfg.train.batch_size, 3, g.image_size, g.image_size),
                           dtype=torch.uint8)
    perms = torch.from_numpy(build_permutations(cfg))
    index = torch.randint(0, len(perms), (cfg.train.batch_size,))
    t0 = time.perf_counter()
    for _ in range(STEPS):
        shuffle_tiles(make_tiles(images, g), perms, index)
    return (time.perf_counter() - t0) / STEPS


def loop_samples_per_second(steps: int = 200) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(preset="cpu", overrides=[
            f"train.steps={steps}", "train.val_every=0", f"train.log_every={steps // 4}",
            "train.checkpoint_every=100000", "data.images=demo?count=1000"])
        train(cfg, run_dir, force=True, progress=False)
        import json
        records = [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")]
        rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
        return float(np.median(rates[1:]))  # the first window includes worker start-up


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    contiguous = model_step_seconds(False)
    cl = model_step_seconds(True)
    print(f"model step, batch 64 x 9 tiles: contiguous {1000 * contiguous:.1f} ms, "
          f"channels_last {1000 * cl:.1f} ms, ratio contiguous/channels_last "
          f"{contiguous / cl:.2f}")
    tiles = tile_seconds()
    print(f"making the tiles of one batch: {1000 * tiles:.1f} ms = {tiles / cl:.2f} x the model "
          "step (runs in a DataLoader worker)")
    bare = 64 / cl
    loop = loop_samples_per_second()
    print(f"whole training loop: {loop:.0f} samples/s vs bare model step {bare:.0f} samples/s: "
          f"ratio {loop / bare:.2f}")
