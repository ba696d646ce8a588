"""Samples per second per worker core: raw files against the prepared stores (`permrl prepare`).

    python benchmarks/data_path.py [--images 256] [--videos 24] [--steps 6]

ImageNet-sized JPEGs (500 x 375, quality 90; scikit-image's photographs, resized, with
per-image noise so that no two files are alike) are written to a temporary folder, then a
store is prepared from them (`permrl prepare`, paper preset: 256 px squares). One process (one
core) then builds paper-preset spatial batches (batch 64, 225 px puzzles as uint8: what a
DataLoader worker hands a GPU) from each, after one warm-up batch; the page cache holds both
(the disk is not measured). It prints each rate, the ratio to the raw path, the cores each needs
to feed the ~19k puzzles/s an H200 is estimated to train in bf16 (design §8), and checks that
both paths give the same uint8 puzzles.

Clips likewise: UCF-101-sized videos (320 x 240, 25 fps, 150 frames, MPEG-4 part 2, a keyframe
every 12 frames; the same photographs panning) against a store of their frames at 128 px
(`prepare --videos`), paper-preset clips (u = 8 frames of 64 px, stride 1..4, batch 32).
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
from permrl.data.batches import ClipBatches, PuzzleBatches, scaled_size
from permrl.data.builtin import DEMO_PHOTO_NAMES, demo_photo
from permrl.data.prepare import prepare_images, prepare_videos
from permrl.data.samples import geometry_of
from permrl.data.sources import open_source
from permrl.data.video_sources import open_video_source

GPU_PUZZLES_PER_S = 19_000  # paper preset on an H200 in bf16: the FLOP estimate of issue 24


def write_jpegs(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(demo_photo(name)).convert("RGB").resize((500, 375))
              for name in DEMO_PHOTO_NAMES]
    for i in range(count):
        base = np.asarray(photos[i % len(photos)], dtype=np.int16)
        noisy = np.clip(base + rng.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)


def write_videos(folder: Path, count: int) -> None:
    import av

    for i in range(count):
        photo = np.asarray(Image.fromarray(demo_photo(DEMO_PHOTO_NAMES[i % len(DEMO_PHOTO_NAMES)]))
                           .convert("RGB").resize((640, 240)))
        with av.open(str(folder / f"{i:03d}.avi"), "w") as out:
            stream = out.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.gop_size = 12
            stream.bit_rate = 2_000_000
            for t in range(150):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[:, 2 * t:][:, :320]),
                                                   format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def rate(batches: PuzzleBatches | ClipBatches, steps: int) -> tuple[float, list[torch.Tensor]]:
    """Puzzles per second of `steps` batches after one warm-up batch, and the batches."""
    batches[0]
    t0 = time.perf_counter()
    out = [batches[step]["uint8"] for step in range(1, steps + 1)]
    return sum(len(b) for b in out) / (time.perf_counter() - t0), out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--videos", type=int, default=24)
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
        videos = Path(tmp) / "videos"
        videos.mkdir()
        write_videos(videos, args.videos)
        t0 = time.perf_counter()
        prepare_videos(f"videos:{videos}", Path(tmp) / "clips", 128)
        prepare_videos_s = time.perf_counter() - t0
        t = cfg.temporal
        clip_rates = {}
        for name, spec in (("raw video files", f"videos:{videos}"),
                           ("prepared frames", f"prepared-videos:{Path(tmp) / 'clips'}")):
            source = open_video_source(spec)
            batches = ClipBatches(source, np.arange(len(source)), frames=t.frames,
                                  size=t.frame_size, stride_min=t.stride_min,
                                  stride_max=t.stride_max, crop_min=t.crop_min, batch_size=32,
                                  seed=0, grey_prob=t.grey_prob, colour_jitter=t.colour_jitter)
            clip_rates[name], _ = rate(batches, args.steps)
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
    print(f"clips: {args.videos} videos 320x240x150, paper preset (u = {cfg.temporal.frames} "
          f"frames of {cfg.temporal.frame_size} px), batch 32; prepare: "
          f"{args.videos / prepare_videos_s:.1f} videos/s on one core")
    base = clip_rates["raw video files"]
    for name, r in clip_rates.items():
        print(f"{name:16s} {r:7.0f} clips/s per core, x{r / base:.2f} the raw path")
