"""kNN retrieval against a brute-force reference, BN re-estimation, feature extraction."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from permrl.evaluate.knn import (
    evaluate_knn,
    extract_features,
    first_hit_rank,
    knn_features,
    normalise_images,
    reestimate_bn,
    retrieval_topk,
)
from permrl.models.trunk import CaffeNetBN


def brute_force_topk(query, query_labels, gallery, gallery_labels, ks) -> dict[str, float]:
    """Per query: full stable sort of -cosine over the gallery, then class membership."""
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)

    def unit(v: np.ndarray) -> np.ndarray:
        n = np.sqrt(sum(float(a) * float(a) for a in v))
        return v / n if n > 0 else v

    gu = [unit(row) for row in g]
    hits = {k: 0 for k in ks}
    for i in range(len(q)):
        qu = unit(q[i])
        sim = np.array([sum(float(a) * float(b) for a, b in zip(qu, r, strict=True)) for r in gu])
        order = np.argsort(-sim, kind="stable")
        for k in ks:
            hits[k] += int(ql[i] in gl[order[:k]])
    return {f"top{k}": hits[k] / len(q) for k in ks}


def exact_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows whose normalised forms and cosines are exact in float32, so ties are exact:
    zero, +-2^a * e_i, or 2^a * (+-1, +-1, +-1, +-1)."""
    rows = np.zeros((n, 4), dtype=np.float32)
    for r in range(n):
        kind = rng.integers(0, 5)
        scale = float(2 ** rng.integers(0, 3))
        if kind == 0:
            continue
        if kind <= 2:
            rows[r, rng.integers(0, 4)] = scale * rng.choice([-1.0, 1.0])
        else:
            rows[r] = scale * rng.choice([-1.0, 1.0], size=4)
    return rows


def test_hand_computed_example() -> None:
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query_labels = torch.tensor([1, 0])
    # query 0 (class 1): sims 1, 0, .71 -> order g0, g2, g1 -> miss at 1, hit at 2.
    # query 1 (class 0): sims 0, 1, .71 -> order g1, g2, g0 -> miss at 1 and 2, hit at 3.
    out = retrieval_topk(query, query_labels, gallery, gallery_labels, ks=(1, 2, 3))
    assert out == {
        "top1": 0.0,
        "top2": 0.5,
        "top3": 1.0,
        "queries": 2,
        "gallery": 3,
        "skipped_k": [],
    }


def test_ties_broken_by_gallery_index() -> None:
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    query = torch.tensor([[3.0, 0.0]])
    # g1 (class 0) and g2 (class 1) tie at cosine 1; g1 has the lower index and ranks first.
    out = retrieval_topk(query, torch.tensor([1]), gallery, torch.tensor([1, 0, 1]), ks=(1, 2))
    assert (out["top1"], out["top2"]) == (0.0, 1.0)
    out = retrieval_topk(query, torch.tensor([0]), gallery, torch.tensor([1, 0, 1]), ks=(1,))
    assert out["top1"] == 1.0


def test_zero_vector_and_absent_class() -> None:
    gallery = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    # The zero query has similarity 0 to all; class 7 is not in the gallery.
    out = retrieval_topk(
        torch.tensor([[0.0, 0.0], [1.0, 0.0]]),
        torch.tensor([0, 7]),
        gallery,
        torch.tensor([0, 0]),
        ks=(1, 2),
    )
    assert (out["top1"], out["top2"]) == (0.5, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gallery = exact_features(rng, 30)
    gallery = np.concatenate([gallery, gallery[rng.integers(0, 30, size=10)]])  # duplicates
    gallery_labels = rng.integers(0, 5, size=len(gallery))
    gallery_labels[gallery_labels == 4] = 3  # class 4 never in the gallery
    query = np.concatenate([exact_features(rng, 25), gallery[:5]])
    query_labels = rng.integers(0, 5, size=len(query))
    ks = (1, 2, 5, 10, 40, 41)
    expected = brute_force_topk(query, query_labels, gallery, gallery_labels, ks[:-1])
    for chunk in (1, 3, 4096):
        with pytest.warns(UserWarning, match="left out"):
            out = retrieval_topk(
                torch.from_numpy(query),
                torch.from_numpy(query_labels),
                torch.from_numpy(gallery),
                torch.from_numpy(gallery_labels),
                ks=ks,
                chunk=chunk,
            )
        assert out["skipped_k"] == [41]
        assert "top41" not in out
        assert {k: out[k] for k in expected} == expected
        assert (out["queries"], out["gallery"]) == (30, 40)


def test_matches_brute_force_continuous() -> None:
    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(50, 16))
    query = rng.normal(size=(20, 16))
    gallery_labels = rng.integers(0, 6, size=50)
    query_labels = rng.integers(0, 6, size=20)
    ks = (1, 5, 10, 20, 50)
    expected = brute_force_topk(query, query_labels, gallery, gallery_labels, ks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = retrieval_topk(
            torch.from_numpy(query),
            torch.from_numpy(query_labels),
            torch.from_numpy(gallery),
            torch.from_numpy(gallery_labels),
            ks=ks,
            chunk=7,
        )
    assert {k: out[k] for k in expected} == expected
    assert out["skipped_k"] == []


def small_trunk(seed: int = 0) -> CaffeNetBN:
    torch.manual_seed(seed)
    return CaffeNetBN(width=0.125, conv1_stride=2)


def test_reestimate_bn_first_layer_matches_direct_mean() -> None:
    trunk = small_trunk()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, 32, 32, generator=gen) + 0.5 for n in (5, 3, 4)]
    model = reestimate_bn(trunk, batches, upto="pool5", conv1_stride=None)
    out = F.conv2d(torch.cat(batches), trunk.conv1.conv.weight, None, 2)
    expected = out.mean(dim=(0, 2, 3))
    torch.testing.assert_close(model.conv1.bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert not model.training
    assert model.conv1.bn.momentum is None
    assert int(model.conv5.bn.num_batches_tracked) == 3
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert trunk.conv1.bn.momentum == 0.1


def test_reestimate_bn_single_batch_variance_and_unreached_layers() -> None:
    trunk = small_trunk()
    trunk.conv3.bn.running_mean.fill_(3.0)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model = reestimate_bn(trunk, [x], upto="conv1", conv1_stride=4)
    out = F.conv2d(x, trunk.conv1.conv.weight, None, 4)
    torch.testing.assert_close(
        model.conv1.bn.running_var, out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5
    )
    # Layers the forward never reached keep their stored statistics.
    assert torch.all(model.conv3.bn.running_mean == 3.0)
    assert int(model.conv3.bn.num_batches_tracked) == 0


class ArrayImages(Dataset):
    """uint8 images in memory; index `missing` is unreadable."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, missing: int = -1) -> None:
        self.images, self.labels, self.missing = images, labels, missing

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"image": self.images[i], "index": i, "label": int(self.labels[i])}
        if i == self.missing:
            item.update(image=None, skipped=f"item {i}")
        return item


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    kept = [b for b in batch if b["image"] is not None]
    return {
        "images": torch.stack([b["image"] for b in kept]) if kept else torch.zeros(0, 3, 32, 32),
        "index": torch.tensor([b["index"] for b in kept], dtype=torch.long),
        "label": torch.tensor([b["label"] for b in kept], dtype=torch.long),
        "skipped": [b["skipped"] for b in batch if "skipped" in b],
    }


def test_extract_features_ordered_by_index() -> None:
    trunk = small_trunk().eval()
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (13, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.arange(13) % 4
    data = ArrayImages(images, labels, missing=6)
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=gen, collate_fn=collate)
    feats, labs, idx, skipped = extract_features(trunk, loader, "pool5", None, "cpu", True)
    keep = torch.tensor([i for i in range(13) if i != 6])
    assert torch.equal(idx, keep)
    assert torch.equal(labs, labels[keep])
    assert skipped == ["item 6"]
    with torch.no_grad():
        expected = trunk(normalise_images(images[keep])).flatten(1)
    assert feats.dtype == torch.float32 and feats.shape == expected.shape
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)


def test_normalise_images_per_image_per_channel() -> None:
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x[1, 2] = 17  # constant channel: std 0 -> 1, values 0
    y = normalise_images(x)
    torch.testing.assert_close(y.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5, rtol=0)
    assert torch.all(y[1, 2] == 0)
    torch.testing.assert_close(y[0].std(dim=(1, 2), correction=0), torch.ones(3))


class FakeSource:
    """In-memory ImageSource: colour-coded classes, texture noise per item."""

    def __init__(self, name: str, per_class: int, seed: int, labelled: bool = True) -> None:
        rng = np.random.default_rng(seed)
        self.name = name
        self.classes = ["red", "green", "blue"]
        self.labels = np.repeat(np.arange(3), per_class).astype(np.int64)
        if not labelled:
            self.labels[:] = -1
        self.images = []
        for c in np.repeat(np.arange(3), per_class):
            img = rng.integers(0, 80, size=(40, 48, 3))
            img[..., c] += 150
            img[:, : 8 * (c + 1)] //= 2
            self.images.append(img.astype(np.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> np.ndarray | None:
        return self.images[i]

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def _has_image_dataset() -> bool:
    try:
        from permrl.evaluate.knn import _image_dataset_api

        _image_dataset_api()
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_image_dataset(), reason="ImageDataset not available yet")
def test_evaluate_knn_end_to_end() -> None:
    train, test = FakeSource("train", 4, 0), FakeSource("test", 2, 1)
    trunk = small_trunk()
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    args = dict(layer="pool5", input_size=32, conv1_stride=None, batch_size=5, ks=(1, 5, 50))
    with pytest.warns(UserWarning, match="left out"):
        gallery = evaluate_knn(trunk, train, test, **args)
    with pytest.warns(UserWarning, match="left out"):
        stored = evaluate_knn(trunk, train, test, bn_stats="stored", **args)
    for key in ("top1", "top5", "queries", "gallery", "skipped_k", "layer", "bn_stats"):
        assert key in gallery
    for key in ("train_source", "test_source", "input_size", "conv1_stride", "feature_dim"):
        assert key in gallery
    assert "skipped" in gallery and "protocol" in gallery
    assert gallery["skipped_k"] == [50] and "top50" not in gallery
    assert (gallery["queries"], gallery["gallery"], gallery["skipped"]) == (6, 12, 0)
    assert gallery["feature_dim"] == trunk.channels["conv5"]
    assert (gallery["bn_stats"], stored["bn_stats"]) == ("gallery", "stored")
    assert "gallery images" in gallery["protocol"] and "stored" in stored["protocol"]
    assert 0.0 <= gallery["top1"] <= gallery["top5"] <= 1.0
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(ValueError, match="no labels"):
        evaluate_knn(trunk, FakeSource("unl", 2, 2, labelled=False), test, **args)
    with pytest.raises(ValueError, match="bn_stats"):
        evaluate_knn(trunk, train, test, bn_stats="batch", **args)  # type: ignore[arg-type]


@pytest.mark.skipif(not _has_image_dataset(), reason="ImageDataset not available yet")
def test_evaluate_knn_folder_source(tmp_path) -> None:
    from PIL import Image

    from permrl.data.sources import open_source

    fake = FakeSource("x", 3, 4)
    for split, items in (("train", range(0, 9)), ("test", range(1, 9, 3))):
        for i in items:
            folder = tmp_path / split / fake.classes[int(fake.labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(fake.images[i]).save(folder / f"{i}.png")
    (tmp_path / "train" / "red" / "broken.png").write_bytes(b"not an image")
    train = open_source(f"folder:{tmp_path / 'train'}")
    test = open_source(f"folder:{tmp_path / 'test'}")
    trunk = CaffeNetBN(width=0.125, conv1_stride=2)
    out = evaluate_knn(trunk, train, test, input_size=32, conv1_stride=None, ks=(1, 5))
    assert (out["queries"], out["gallery"], out["skipped"]) == (3, 9, 1)
    assert out["train_source"] == train.name and out["conv1_stride"] is None
    assert out["top1"] <= out["top5"] == 1.0


def test_bf16_features_are_float32_ones_to_bf16_rounding_and_keep_clear_ranks() -> None:
    """precision="bf16" really runs the trunk under bf16 autocast on NHWC inputs (the features
    differ from float32, a hook sees channels_last), its features are float32's to a few bf16
    steps, and every query whose float32 first hit is clear of every other gallery item by
    more than that rounding can move a cosine keeps its rank; recall@k may move by the near
    ties (measured on demo-photos with trained checkpoints: ranks of 6-14 % of queries change,
    Top-1 and Top-5 equal)."""
    from permrl.data.sources import open_source

    gallery = open_source("demo-photos?subset=gallery&crops=6")
    queries = open_source("demo-photos?subset=query&crops=6")
    trunk = small_trunk()
    formats: list[bool] = []
    trunk.conv1.register_forward_pre_hook(
        lambda _, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                       and not args[0].is_contiguous()))
    args = dict(layer="pool5", input_size=64, conv1_stride=2, batch_size=16, bn_stats="stored")
    (g32, gl, _), (q32, ql, _), _ = knn_features(trunk, gallery, queries, **args)
    assert not any(formats)
    formats.clear()
    (g16, _, _), (q16, _, _), _ = knn_features(trunk, gallery, queries, precision="bf16", **args)
    assert formats and all(formats)
    err = max(((a - b).norm(dim=1) / a.norm(dim=1)).max().item()
              for a, b in ((g32, g16), (q32, q16)))
    assert 0 < err < 2**-5  # bf16 keeps 8 bits: a few of its steps over eight layers
    unit_q, unit_g = F.normalize(q32, dim=1), F.normalize(g32, dim=1)
    sims = unit_q @ unit_g.T
    exact, fast = first_hit_rank(q32, ql, g32, gl), first_hit_rank(q16, ql, g16, gl)
    same = ql[:, None] == gl[None, :]
    best = torch.where(same, sims, -2.0).amax(1, keepdim=True)
    others = torch.where(same & (sims == best), 2.0, (sims - best).abs())
    moved = (F.normalize(q16, dim=1) @ F.normalize(g16, dim=1).T - sims).abs().max()
    clear = others.amin(1) > 2 * moved  # no other item can cross the first hit
    assert clear.any()
    assert torch.equal(fast[clear], exact[clear])
    with pytest.raises(ValueError, match="precision"):
        knn_features(trunk, gallery, queries, precision="fp16", **args)
