"""Nearest-neighbour retrieval on frozen features (design §7, paper Table 1 and Fig. 5).

Test items are queries, training items the gallery, similarity is the cosine of flattened
features (pool5 by default). A query is a hit at k if its class is among the classes of its k
nearest gallery items (recall@k, not a weighted vote). Ties are broken by gallery index, so the
numbers are exact and reproducible; they are computed without sorting, from the rank of the
first same-class gallery item.

BatchNorm statistics are re-estimated on the gallery images by default (fair for every network,
random init included); the stored statistics remain an option.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from permrl.data.samples import normalise_tiles
from permrl.models.trunk import BLOCKS

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
BN_STATS: tuple[str, ...] = ("gallery", "stored")  # BN statistics re-estimated, or the trunk's
PRECISIONS: tuple[str, ...] = ("float32", "bf16")
"""float32: exact features (the default, the numbers papers compare); bf16: the trunk under
bf16 autocast with NHWC inputs and weights (fast on a GPU; similarities stay float32)."""


def check_precision(precision: str) -> None:
    """ValueError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def _unit_rows(x: Tensor) -> Tensor:
    """L2-normalise the rows of a (N, D) tensor; a zero row stays zero."""
    x = x.reshape(x.shape[0], -1)
    if not x.is_floating_point():
        x = x.float()
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, torch.ones_like(norm)), 0.0)


def first_hit_rank(
    query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor, chunk: int = 1024
) -> Tensor:
    """Per query, the 0-based rank of its first same-class gallery item (-1: none in gallery).

    Ranking is by cosine similarity, descending, ties by gallery index ascending. The rank is
    #(sim > s*) + #(sim == s* and index < i*), where s* is the best same-class similarity and
    i* the lowest index reaching it. Negative labels are "no class" and never match.
    Memory is O(chunk * len(gallery)).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    q, g = _unit_rows(query), _unit_rows(gallery)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature sizes differ: queries {q.shape[1]}, gallery {g.shape[1]}")
    dtype = torch.promote_types(q.dtype, g.dtype)
    q, g = q.to(dtype), g.to(dtype)
    ql = torch.as_tensor(query_labels, device=q.device).reshape(-1).long()
    gl = torch.as_tensor(gallery_labels, device=g.device).reshape(-1).long()
    if ql.numel() != q.shape[0] or gl.numel() != g.shape[0]:
        raise ValueError("need one label per query and per gallery item")
    n_gallery = g.shape[0]
    index = torch.arange(n_gallery, device=g.device)
    ranks = torch.empty(q.shape[0], dtype=torch.long)
    for start in range(0, q.shape[0], chunk):
        sim = q[start : start + chunk] @ g.T  # (c, G)
        labels = ql[start : start + chunk]
        same = (labels[:, None] == gl[None, :]) & (gl[None, :] >= 0)
        s_star = torch.where(same, sim, float("-inf")).amax(dim=1, keepdim=True)
        best = same & (sim == s_star)
        i_star = torch.where(best, index, n_gallery).amin(dim=1, keepdim=True)
        rank = (sim > s_star).sum(1) + ((sim == s_star) & (index < i_star)).sum(1)
        ranks[start : start + chunk] = torch.where(same.any(1), rank, -1).cpu()
    return ranks


def retrieval_topk(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    chunk: int = 1024,
) -> dict[str, Any]:
    """Recall@k of cosine nearest-neighbour retrieval, ties broken by gallery index.

    Returns {"top1": fraction, ..., "queries": n, "gallery": n, "skipped_k": [...]}; a k larger
    than the gallery is left out (listed in "skipped_k", with a warning), not clipped. Queries
    whose class is absent from the gallery never hit.
    """
    n_query, n_gallery = int(query.shape[0]), int(gallery.shape[0])
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"need queries and gallery items, got {n_query} and {n_gallery}")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    kept = sorted({k for k in ks if k <= n_gallery})
    skipped = sorted({k for k in ks if k > n_gallery})
    if skipped:
        msg = f"top-k for k={skipped} left out: the gallery has only {n_gallery} items"
        warnings.warn(msg, stacklevel=2)
    ranks = first_hit_rank(query, query_labels, gallery, gallery_labels, chunk)
    found = ranks >= 0
    out: dict[str, Any] = {}
    for k in kept:
        out[f"top{k}"] = (found & (ranks < k)).sum().item() / n_query
    out.update(queries=n_query, gallery=n_gallery, skipped_k=skipped)
    return out


def normalise_images(images: Tensor) -> Tensor:
    """uint8 (B, 3, S, S) -> float, each image and channel to mean 0, std 1 (std 0 -> 1).

    The same normalisation the jigsaw tiles get in training (each tile by its own statistics).
    """
    return normalise_tiles(images.float().div(255))


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `module` that keep running statistics."""
    kinds = nn.modules.batchnorm._BatchNorm
    return [m for m in module.modules() if isinstance(m, kinds) and m.track_running_stats]


def reestimate_bn(
    trunk: nn.Module, batches: Iterable[Tensor], upto: str, conv1_stride: int | None
) -> nn.Module:
    """A copy of `trunk` in eval mode whose BN running statistics come from `batches`.

    Running stats are reset and re-accumulated as a cumulative average (momentum=None, every
    batch weighted by its size, so equal batches give exactly PyTorch's cumulative average) in
    train mode without gradients, up to block `upto`. BN layers the forward never reaches keep
    their stored statistics. `trunk` itself is left untouched.
    """
    model = copy.deepcopy(trunk)
    bns = _batchnorms(model)
    stored = {id(bn): (bn.momentum, copy.deepcopy(bn.state_dict())) for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
    device = next(model.parameters()).device
    seen = 0
    model.train()
    with torch.no_grad():
        for x in batches:
            n = int(x.shape[0])
            if n == 0:
                continue
            for bn in bns:
                bn.momentum = n / (seen + n)
            model(x.to(device), upto=upto, conv1_stride=conv1_stride)
            seen += n
    for bn in bns:
        momentum, state = stored[id(bn)]
        if int(bn.num_batches_tracked) == 0:
            bn.load_state_dict(state)
        bn.momentum = None if int(bn.num_batches_tracked) > 0 else momentum
    if seen == 0:
        warnings.warn("reestimate_bn got no images; stored BN statistics kept", stacklevel=2)
    return model.eval()


def extract_features(
    trunk: nn.Module,
    loader: Iterable[dict[str, Any]],
    upto: str,
    conv1_stride: int | None,
    device: str | torch.device,
    normalise_input: bool = True,
    precision: str = "float32",
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Flattened block-`upto` features of every image the loader yields, in eval mode.

    The loader yields collated dicts ("images", "index", "label", "skipped"). Returns
    (features (N, D) float32 cpu, labels (N,), indices (N,), skipped descriptions), rows
    ordered by dataset index. `normalise_input` applies `normalise_images` to uint8 images,
    on `device`. precision="bf16" runs the trunk under bf16 autocast with NHWC inputs (weights
    are made NHWC by `source_features`).
    """
    check_precision(precision)
    device = torch.device(device)
    params = list(trunk.parameters())
    model = trunk if not params or params[0].device == device else copy.deepcopy(trunk).to(device)
    was_training = model.training
    model.eval()
    fast = precision == "bf16"
    memory_format = torch.channels_last if fast else torch.contiguous_format
    feats, labels, indices, skipped = [], [], [], []
    try:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=fast):
            for batch in loader:
                skipped.extend(batch.get("skipped", []))
                x = batch["images"].to(device, non_blocking=True)
                if x.shape[0] == 0:
                    continue
                x = normalise_images(x) if normalise_input else x.float()
                x = x.contiguous(memory_format=memory_format)
                y = model(x, upto=upto, conv1_stride=conv1_stride)
                feats.append(y.flatten(1).float().cpu())
                labels.append(torch.as_tensor(batch["label"]).long().reshape(-1))
                indices.append(torch.as_tensor(batch["index"]).long().reshape(-1))
    finally:
        model.train(was_training)
    if not feats:
        empty = torch.zeros(0, dtype=torch.long)
        return torch.zeros(0, 0), empty, empty.clone(), skipped
    index = torch.cat(indices)
    order = torch.argsort(index, stable=True)
    return torch.cat(feats)[order], torch.cat(labels)[order], index[order], skipped


def _image_dataset_api() -> tuple[Any, Any]:
    """ImageDataset and collate_images from permrl.data (imported late: optional for retrieval)."""
    from permrl.data.sources import ImageDataset, collate_images

    return ImageDataset, collate_images


def check_feature_settings(layer: str, bn_stats: str) -> None:
    """ValueError unless `layer` is a trunk block and `bn_stats` is "gallery" or "stored"."""
    if layer not in BLOCKS:
        raise ValueError(f"unknown layer {layer!r}; choose one of {', '.join(BLOCKS)}")
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be 'gallery' or 'stored', not {bn_stats!r}")


def require_labels(source: Any, role: str, needed_by: str) -> None:
    """ValueError naming `needed_by` unless some item of `source` has a label (>= 0)."""
    labels = np.asarray(source.labels)
    if labels.size == 0 or not (labels >= 0).any():
        raise ValueError(f"{role} source {source.name!r} has no labels; {needed_by} needs them")


def source_features(
    trunk: nn.Module,
    sources: Sequence[Any],
    *,
    bn_source: Any,
    layer: str,
    input_size: int,
    conv1_stride: int | None,
    batch_size: int,
    workers: int,
    device: str | torch.device,
    precision: str = "float32",
) -> list[tuple[Tensor, Tensor, Tensor, list[str]]]:
    """`extract_features` of each source's centre crops (`input_size` px), in order.

    One copy of `trunk` on `device` serves every source; its BN statistics are first
    re-estimated on `bn_source`'s centre crops (`reestimate_bn`, in float32 always), or kept as
    stored when `bn_source` is None. `trunk` itself is left untouched.
    """
    check_precision(precision)
    image_dataset, collate = _image_dataset_api()
    device = torch.device(device)

    def loader(source: Any) -> DataLoader:
        dataset = image_dataset(source, input_size, crop="center")
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                          collate_fn=collate, pin_memory=device.type == "cuda")

    model = copy.deepcopy(trunk).to(device)
    if bn_source is not None:
        batches = (normalise_images(b["images"].to(device)) for b in loader(bn_source))
        model = reestimate_bn(model, batches, layer, conv1_stride)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    return [extract_features(model, loader(s), layer, conv1_stride, device, precision=precision)
            for s in sources]


def knn_features(
    trunk: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    layer: str,
    input_size: int,
    conv1_stride: int | None,
    bn_stats: Literal["gallery", "stored"] = "gallery",
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "float32",
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor], int]:
    """Gallery and query (features, labels, indices) of two labelled sources, and the skips.

    Centre crops at `input_size`; with bn_stats="gallery" (default) the BN statistics are first
    re-estimated on the gallery images, for every network alike (design §7).
    """
    check_feature_settings(layer, bn_stats)
    require_labels(train_source, "train", "kNN retrieval")
    require_labels(test_source, "test", "kNN retrieval")
    (g_feat, g_lab, g_idx, g_skip), (q_feat, q_lab, q_idx, q_skip) = source_features(
        trunk, [train_source, test_source],
        bn_source=train_source if bn_stats == "gallery" else None, layer=layer,
        input_size=input_size, conv1_stride=conv1_stride, batch_size=batch_size, workers=workers,
        device=device, precision=precision,
    )
    return (g_feat, g_lab, g_idx), (q_feat, q_lab, q_idx), len(g_skip) + len(q_skip)


def protocol_fields(
    train_source: Any, test_source: Any, layer: str, bn_stats: str, input_size: int,
    conv1_stride: int | None, feature_dim: int, skipped: int,
) -> dict[str, Any]:
    """What was measured, for the JSON result: sources, layer, BN statistics, protocol."""
    bn_text = (
        "BN statistics re-estimated on the gallery images"
        if bn_stats == "gallery"
        else "the trunk's stored BN statistics"
    )
    return dict(
        layer=layer,
        bn_stats=bn_stats,
        train_source=str(train_source.name),
        test_source=str(test_source.name),
        input_size=input_size,
        conv1_stride=conv1_stride,
        feature_dim=feature_dim,
        skipped=skipped,
        protocol=(
            f"cosine similarity of flattened {layer} features ({input_size} px center crops, "
            "per-image per-channel normalised), test items as queries and training items as "
            "gallery, recall@k (hit if the query's class is among its k nearest), ties broken "
            f"by gallery index, {bn_text}."
        ),
    )


def evaluate_knn(
    trunk: nn.Module,
    train_source: Any,
    test_source: Any,
    *,
    layer: str = "pool5",
    input_size: int,
    conv1_stride: int | None,
    bn_stats: Literal["gallery", "stored"] = "gallery",
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    ks: Sequence[int] = DEFAULT_KS,
    precision: str = "float32",
) -> dict[str, Any]:
    """kNN retrieval, test items as queries against training items (center crops).

    With bn_stats="gallery" (default) BN statistics are re-estimated on the gallery images
    first; "stored" keeps the trunk's own. The result holds the top-k recalls and the protocol.
    precision="bf16" computes the features under bf16 autocast (`PRECISIONS`).
    """
    (g_feat, g_lab, _), (q_feat, q_lab, _), skipped = knn_features(
        trunk, train_source, test_source, layer=layer, input_size=input_size,
        conv1_stride=conv1_stride, bn_stats=bn_stats, batch_size=batch_size, workers=workers,
        device=device, precision=precision,
    )
    device = torch.device(device)  # the similarities where the features were computed
    result = retrieval_topk(q_feat.to(device), q_lab, g_feat.to(device), g_lab, ks=ks)
    result.update(protocol_fields(train_source, test_source, layer, bn_stats, input_size,
                                  conv1_stride, int(g_feat.shape[1]), skipped))
    result["precision"] = precision
    return result
