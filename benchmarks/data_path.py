"""Puzzles per second per worker core: the raw JPEG folder path against the prepared store.

    python benchmarks/data_path.py [--images 256] [--steps 6]

ImageNet-sized JPEGs (500 x 375, quality 90; scikit-image's photographs, resized, with
per-image noise so that no two files are alike) are written to a temporary folder, then a
store is prepared from them (`permrl prepare`, paper preset: 256 px squares). One process (one
core) then builds paper-preset spatial batches (batch 64, 225 px puzzles as uint8: what a
DataLoader worker hands a GPU) from each, after one warm-up batch; the page cache holds both
(the disk is not measured). It prints each rate, the ratio to the raw path, the cores each needs
to feed the ~19k puzzles/s an H200 is estimated to train in bf16 (design §8), and checks that
both paths give the same uint8 puzzles.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from permrl.config import load_config
from permrl.data.batches import PuzzleBatches, scaled_size
from permrl.data.builtin import DEMO_PHOTO_NAMES, demo_photo
from permrl.data.prepared import prepare_images
from permrl.data.samples import geometry_of
from permrl.data.sources import open_source

GPU_PUZZLES_PER_S = 19_000  # paper preset on an H200 in bf16: the FLOP estimate of issue 24


def write_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(demo_photo(name)).convert("RGB").resize((500, 375))
              for name in DEMO_PHOTO_NAMES]
    for i in range(count):
        base = np.asarray(photos[i % len(photos)], dtype=np.int16)
        noisy = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)


def rate(batches: PuzzleBatches, steps: int) -> tuple[float, list[torch.Tensor]]:
    """Puzzles per second of `steps` batches after one warm-up batch, and the batches."""
    batches[0]
    t0 = time.perf_counter()
    out = [batches[step]["uint8"] for step in range(1, steps + 1)]
    return sum(len(b) for b in out) / (time.perf_counter() - t0), out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(preset="paper")
    geometry = geometry_of(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        write_jpegs(folder, args.images)
        t0 = time.perf_counter()
        prepare_images(f"folder:{folder}", Path(tmp) / "store", scaled_size(geometry.image_size))
        prepare_s = time.perf_counter() - t0
        rates = {}
        outputs = {}
        for name, spec in (("raw JPEG folder", f"folder:{folder}"),
                           ("prepared store", f"prepared:{Path(tmp) / 'store'}")):
            source = open_source(spec)
            batches = PuzzleBatches(source, np.arange(len(source)), geometry, 64, 0,
                                    cfg.spatial.grey_prob, cfg.spatial.colour_jitter)
            rates[name], outputs[name] = rate(batches, args.steps)
    same = all(torch.equal(a, b) for a, b in zip(*outputs.values(), strict=True))
    print(f"torch {torch.__version__}, 1 thread; {args.images} JPEGs 500x375, paper preset "
          f"(225 px puzzles from {scaled_size(geometry.image_size)} px squares), batch 64, "
          f"{args.steps} batches")
    print(f"prepare: {args.images / prepare_s:.0f} images/s on one core")
    base = rates["raw JPEG folder"]
    for name, r in rates.items():
        print(f"{name:16s} {r:7.0f} puzzles/s per core, x{r / base:.2f} the raw path, "
              f"{math.ceil(GPU_PUZZLES_PER_S / r)} cores to feed {GPU_PUZZLES_PER_S} puzzles/s")
    print(f"identical uint8 puzzles: {same}")
