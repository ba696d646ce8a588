"""Load a trunk from a checkpoint (or initialise one at random) and run an evaluation on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from permrl.checkpoint import load_checkpoint
from permrl.config import Config, config_from_dict, load_config
from permrl.data.sources import open_source
from permrl.data.video_sources import VIDEO_SOURCE_KINDS, open_video_source
from permrl.evaluate.knn import evaluate_knn
from permrl.evaluate.video_knn import evaluate_video_knn
from permrl.models.trunk import CaffeNetBN
from permrl.train import RunError, build_model, resolve_device


def load_trunk(
    checkpoint: str | Path | None, random_init: bool = False, preset: str = "cpu", seed: int = 0
) -> tuple[CaffeNetBN, Config, str]:
    """The trunk to evaluate, its config and a one-word description of where it came from.

    With `random_init`, the architecture comes from the checkpoint's config when one is given
    (so the baseline has exactly the trained network's shape), else from the preset.
    """
    if checkpoint is None and not random_init:
        raise RunError("give --checkpoint CKPT, or --random-init for the baseline")
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        cfg = config_from_dict(ckpt["config"])
    else:
        ckpt, cfg = None, load_config(preset=preset)
    torch.manual_seed(seed)
    model = build_model(cfg)
    if ckpt is not None and not random_init:
        model.load_state_dict(ckpt["model"])
        return model.trunk, cfg, "checkpoint"
    return model.trunk, cfg, "random-init"


def is_video_source(spec: str) -> bool:
    return spec.split("?", 1)[0].split(":", 1)[0] in VIDEO_SOURCE_KINDS


def knn(
    trunk: CaffeNetBN, cfg: Config, train: str, test: str, *, layer: str | None = None,
    bn_stats: str = "gallery", device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Image or video retrieval, by the kind of the two sources (both must be alike)."""
    if is_video_source(train) != is_video_source(test):
        raise RunError(f"--train {train!r} and --test {test!r}: both must be image sources or "
                       "both video sources")
    common = {"layer": layer or cfg.eval.layer, "input_size": cfg.eval.input_size,
              "conv1_stride": cfg.eval.conv1_stride, "bn_stats": bn_stats, "device": device,
              "workers": cfg.data.workers}
    try:
        if is_video_source(train):
            return evaluate_video_knn(trunk, open_video_source(train), open_video_source(test),
                                      **common)
        return evaluate_knn(trunk, open_source(train), open_source(test), **common)
    except ValueError as e:  # unlabelled source, unknown layer, empty set: the user's to fix
        if type(e) is not ValueError:
            raise
        raise RunError(str(e)) from None


def knn_from_checkpoint(
    checkpoint: str | Path | None, train: str, test: str, *, layer: str | None = None,
    bn_stats: str = "gallery", random_init: bool = False, preset: str = "cpu",
) -> dict[str, Any]:
    """`permrl eval knn`: retrieval Top-k of a checkpoint's (or a random) trunk."""
    trunk, cfg, origin = load_trunk(checkpoint, random_init, preset)
    device = resolve_device(cfg.train.device)
    result = knn(trunk.to(device), cfg, train, test, layer=layer, bn_stats=bn_stats,
                 device=device)
    result["network"] = origin if checkpoint is None else f"{origin} {checkpoint}"
    return result
