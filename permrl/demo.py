"""`make demo`: train the `cpu` preset on built-in data, then compare with random init.

Training data (`demo`): procedural dead-leaves images mixed with crops from the top half of
the photographs bundled with scikit-image. Evaluation never touches trained pixels: retrieval
uses crops of the bottom-left quarter of each photo as the gallery and of the bottom-right
quarter as queries, labelled by photo; puzzle accuracy is measured on X_val (images held out
from the training pool) and on the unseen bottom-right quarters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from permrl.config import load_config
from permrl.data.sources import SkipCounter, open_source
from permrl.evaluate.knn import evaluate_knn
from permrl.evaluate.run import load_trunk
from permrl.train import (
    build_model,
    geometry_of,
    load_validation_tiles,
    puzzle_accuracy,
    split_validation,
    train,
)

GALLERY = "demo-photos?subset=gallery"
QUERIES = "demo-photos?subset=query"
DEMO_STEPS = 2500


def run_demo(out: Path, steps: int | None = None, force: bool = True) -> dict:
    overrides = ["data.images=demo", f"train.steps={steps or DEMO_STEPS}", "train.val_every=500"]
    cfg = load_config(preset="cpu", overrides=overrides)
    print(f"permrl demo: training the cpu preset for {cfg.train.steps} steps on built-in data "
          f"({cfg.data.images}), run directory {out}")
    t0 = time.perf_counter()
    train(cfg, out, force=force)
    train_seconds = time.perf_counter() - t0

    source = open_source(cfg.data.images)
    _, val_idx = split_validation(len(source), cfg.train.val_size, cfg.seed)
    geometry = geometry_of(cfg)
    skips = SkipCounter()
    val_tiles = load_validation_tiles(source, val_idx, geometry, skips)
    unseen = open_source(QUERIES + "&limit=100")
    unseen_tiles = load_validation_tiles(unseen, np.arange(len(unseen)), geometry, skips)
    permutations = torch.from_numpy(
        torch.load(out / "checkpoint.pt", weights_only=False)["permutations"])

    rows = {}
    for name, random_init in (("jigsaw (trained)", False), ("random init", True)):
        trunk, _, _ = load_trunk(out / "checkpoint.pt", random_init=random_init)
        model = build_model(cfg)
        if not random_init:
            model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
        knn = evaluate_knn(trunk, open_source(GALLERY), open_source(QUERIES),
                           layer=cfg.eval.layer, input_size=cfg.eval.input_size,
                           conv1_stride=cfg.eval.conv1_stride, bn_stats="gallery")
        rows[name] = {
            "knn": knn,
            "puzzle_accuracy_xval": puzzle_accuracy(model, val_tiles, permutations),
            "puzzle_accuracy_unseen": puzzle_accuracy(model, unseen_tiles, permutations),
        }
    report = {"train_seconds": train_seconds, "steps": cfg.train.steps, "rows": rows,
              "permutations": len(permutations), "val_images": int(val_tiles.shape[0]),
              "unseen_images": int(unseen_tiles.shape[0])}
    table = format_table(report)
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "demo.md").write_text(table + "\n")
    print(table)
    return report


def format_table(report: dict) -> str:
    first = next(iter(report["rows"].values()))["knn"]
    ks = [k for k in ("top1", "top5", "top10", "top20", "top50") if k in first]
    lines = [
        f"Retrieval on held-out photo crops: {first['queries']} queries (bottom-right quarters), "
        f"{first['gallery']} gallery items (bottom-left quarters), labelled by photo; "
        f"cosine on {first['layer']} features, BN statistics: "
        f"{first['bn_stats']}. Puzzle accuracy over all {report['permutations']} permutations "
        f"of {report['val_images']} held-out X_val images and {report['unseen_images']} unseen "
        f"photo crops (chance {1 / report['permutations']:.1%}). Training: {report['steps']} "
        f"steps in {report['train_seconds']:.0f} s.",
        "",
        "| network | " + " | ".join(k.capitalize() for k in ks)
        + " | puzzle acc. X_val | puzzle acc. unseen |",
        "|---" * (len(ks) + 3) + "|",
    ]
    for name, row in report["rows"].items():
        cells = [f"{100 * row['knn'][k]:.1f}" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {100 * row['puzzle_accuracy_xval']:.1f} "
                     f"| {100 * row['puzzle_accuracy_unseen']:.1f} |")
    return "\n".join(lines)
