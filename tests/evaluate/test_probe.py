"""Frozen-feature probes: known answers on separable features, train-only standardisation,
and the on-disk feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from permrl.data.sources import ImageSource
from permrl.evaluate import probe
from permrl.evaluate.knn import knn_features
from permrl.evaluate.probe import cached_features, evaluate_probe, standardise, train_probe
from permrl.models.trunk import CaffeNetBN

SIZE = 36


def blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 8-D, std 0.5, centres 8.5 apart (separable: margin > 8 std)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[6.0] + [0.0] * 7, [0.0, 6.0] + [0.0] * 6, [-6.0, -6.0] + [0.0] * 6])
    x = torch.cat([c + 0.5 * torch.randn(n_per_class, 8, generator=g) for c in centres])
    y = torch.arange(3).repeat_interleave(n_per_class)
    return x * 10 + 3, y  # an arbitrary scale and offset: standardisation must undo it


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_probe_reaches_the_known_answer_on_separable_features(head: str) -> None:
    train_x, train_y = blobs(20, seed=0)
    test_x, test_y = blobs(10, seed=1)
    out = train_probe(train_x, train_y, test_x, test_y, head=head, epochs=40, lr=0.05,
                      batch_size=16, hidden=32, seed=0)
    assert out["test_accuracy"] == 1.0 and out["train_accuracy"] == 1.0
    assert out["classes"] == 3 and out["train_items"] == 60 and out["test_items"] == 30
    assert out["settings"]["head"] == head
    again = train_probe(train_x, train_y, test_x, test_y, head=head, epochs=40, lr=0.05,
                        batch_size=16, hidden=32, seed=0)
    assert again == out  # fully determined by the seed
    json.dumps(out)


def test_probe_leaves_the_global_rng_alone() -> None:
    x, y = blobs(5, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_probe(x, y, x, y, head="mlp", epochs=1, hidden=8)
    assert torch.equal(torch.rand(3), expected)


def test_standardise_by_hand_uses_training_statistics() -> None:
    train = torch.tensor([[0.0, 0.0, 5.0], [2.0, 4.0, 5.0]])  # mean (1, 2, 5), std (1, 2, 0)
    test = torch.tensor([[3.0, 6.0, 7.0], [1.0, 0.0, 5.0]])
    tr, te, mean, std = standardise(train, test)
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0, 5.0]))
    torch.testing.assert_close(std, torch.tensor([1.0, 2.0, 1.0]))  # constant dim: std 1
    torch.testing.assert_close(tr, torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(te, torch.tensor([[2.0, 2.0, 2.0], [0.0, -1.0, 0.0]]))


def test_probe_standardises_test_features_with_training_statistics() -> None:
    # 1-D: class 0 at -1, class 1 at +1. Both test items are class 1 (0.5 and 1.5); with the
    # test set's own statistics they would become -1 and +1 and one would be misclassified.
    train_x = torch.tensor([[-1.0]] * 10 + [[1.0]] * 10)
    train_y = torch.tensor([0] * 10 + [1] * 10)
    test_x, test_y = torch.tensor([[0.5], [1.5]]), torch.tensor([1, 1])
    out = train_probe(train_x, train_y, test_x, test_y, head="linear", epochs=30, lr=0.1,
                      batch_size=4)
    assert out["test_accuracy"] == 1.0


def tiny_source(name: str, n: int, seed: int) -> ImageSource:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 40, 44, 3), dtype=np.uint8)
    return ImageSource(name, images, np.arange(n) % 2, ["a", "b"])


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = probe.source_features

    def wrapped(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "source_features", wrapped)
    return calls


def test_cache_hit_on_second_call_and_misses_on_other_settings(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    trunk = CaffeNetBN(width=0.125, conv1_stride=2)
    train, test = tiny_source("train", 6, 0), tiny_source("test", 4, 1)
    calls = counting(monkeypatch)
    common = dict(input_size=SIZE, conv1_stride=2, cache_dir=tmp_path, bn_source=train,
                  batch_size=4)
    first = cached_features(trunk, test, layer="pool5", key="random-init:0", **common)
    assert len(calls) == 1
    second = cached_features(trunk, test, layer="pool5", key="random-init:0", **common)
    assert len(calls) == 1  # read from the cache, not extracted again
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert first[0].dtype == torch.float32 and first[0].shape[0] == 4
    assert first[2].tolist() == [0, 1, 2, 3] and first[1].tolist() == [0, 1, 0, 1]
    cached_features(trunk, test, layer="conv5", key="random-init:0", **common)
    assert len(calls) == 2
    cached_features(trunk, test, layer="pool5", key="random-init:1", **common)
    assert len(calls) == 3
    cached_features(trunk, test, layer="pool5", key="random-init:0", **common | {"bn_source": test})
    assert len(calls) == 4
    other = CaffeNetBN(width=0.125, conv1_stride=2)  # other weights, same key: a miss
    cached_features(other, test, layer="pool5", key="random-init:0", **common)
    assert len(calls) == 5
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 5 and all(f.startswith("features-") and f.endswith(".pt") for f in files)


def test_cached_features_reestimate_bn_on_the_training_images(tmp_path) -> None:
    torch.manual_seed(0)
    trunk = CaffeNetBN(width=0.125, conv1_stride=2)
    train, test = tiny_source("train", 6, 0), tiny_source("test", 4, 1)
    (_, _, _), (q_feat, _, _), _ = knn_features(
        trunk, train, test, layer="pool5", input_size=SIZE, conv1_stride=2, batch_size=4)
    feats, _, _ = cached_features(trunk, test, layer="pool5", input_size=SIZE, conv1_stride=2,
                                  cache_dir=tmp_path, key="k", bn_source=train, batch_size=4)
    torch.testing.assert_close(feats, q_feat)
    stored, _, _ = cached_features(trunk, test, layer="pool5", input_size=SIZE, conv1_stride=2,
                                   cache_dir=tmp_path, key="k", bn_stats="stored")
    assert not torch.allclose(stored, feats)


def test_evaluate_probe_is_json_and_second_head_reuses_features(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    trunk = CaffeNetBN(width=0.125, conv1_stride=2)
    train, test = tiny_source("train", 8, 0), tiny_source("test", 4, 1)
    calls = counting(monkeypatch)
    common = dict(layer="pool5", input_size=SIZE, conv1_stride=2, cache_dir=tmp_path, key="k",
                  epochs=2, batch_size=4)
    out = evaluate_probe(trunk, train, test, head="linear", **common)
    assert len(calls) == 2
    mlp = evaluate_probe(trunk, train, test, head="mlp", hidden=16, **common)
    assert len(calls) == 2
    json.dumps(out), json.dumps(mlp)
    assert out["train_items"] == 8 and out["test_items"] == 4 and out["classes"] == 2
    assert out["head"] == "linear" and mlp["head"] == "mlp" and out["layer"] == "pool5"
    assert 0.0 <= out["test_accuracy"] <= 1.0 and out["feature_dim"] > 0
    assert "training statistics" in out["protocol"] and "two-layer MLP" in mlp["protocol"]
    with pytest.raises(ValueError, match="no labels"):
        evaluate_probe(trunk, ImageSource("u", [np.zeros((8, 8, 3), np.uint8)]), test,
                       head="linear", **common)
