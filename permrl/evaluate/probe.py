"""Frozen-feature probes (design §7, paper Table 2): a linear classifier or a two-layer MLP trained
on the frozen features of a named trunk layer; the test accuracy is reported.

Protocol. Features are the flattened block-`layer` outputs of centre crops (`input_size` px,
per-image per-channel normalised, as for kNN retrieval), with the BatchNorm statistics
re-estimated on the training images for every network alike (random init included; the
trunk's stored statistics remain an option). Features are extracted once per (trunk, source,
layer, input size, conv1 stride, BN statistics) and cached on disk. The probe standardises
every feature dimension with the mean and standard deviation of the *training* features only,
then trains for a fixed number of epochs (no early stopping, no model or hyper-parameter
selection on the test set) with a fixed seed; the accuracy after the last epoch is reported.

The paper used ImageNet with the linear protocol of Zhang et al. (conv features pooled to about
9k dimensions) and the non-linear one of Noroozi & Favaro (fc6-fc8 trained on frozen conv
layers); here the heads are a linear layer and a Linear-ReLU-Dropout(0.5)-Linear MLP on the
flattened layer, on whatever labelled source is given.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from permrl.evaluate.knn import check_feature_settings, require_labels, source_features
from permrl.files import atomic_path

CACHE_VERSION = 1
"""Bumped whenever the cached content changes meaning (part of every cache file name)."""

PROBE_DEFAULTS: dict[str, Any] = dict(
    epochs=30, lr=0.01, weight_decay=5e-4, batch_size=256, optimizer="sgd", momentum=0.9,
    hidden=1024, dropout=0.5,
)
"""Fixed probe settings (nothing is tuned on the test set)."""


# Cache keys ----------------------------------------------------------------------------------


def checkpoint_key(checkpoint: str | os.PathLike[str] | None, random_init: bool = False,
                   seed: int = 0) -> str:
    """The cache key of a network: `random-init:<seed>` (with the checkpoint it takes its
    shape from, if any), else the checkpoint's absolute path, mtime (ns) and size."""
    if checkpoint is None or random_init:
        return f"random-init:{seed}" + ("" if checkpoint is None else f":{checkpoint}")
    path = Path(checkpoint).resolve()
    st = path.stat()
    return f"checkpoint:{path}:{st.st_mtime_ns}:{st.st_size}"


def trunk_fingerprint(trunk: nn.Module) -> str:
    """sha256 of the trunk's state dict (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, value in sorted(trunk.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_fields(
    *, key: str, source: Any, layer: str, input_size: int, conv1_stride: int | None,
    bn_stats: str, bn_source: Any, trunk: nn.Module, precision: str = "float32",
) -> dict[str, Any]:
    """What identifies a feature file (hashed into its name and stored in it). The precision
    is a field only when it is not float32, so float32 caches written before it keep their
    names."""
    fields = dict(
        version=CACHE_VERSION,
        key=str(key),
        weights=trunk_fingerprint(trunk),
        source=str(source.name),
        items=len(source),
        layer=layer,
        input_size=int(input_size),
        conv1_stride=None if conv1_stride is None else int(conv1_stride),
        bn_stats=bn_stats,
        bn_source=None if bn_source is None else str(bn_source.name),
        bn_items=None if bn_source is None else len(bn_source),
    )
    return fields if precision == "float32" else fields | {"precision": precision}


def cache_path(cache_dir: str | os.PathLike[str], fields: dict[str, Any]) -> Path:
    """`cache_dir/features-<sha256 of the fields>.pt`."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / f"features-{digest[:40]}.pt"


def _load_cache(path: Path, fields: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor] | None:
    """The cached (features, labels, indices), or None if absent, unreadable or not ours."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never fatal
        return None
    if not isinstance(data, dict) or data.get("fields") != fields:
        return None
    return data["features"], data["labels"], data["indices"]


def _save_cache(path: Path, fields: dict[str, Any], feats: Tensor, labels: Tensor,
                indices: Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"fields": fields, "features": feats, "labels": labels, "indices": indices},
                   tmp)


# Features ------------------------------------------------------------------------------------


def cached_features(
    trunk: nn.Module,
    source: Any,
    *,
    layer: str,
    input_size: int,
    conv1_stride: int | None,
    cache_dir: str | os.PathLike[str],
    key: str,
    bn_stats: Literal["gallery", "stored"] = "gallery",
    bn_source: Any = None,
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "float32",
) -> tuple[Tensor, Tensor, Tensor]:
    """(features (N, D) float32, labels (N,), dataset indices (N,)) of `source`'s readable
    images (centre crops), computed once and then read from `cache_dir`.

    bn_stats="gallery" (default) re-estimates the BN statistics on `bn_source` (the training
    split; `source` itself when None) first; "stored" keeps the trunk's own. The cache file
    name is a sha256 of `key`, the trunk's weights, the source name and size, layer, input
    size, conv1 stride and the BN statistics used, so any change misses the cache.
    """
    check_feature_settings(layer, bn_stats)
    if bn_stats == "gallery" and bn_source is None:
        bn_source = source
    if bn_stats == "stored":
        bn_source = None
    fields = cache_fields(key=key, source=source, layer=layer, input_size=input_size,
                          conv1_stride=conv1_stride, bn_stats=bn_stats, bn_source=bn_source,
                          trunk=trunk, precision=precision)
    path = cache_path(cache_dir, fields)
    hit = _load_cache(path, fields)
    if hit is not None:
        return hit
    [(feats, labels, indices, _)] = source_features(
        trunk, [source], bn_source=bn_source, layer=layer, input_size=input_size,
        conv1_stride=conv1_stride, batch_size=batch_size, workers=workers, device=device,
        precision=precision)
    feats = feats.float().contiguous()
    _save_cache(path, fields, feats, labels, indices)
    return feats, labels, indices


# Probes --------------------------------------------------------------------------------------


def standardise(train_x: Tensor, test_x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_z, test_z, mean, std): both sets standardised with the training mean and
    (population) std per dimension; a constant dimension gets std 1 (it becomes 0)."""
    train64 = train_x.reshape(train_x.shape[0], -1).double()
    mean = train64.mean(0)
    std = train64.std(0, unbiased=False) if train64.shape[0] > 1 else torch.ones_like(mean)
    std = torch.where(std > 0, std, torch.ones_like(std))
    test64 = test_x.reshape(test_x.shape[0], -1).double()
    return (((train64 - mean) / std).float(), ((test64 - mean) / std).float(), mean.float(),
            std.float())


def probe_head(head: str, dim: int, classes: int, hidden: int = 1024,
               dropout: float = 0.5) -> nn.Module:
    """`linear`: Linear(dim, classes); `mlp`: Linear-ReLU-Dropout-Linear with `hidden` units."""
    if head == "linear":
        return nn.Linear(dim, classes)
    if head == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(hidden, classes))
    raise ValueError(f"head must be 'linear' or 'mlp', not {head!r}")


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, device: torch.device,
              batch_size: int) -> float:
    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == y[start : start + batch_size]).sum())
    return correct / len(y)


def train_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    head: Literal["linear", "mlp"] = "linear",
    epochs: int = PROBE_DEFAULTS["epochs"],
    lr: float = PROBE_DEFAULTS["lr"],
    weight_decay: float = PROBE_DEFAULTS["weight_decay"],
    batch_size: int = PROBE_DEFAULTS["batch_size"],
    optimizer: Literal["sgd", "adam"] = PROBE_DEFAULTS["optimizer"],
    momentum: float = PROBE_DEFAULTS["momentum"],
    hidden: int = PROBE_DEFAULTS["hidden"],
    dropout: float = PROBE_DEFAULTS["dropout"],
    classes: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train a probe on frozen features; test accuracy after the last of `epochs` epochs.

    Items labelled < 0 (unlabelled) are dropped. Features are standardised with the training
    statistics. Cross-entropy, SGD (with momentum) or Adam, mini-batches reshuffled each epoch.
    Initialisation, shuffling and dropout all follow `seed` (the global RNG is left as it was).
    Nothing is selected on the test set.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', not {optimizer!r}")
    train_y = torch.as_tensor(train_y).long().reshape(-1)
    test_y = torch.as_tensor(test_y).long().reshape(-1)
    keep_tr, keep_te = train_y >= 0, test_y >= 0
    train_x, train_y = train_x[keep_tr], train_y[keep_tr]
    test_x, test_y = test_x[keep_te], test_y[keep_te]
    if len(train_y) == 0:
        raise ValueError("the probe needs labelled training items")
    n_classes = classes if classes is not None else int(
        max(int(train_y.max()), int(test_y.max()) if len(test_y) else 0) + 1)
    train_z, test_z, _, _ = standardise(train_x, test_x)
    device = torch.device(device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = probe_head(head, train_z.shape[1], n_classes, hidden, dropout).to(device)
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        shuffle = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        last_loss = float("nan")
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(train_y), generator=shuffle)
            total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits = model(train_z[idx].to(device))
                loss = loss_fn(logits, train_y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().double() * len(idx)  # read once per epoch
                seen += len(idx)
            last_loss = total.item() / seen
        test_acc = _accuracy(model, test_z, test_y, device, 4096)
        train_acc = _accuracy(model, train_z, train_y, device, 4096)
    settings: dict[str, Any] = dict(
        head=head, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        optimizer=optimizer, seed=seed,
    )
    if optimizer == "sgd":
        settings["momentum"] = momentum
    if head == "mlp":
        settings.update(hidden=hidden, dropout=dropout)
    return dict(
        test_accuracy=test_acc,
        train_accuracy=train_acc,
        final_train_loss=last_loss,
        train_items=len(train_y),
        test_items=len(test_y),
        classes=n_classes,
        feature_dim=int(train_z.shape[1]),
        settings=settings,
    )


def evaluate_probe(
    trunk: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    layer: str = "pool5",
    head: Literal["linear", "mlp"] = "linear",
    input_size: int,
    conv1_stride: int | None,
    cache_dir: str | os.PathLike[str],
    key: str,
    bn_stats: Literal["gallery", "stored"] = "gallery",
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    precision: str = "float32",
    **probe_options: Any,
) -> dict[str, Any]:
    """Table 2: a `head` probe on frozen `layer` features of the two labelled sources.

    BN statistics are re-estimated on the training images (bn_stats="gallery", default) for
    both splits. `probe_options` go to train_probe (epochs, lr, weight_decay, optimizer,
    hidden, ...; `probe_batch_size` is its batch size). Returns a JSON-able dict.
    """
    require_labels(train_source, "train", "a probe")
    require_labels(test_source, "test", "a probe")
    common = dict(layer=layer, input_size=input_size, conv1_stride=conv1_stride,
                  cache_dir=cache_dir, key=key, bn_stats=bn_stats,
                  bn_source=train_source if bn_stats == "gallery" else None,
                  batch_size=batch_size, workers=workers, device=device, precision=precision)
    tr_x, tr_y, _ = cached_features(trunk, train_source, **common)
    te_x, te_y, _ = cached_features(trunk, test_source, **common)
    options = dict(probe_options)
    if "probe_batch_size" in options:
        options["batch_size"] = options.pop("probe_batch_size")
    classes = len(train_source.classes) or None
    result = train_probe(tr_x, tr_y, te_x, te_y, head=head, seed=seed, device=device,
                         classes=classes, **options)
    s = result["settings"]
    bn_text = ("BN statistics re-estimated on the training images" if bn_stats == "gallery"
               else "the trunk's stored BN statistics")
    head_text = ("a linear classifier" if head == "linear" else
                 f"a two-layer MLP ({s['hidden']} hidden units, ReLU, dropout {s['dropout']})")
    result.update(
        layer=layer,
        head=head,
        bn_stats=bn_stats,
        precision=precision,
        train_source=str(train_source.name),
        test_source=str(test_source.name),
        input_size=input_size,
        conv1_stride=conv1_stride,
        skipped=(len(train_source) - len(tr_y)) + (len(test_source) - len(te_y)),
        protocol=(
            f"{head_text} trained with cross-entropy ({s['optimizer']}, lr {s['lr']}, weight "
            f"decay {s['weight_decay']}, batch {s['batch_size']}, {s['epochs']} epochs, fixed, "
            f"seed {s['seed']}) on frozen flattened {layer} features of {input_size} px centre "
            "crops (per-image per-channel normalised), each dimension standardised with the "
            f"training statistics, {bn_text}; test accuracy after the last epoch, nothing "
            "selected on the test set."
        ),
    )
    return result
