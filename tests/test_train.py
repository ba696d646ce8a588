"""Training loop: loss falls, resume is exact, the data of a step does not depend on workers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_config import tiny_overrides

from permrl.checkpoint import load_checkpoint
from permrl.config import load_config
from permrl.data.batches import PuzzleBatches, split_validation
from permrl.data.samples import geometry_of
from permrl.permutations import permutation_checksum
from permrl.train import RunError, train

TINY = tiny_overrides(
    "data.images=dead-leaves?count=120&size=80", "model.dropout=0.0", "spatial.permutations=4",
    "train.batch_size=16", "train.val_size=8", "train.log_every=2", "cycle.groups=10"
)


def tiny(*extra: str):
    return load_config(overrides=TINY + list(extra))


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def quadrant_images(folder, count=40, size=80):
    """Images whose four quadrants have different textures: a 2x2 puzzle learnable in steps."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        f = rng.uniform(6, 10)
        patterns = [np.sin(2 * np.pi * f * y), np.sin(2 * np.pi * f * x),
                    np.sin(2 * np.pi * f * (x + y)), np.sin(2 * np.pi * f * x) * np.sin(
                        2 * np.pi * f * y)]
        img = np.where(y < 0.5, np.where(x < 0.5, patterns[0], patterns[1]),
                       np.where(x < 0.5, patterns[2], patterns[3]))
        rgb = (127 + 120 * img[..., None] * rng.uniform(0.5, 1, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i}.png")
    return folder


def test_loss_falls(tmp_path):
    images = quadrant_images(tmp_path / "quadrants")
    cfg = tiny("train.steps=60", "train.lr=0.003", "train.schedule=constant",
               f"data.images=folder:{images}")
    result = train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    losses = [r["spatial_loss"] for r in records if "spatial_loss" in r]
    assert losses[0] == pytest.approx(np.log(4), abs=0.15)  # chance level at the start
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    assert result.steps == 60 and set(result.val_accuracy) == {"spatial"}


def test_resume_equals_uninterrupted(tmp_path):
    cfg = tiny("train.steps=12", "train.checkpoint_every=6", "model.dropout=0.5")
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at=6)
    assert load_checkpoint(tmp_path / "split/checkpoint.pt")["step"] == 6
    train(cfg, tmp_path / "split", resume=True, progress=False)
    full, split = weights(tmp_path / "full"), weights(tmp_path / "split")
    for name in full:
        assert torch.equal(full[name], split[name]), name
    assert records(tmp_path / "full") == records(tmp_path / "split")


def records(run_dir):
    """metrics.jsonl without the wall-clock field."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("samples_per_s", None)
        out.append(record)
    return out


def test_float64_trains_in_float64_and_its_first_step_is_the_float32_step(tmp_path):
    """train.float64 (the exactness checks of tests/test_distributed.py): float64 weights and
    BatchNorm statistics; from the same initial weights, data and permutations its first
    update equals the float32 one to float32 rounding."""
    runs = {}
    for dtype in ("false", "true"):
        cfg = tiny("train.steps=1", "train.optimizer=sgd", "train.lr=0.01",
                   "train.schedule=constant", f"train.float64={dtype}")
        train(cfg, tmp_path / dtype, progress=False)
        runs[dtype] = weights(tmp_path / dtype)
    for name, w in runs["true"].items():
        f32 = runs["false"][name]
        assert w.dtype == (torch.float64 if f32.is_floating_point() else f32.dtype), name
        torch.testing.assert_close(w.to(f32.dtype), f32, rtol=1e-4, atol=1e-5, msg=name)


def test_workers_do_not_change_the_result(tmp_path):
    train(tiny("train.steps=4"), tmp_path / "w0", progress=False)
    train(tiny("train.steps=4", "data.workers=2"), tmp_path / "w2", progress=False)
    a, b = weights(tmp_path / "w0"), weights(tmp_path / "w2")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_contents(tmp_path):
    cfg = tiny("train.steps=2")
    train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 2
    assert ckpt["permutations"]["spatial"].shape == (4, 4)
    assert ckpt["permutation_checksum"]["spatial"] == permutation_checksum(
        ckpt["permutations"]["spatial"])
    assert {"model", "optimizer", "scheduler", "sampler", "config", "world_size"} <= set(ckpt)
    assert (tmp_path / "run/config.yaml").exists()
    assert not list((tmp_path / "run").glob("*.tmp"))  # the atomic write left no temp file


def test_refuses_to_overwrite_a_run(tmp_path):
    cfg = tiny("train.steps=1")
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)
    train(cfg, tmp_path / "run", progress=False, force=True)
    with pytest.raises(RunError, match="does not exist"):
        train(cfg, tmp_path / "other", resume=True, progress=False)


def test_resume_rejects_a_different_model(tmp_path):
    train(tiny("train.steps=1"), tmp_path / "run", progress=False)
    fc6 = tiny().model.fc6
    with pytest.raises(RunError, match=rf"differs .*\(model\.fc6: {fc6} -> 8\)"):
        train(tiny("train.steps=2", "model.fc6=8"), tmp_path / "run", resume=True,
              progress=False)


def test_resume_with_fewer_steps_than_done_is_refused_and_keeps_the_config(tmp_path, capsys):
    train(tiny("train.steps=2"), tmp_path / "run", progress=False)
    before = (tmp_path / "run/config.yaml").read_text()
    with pytest.raises(RunError, match="train.steps=1 is fewer than the 2 steps already done"):
        train(tiny("train.steps=1"), tmp_path / "run", resume=True, progress=False)
    capsys.readouterr()
    again = train(tiny("train.steps=2", "train.lr=0.5"), tmp_path / "run", resume=True,
                  progress=False)
    assert again.steps == 2 and "already trained its 2 steps" in capsys.readouterr().err
    assert (tmp_path / "run/config.yaml").read_text() == before  # nothing ran: nothing rewritten


def test_validation_images_are_never_trained_on():
    cfg = tiny("train.steps=50")
    train_idx, val_idx = split_validation(120, 8, cfg.seed)
    assert not set(train_idx) & set(val_idx) and len(train_idx) + len(val_idx) == 120
    batches = PuzzleBatches(None, train_idx, geometry_of(cfg), 16, cfg.seed, 0.3, 0.2)  # type: ignore[arg-type]
    seen = np.concatenate([batches.items_of_step(s) for s in range(50)])
    assert not set(seen.tolist()) & set(val_idx.tolist())
    # An epoch visits every training image exactly once before repeating.
    per_epoch = len(train_idx) // cfg.train.batch_size
    first = np.concatenate([batches.items_of_step(s) for s in range(per_epoch)])
    assert len(set(first.tolist())) == len(first)


def test_a_few_dozen_photos_train_with_the_default_val_size(tmp_path, capsys):
    folder = quadrant_images(tmp_path / "photos", count=30)
    train(tiny("train.steps=2", "train.val_size=0", f"data.images=folder:{folder}"),
          tmp_path / "run", progress=False)
    assert "X_val (spatial): 4 of 30 images held out" in capsys.readouterr().err
    val = [r for r in records(tmp_path / "run") if "spatial_val_samples" in r]
    assert val[-1]["spatial_val_samples"] == 4


def test_too_small_source_is_a_clear_error(tmp_path):
    cfg = tiny("train.steps=1", "data.images=dead-leaves?count=5&size=80")
    with pytest.raises(RunError, match="val_size"):
        train(cfg, tmp_path / "run", progress=False)


def test_retrieval_during_training_is_logged_and_changes_nothing(tmp_path):
    knn = ["eval.knn_every=2", "eval.knn_train=demo-photos?subset=gallery&crops=2",
           "eval.knn_test=demo-photos?subset=query&crops=1", "model.dropout=0.3"]
    train(tiny("train.steps=4", *knn), tmp_path / "knn", progress=False)
    train(tiny("train.steps=4", "model.dropout=0.3"), tmp_path / "plain", progress=False)
    logged = [r for r in records(tmp_path / "knn") if "knn_top1" in r]
    assert [r["step"] for r in logged] == [2, 4] and "knn_top20" in logged[0]
    a, b = weights(tmp_path / "knn"), weights(tmp_path / "plain")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the evaluation leaves training untouched


def test_metrics_are_mirrored_to_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional and not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny("train.steps=4"), tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("spatial_loss")]
    assert steps == [2, 4] and "spatial_val_accuracy" in events.Tags()["scalars"]


def test_start_up_says_what_it_builds_before_the_first_step(tmp_path, capsys):
    cfg = tiny("train.steps=1")
    train(cfg, tmp_path / "run", progress=False)
    err = capsys.readouterr().err.splitlines()
    opening = [i for i, line in enumerate(err) if line.startswith("permrl: spatial: ")]
    model = [i for i, line in enumerate(err) if line.startswith("permrl: model ")]
    assert opening and model and opening[0] < model[0]
    assert f"{cfg.spatial.permutations} permutations; opening {cfg.data.images}" in err[opening[0]]
    assert "1 steps" in err[model[0]] and "on cpu" in err[model[0]]


def test_the_loop_reads_scalars_from_the_device_per_window_not_per_step(tmp_path, monkeypatch):
    """Loss and accuracy stay on the device between logging windows: the number of `.item()`
    reads in permrl's code does not grow with the steps of a window (it did: three per task
    and step). (torch's own optimiser reads its CPU step counters; those are not counted.)"""
    import sys as _sys

    calls = {"n": 0}
    real_item = torch.Tensor.item

    def counted(self):
        if _sys._getframe(1).f_globals.get("__name__", "").startswith("permrl"):
            calls["n"] += 1
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    counts = []
    for steps in (10, 30):
        calls["n"] = 0
        train(tiny(f"train.steps={steps}", f"train.log_every={steps}", "train.val_every=0",
                   f"train.checkpoint_every={steps}"), tmp_path / f"run{steps}", progress=False)
        counts.append(calls["n"])
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("where", ["none", "grad-nan", "grad-inf", "loss-nan", "loss-inf"])
def test_all_finite_equals_the_check_of_every_tensor(where):
    from permrl.bookkeeping import all_finite

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    loss = model(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    if where.startswith("grad"):
        grads[2][1, 3] = float("nan") if where == "grad-nan" else float("inf")
    if where.startswith("loss"):
        loss = loss.detach() * (float("nan") if where == "loss-nan" else float("inf"))
    naive = bool(torch.isfinite(loss).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    assert bool(all_finite(loss, model)) is naive
