"""`make demo`: train S+T and S+T+P (the `cpu` preset, same seed and iterations) on built-in
data, then compare both with random init.

Training data: `demo` images (procedural dead leaves + crops of the top half of the photographs
bundled with scikit-image) for the spatial task, `demo-videos` clips (a camera moving forward
over the top halves of the same photos while balls fall or roll in and come to rest: an arrow
of time, permrl.data.builtin_videos) for the temporal task. Evaluation never
touches trained pixels: retrieval galleries come from the bottom-left quarter of each photo and
queries from the bottom-right quarter, labelled by photo (images: crops; videos: clips, 10
frames each); puzzle accuracy is measured on each task's X_val and on unseen photo crops.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from permrl.ablate import ablate
from permrl.checkpoint import load_checkpoint
from permrl.config import config_from_dict
from permrl.data.batches import validation_tiles
from permrl.data.images import resize_square
from permrl.data.samples import geometry_of
from permrl.data.sources import SkipCounter, open_source
from permrl.distributed import resolve_device
from permrl.evaluate.knn import knn_features
from permrl.evaluate.run import knn, load_trunk
from permrl.models.build import build_model
from permrl.policy.state import puzzle_accuracy
from permrl.report.html import write_report
from permrl.report.tables import format_table
from permrl.run_dir import Interrupted, RunError, last_validation

IMAGE_QUERIES = "demo-photos?subset=query"  # unseen photo crops for the puzzle accuracy
VIDEO_GALLERY = "demo-videos?subset=gallery&label=photo&count=56&size=64"
VIDEO_QUERIES = "demo-videos?subset=query&label=photo&count=56&size=64"
DEMO_STEPS = 600
DEMO_OVERRIDES = [  # the config of examples/table5.yaml: the demo is seed 0 of its S+T, S+T+P
    "tasks=[spatial, temporal]",
    "data.images=demo",
    "data.videos=demo-videos?count=400&size=64&frames=12",
    "temporal.stride_max=2",
    # A shorter policy cycle than the cpu preset's N = 100, so the short demo sees 13 episodes.
    "cycle.sgd_steps=40",
]
TABLE5_COMMAND = "make table5"  # 13 variants x 3 seeds of this config (README, Results)
WHAT_IT_SHOWS = (
    "permrl demo: what it shows: one run of S+T (uniform permutations) and one of S+T+P (the "
    "learned policy), the same seed, data and {steps} steps on small built-in data, compared "
    "with random init by retrieval on unseen photo regions and by held-out puzzle accuracy.\n"
    "permrl demo: what it cannot show: whether the policy helps. One seed at this scale moves "
    "retrieval by a few points from seed to seed; the comparison over 3 seeds with spread is "
    f"`{TABLE5_COMMAND}` (a few hours here), its table in the README and runs/table5/table.md.")
VARIANTS = ["S+T", "S+T+P"]


def run_demo(out: Path, steps: int | None = None, force: bool = True) -> dict[str, Any]:
    """Ablation of S+T vs S+T+P (one seed), extra evaluations, the table, the HTML report."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a directory")
    if out.exists() and any(out.iterdir()):
        if not ((out / "demo.json").exists() or (out / "ablation").exists()):
            raise RunError(f"{out} is not empty and not a previous demo; choose another --out")
        if force:
            shutil.rmtree(out)
    steps = steps or DEMO_STEPS
    every = max(1, steps // 6)  # validation and retrieval curves: 6 points
    overrides = DEMO_OVERRIDES + [f"train.steps={steps}", f"train.val_every={every}",
                                  f"eval.knn_every={every}"]
    print(WHAT_IT_SHOWS.format(steps=steps))
    print(f"permrl demo: {' vs '.join(VARIANTS)}, cpu preset, ablation directory "
          f"{out / 'ablation'}")
    t0 = time.perf_counter()
    try:
        ablation = ablate(out / "ablation", VARIANTS, seeds=1, preset="cpu", overrides=overrides)
    except Interrupted as e:
        raise Interrupted(e.signum, "the demo starts over when run again") from None
    train_seconds = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    for cell in ablation["cells"]:
        run_dir = Path(cell["run_dir"])
        cfg = config_from_dict(load_checkpoint(run_dir / "checkpoint.pt")["config"])
        rows[cell["variant"]] = evaluate(cfg, run_dir / "checkpoint.pt", random_init=False,
                                         images=cell["knn"])
        rows[cell["variant"]]["puzzle_xval"] = last_validation(run_dir / "metrics.jsonl")
    rows["random init"] = evaluate(cfg, run_dir / "checkpoint.pt", random_init=True)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    report = {"train_seconds": train_seconds, "steps": cfg.train.steps, "rows": rows,
              "unseen_images": UNSEEN_IMAGES,
              "permutations": {k: len(v) for k, v in ckpt["permutations"].items()}}
    table = format_table(report)
    (out / "demo.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "demo.md").write_text(table + "\n")
    print(table)
    trunk, _, _ = load_trunk(Path(ablation["cells"][-1]["run_dir"]) / "checkpoint.pt")
    save_neighbour_grid(trunk, cfg, out / "fig3_neighbours.npz")
    html = write_report(out)
    print(f"\nreport: {html}\nOne seed: for the policy's effect with spread over seeds, see "
          f"`{TABLE5_COMMAND}` and the README's results.")
    return report


def save_neighbour_grid(trunk: Any, cfg: Any, path: Path, rows: int = 6) -> None:
    """Fig. 3 data: one query of each of the first `rows` classes and its top-5 gallery items."""
    gallery, queries = open_source(cfg.eval.knn_train), open_source(cfg.eval.knn_test)
    (g_feat, g_lab, g_idx), (q_feat, q_lab, q_idx), _ = knn_features(
        trunk, gallery, queries, layer=cfg.eval.layer, input_size=cfg.eval.input_size,
        conv1_stride=cfg.eval.conv1_stride)
    g = torch.nn.functional.normalize(g_feat, dim=1)
    picked = [int(torch.nonzero(q_lab == c)[0]) for c in q_lab.unique()[:rows]]
    sims = torch.nn.functional.normalize(q_feat[picked], dim=1) @ g.T
    top = torch.topk(sims, 5, dim=1).indices

    def image(source: Any, i: int) -> np.ndarray:
        return resize_square(source.load(i), 64)

    np.savez_compressed(
        path,
        queries=np.stack([image(queries, int(q_idx[i])) for i in picked]),
        neighbours=np.stack([[image(gallery, int(g_idx[j])) for j in row] for row in top]),
        hits=(g_lab[top] == q_lab[picked][:, None]).numpy(),
        titles=np.array([queries.classes[int(q_lab[i])] for i in picked]),
    )


UNSEEN_IMAGES = 100


def evaluate(
    cfg: Any, checkpoint: Path, random_init: bool, images: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Image and video retrieval, and spatial puzzle accuracy on unseen photo crops."""
    trunk, _, _ = load_trunk(checkpoint, random_init=random_init)
    device = resolve_device(cfg.train.device)  # retrieval where training ran
    model = build_model(cfg)
    ckpt = load_checkpoint(checkpoint)
    if not random_init:
        model.load_state_dict(ckpt["model"])
    unseen = open_source(f"{IMAGE_QUERIES}&limit={UNSEEN_IMAGES}")
    unseen_tiles = validation_tiles(unseen, np.arange(len(unseen)), geometry_of(cfg),
                                    SkipCounter())
    spatial_perms = torch.from_numpy(ckpt["permutations"]["spatial"])
    return {
        "images": images or knn(trunk, cfg, cfg.eval.knn_train, cfg.eval.knn_test,
                                device=device),
        "videos": knn(trunk, cfg, VIDEO_GALLERY, VIDEO_QUERIES, device=device),
        "puzzle_unseen": puzzle_accuracy(model, "spatial", unseen_tiles, spatial_perms),
    }


