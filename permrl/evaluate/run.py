"""Load a trunk from a checkpoint (or initialise one at random) and run an evaluation on it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from permrl.checkpoint import load_checkpoint
from permrl.config import Config, config_from_dict, load_config
from permrl.data.sources import open_source
from permrl.data.video_sources import VIDEO_SOURCE_KINDS, open_video_source
from permrl.distributed import resolve_device
from permrl.evaluate.finetune import finetune
from permrl.evaluate.knn import evaluate_knn
from permrl.evaluate.probe import checkpoint_key, evaluate_probe
from permrl.evaluate.video_knn import VideoFrames, evaluate_video_knn
from permrl.models.build import build_model
from permrl.models.trunk import CaffeNetBN
from permrl.run_dir import RunError


@contextmanager
def user_errors() -> Iterator[None]:
    """A plain ValueError from an evaluation (bad layer, unlabelled or empty source) becomes a
    one-line RunError; its subclasses (SourceError, ...) are user errors already."""
    try:
        yield
    except ValueError as e:
        if type(e) is not ValueError:
            raise
        raise RunError(str(e)) from None


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
    bn_stats: str = "gallery", device: torch.device | str = "cpu", precision: str | None = None,
) -> dict[str, Any]:
    """Image or video retrieval, by the kind of the two sources (both must be alike)."""
    if is_video_source(train) != is_video_source(test):
        raise RunError(f"--train {train!r} and --test {test!r}: both must be image sources or "
                       "both video sources")
    common = {"layer": layer or cfg.eval.layer, "input_size": cfg.eval.input_size,
              "conv1_stride": cfg.eval.conv1_stride, "bn_stats": bn_stats, "device": device,
              "workers": cfg.data.workers, "precision": precision or cfg.eval.precision}
    with user_errors():
        if is_video_source(train):
            return evaluate_video_knn(trunk, open_video_source(train), open_video_source(test),
                                      **common)
        return evaluate_knn(trunk, open_source(train), open_source(test), **common)


def knn_from_checkpoint(
    checkpoint: str | Path | None, train: str | None, test: str | None, *,
    layer: str | None = None, bn_stats: str = "gallery", random_init: bool = False,
    preset: str = "cpu", precision: str | None = None,
) -> dict[str, Any]:
    """`permrl eval knn`: retrieval Top-k of a checkpoint's (or a random) trunk. A gallery or
    query source not given is the config's `eval.knn_train` / `eval.knn_test`."""
    trunk, cfg, origin = load_trunk(checkpoint, random_init, preset)
    train, test = train or cfg.eval.knn_train, test or cfg.eval.knn_test
    if train == test:
        warnings.warn(f"gallery and queries are the same source ({train}): every query finds "
                      "itself, so Top-1 is 1.0 by construction; use disjoint sources, e.g. "
                      "?subset=gallery and ?subset=query", stacklevel=2)
    device = resolve_device("auto")  # where it runs now, not where it trained
    result = knn(trunk.to(device), cfg, train, test, layer=layer, bn_stats=bn_stats,
                 device=device, precision=precision)
    result["network"] = origin if checkpoint is None else f"{origin} {checkpoint}"
    return result


def open_any(spec: str) -> Any:
    """An image source, or a video source (its frames seen as images where a probe needs it)."""
    return open_video_source(spec) if is_video_source(spec) else open_source(spec)


def probe_from_checkpoint(
    checkpoint: str | Path | None, train: str, test: str, *, layer: str = "pool5",
    head: str = "linear", random_init: bool = False, preset: str = "cpu",
    cache_dir: str | Path | None = None, bn_stats: str = "gallery", epochs: int = 30,
    precision: str | None = None,
) -> dict[str, Any]:
    """`permrl eval probe` (Table 2): a linear or MLP classifier on frozen features."""
    trunk, cfg, origin = load_trunk(checkpoint, random_init, preset)
    device = resolve_device("auto")  # where it runs now, not where it trained
    cache = Path(cache_dir) if cache_dir else (
        Path(checkpoint).parent / "features" if checkpoint else Path(".permrl-cache"))
    sources = []
    for spec in (train, test):
        source = open_any(spec)
        sources.append(VideoFrames(source) if is_video_source(spec) else source)
    with user_errors():
        result = evaluate_probe(
            trunk.to(device), sources[0], sources[1], layer=layer, head=head,
            input_size=cfg.eval.input_size, conv1_stride=cfg.eval.conv1_stride,
            cache_dir=cache, key=checkpoint_key(checkpoint, random_init), bn_stats=bn_stats,
            workers=cfg.data.workers, device=device, epochs=epochs,
            precision=precision or cfg.eval.precision,
        )
    result["network"] = origin if checkpoint is None else f"{origin} {checkpoint}"
    return result


def finetune_from_checkpoint(
    checkpoint: str | Path | None, train: str, test: str, *, steps: int, batch_size: int = 64,
    lr: float = 0.01, random_init: bool = False, preset: str = "cpu", seed: int = 0,
) -> dict[str, Any]:
    """`permrl eval finetune` (Tables 3-5): conv1..conv5 from the checkpoint, new fc layers."""
    trunk, cfg, origin = load_trunk(checkpoint, random_init, preset)
    device = resolve_device("auto")  # where it runs now, not where it trained
    with user_errors():
        result = finetune(
            trunk, open_any(train), open_any(test), input_size=cfg.eval.input_size,
            conv1_stride=cfg.eval.conv1_stride, steps=steps, batch_size=batch_size, lr=lr,
            device=device, seed=seed, workers=cfg.data.workers,
        )
    result["network"] = origin if checkpoint is None else f"{origin} {checkpoint}"
    return result
