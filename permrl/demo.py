"""`make demo`: train S+T (the `cpu` preset) on built-in data, then compare with random init.

Training data: `demo` images (procedural dead leaves + crops of the top half of the photographs
bundled with scikit-image) for the spatial task, `demo-videos` clips (a virtual camera panning
and zooming over the top halves of the same photos) for the temporal task. Evaluation never
touches trained pixels: retrieval galleries come from the bottom-left quarter of each photo and
queries from the bottom-right quarter, labelled by photo (images: crops; videos: clips, 10
frames each); puzzle accuracy is measured on each task's X_val and on unseen photo crops.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from permrl.checkpoint import load_checkpoint
from permrl.config import load_config
from permrl.data.batches import validation_tiles
from permrl.data.sources import SkipCounter, open_source
from permrl.evaluate.run import knn, load_trunk
from permrl.train import build_model, geometry_of, puzzle_accuracy, train

IMAGE_GALLERY, IMAGE_QUERIES = "demo-photos?subset=gallery", "demo-photos?subset=query"
VIDEO_GALLERY = "demo-videos?subset=gallery&label=photo&count=56&size=64"
VIDEO_QUERIES = "demo-videos?subset=query&label=photo&count=56&size=64"
DEMO_STEPS = 2000
DEMO_OVERRIDES = [
    "tasks=[spatial, temporal]",
    "data.images=demo",
    "data.videos=demo-videos?count=400&size=64",
    "train.val_every=500",
]


def run_demo(out: Path, steps: int | None = None, force: bool = True) -> dict[str, Any]:
    cfg = load_config(preset="cpu", overrides=DEMO_OVERRIDES + [
        f"train.steps={steps or DEMO_STEPS}"])
    print(f"permrl demo: S+T, cpu preset, {cfg.train.steps} steps on built-in data "
          f"(images {cfg.data.images}, videos {cfg.data.videos}); run directory {out}")
    t0 = time.perf_counter()
    result = train(cfg, out, force=force)
    train_seconds = time.perf_counter() - t0

    ckpt = load_checkpoint(out / "checkpoint.pt")
    unseen = open_source(IMAGE_QUERIES + "&limit=100")
    unseen_tiles = validation_tiles(unseen, np.arange(len(unseen)), geometry_of(cfg),
                                    SkipCounter())
    rows = {}
    for name, random_init in (("S+T (trained)", False), ("random init", True)):
        trunk, _, _ = load_trunk(out / "checkpoint.pt", random_init=random_init)
        model = build_model(cfg)
        if not random_init:
            model.load_state_dict(ckpt["model"])
        spatial_perms = torch.from_numpy(ckpt["permutations"]["spatial"])
        rows[name] = {
            "images": knn(trunk, cfg, IMAGE_GALLERY, IMAGE_QUERIES),
            "videos": knn(trunk, cfg, VIDEO_GALLERY, VIDEO_QUERIES),
            "puzzle_unseen": puzzle_accuracy(model, "spatial", unseen_tiles, spatial_perms),
        }
    rows["S+T (trained)"]["puzzle_xval"] = result.val_accuracy
    report = {"train_seconds": train_seconds, "steps": cfg.train.steps, "rows": rows,
              "unseen_images": int(unseen_tiles.shape[0]),
              "permutations": {k: len(v) for k, v in ckpt["permutations"].items()}}
    table = format_table(report)
    (out / "demo.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "demo.md").write_text(table + "\n")
    print(table)
    return report


def format_table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    first = next(iter(rows.values()))
    img, vid = first["images"], first["videos"]
    ks = [k for k in ("top1", "top5", "top10", "top20", "top50") if k in img and k in vid]
    trained = rows["S+T (trained)"]
    lines = [
        f"S+T trained {report['steps']} steps in {report['train_seconds']:.0f} s. Retrieval "
        f"(cosine, {img['layer']}, BN statistics: {img['bn_stats']}), labelled by photo, on "
        "photo regions never trained on:",
        f"- images: {img['queries']} query crops (bottom-right quarters) vs {img['gallery']} "
        "gallery crops (bottom-left quarters);",
        f"- videos: {vid['frames_per_video']} frames per clip; frame level {vid['queries']} "
        f"queries vs {vid['gallery']} gallery frames (the paper's protocol), video level "
        f"{vid['video_level']['queries']} vs {vid['video_level']['gallery']} clips.",
        "",
        "| network | data | " + " | ".join(k.capitalize() for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for name, row in rows.items():
        for label, res in (("images", row["images"]), ("videos, frame level", row["videos"]),
                           ("videos, video level", row["videos"]["video_level"])):
            cells = " | ".join(f"{100 * res[k]:.1f}" for k in ks)
            lines.append(f"| {name} | {label} | {cells} |")
    perms = report["permutations"]
    xval = trained["puzzle_xval"]
    lines += [
        "",
        "Held-out puzzle accuracy, all permutations of each sample (chance "
        + ", ".join(f"{n} {1 / p:.1%}" for n, p in perms.items()) + "):",
        "| network | " + " | ".join(f"{n} X_val" for n in xval)
        + f" | spatial, {report['unseen_images']} unseen photo crops |",
        "|---|" + "---|" * (len(xval) + 1),
        "| S+T (trained) | " + " | ".join(f"{100 * a:.1f}" for a in xval.values())
        + f" | {100 * trained['puzzle_unseen']:.1f} |",
        "| random init | " + " | ".join("-" for _ in xval)
        + f" | {100 * rows['random init']['puzzle_unseen']:.1f} |",
    ]
    return "\n".join(lines)
