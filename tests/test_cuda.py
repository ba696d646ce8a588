"""CUDA paths (bf16 autocast, channels_last, SyncBatchNorm conversion): run where a GPU is.

This project's development machines have no GPU, so these tests skip there; on a machine with
one they check what the CPU tests cannot: training runs on CUDA under bf16 autocast with finite
weights, and its first step agrees with the float32 CPU step to bf16 tolerance.
"""

from __future__ import annotations

import pytest
import torch
from tiny_config import tiny_overrides

from permrl.checkpoint import load_checkpoint
from permrl.config import load_config
from permrl.distributed import synchronise_batchnorm
from permrl.models.build import build_model
from permrl.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TINY = tiny_overrides(
    "model.dropout=0.0", "train.val_size=8", "train.schedule=constant", "train.optimizer=sgd",
    "train.lr=0.003", "tasks=[spatial, temporal]", "policy=reinforce", "cycle.sgd_steps=2",
    "cycle.episode_batches=1", "cycle.groups=10"
)


def test_s_plus_t_plus_p_trains_on_cuda_with_bf16(tmp_path):
    train(load_config(overrides=[*TINY, "train.steps=6", "train.device=cuda"]),
          tmp_path / "cuda", progress=False)
    weights = load_checkpoint(tmp_path / "cuda/checkpoint.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_one_cuda_bf16_step_is_close_to_the_cpu_step(tmp_path):
    for device in ("cpu", "cuda"):
        train(load_config(overrides=[*TINY, "train.steps=1", f"train.device={device}",
                                     "policy=uniform"]), tmp_path / device, progress=False)
    cpu = load_checkpoint(tmp_path / "cpu/checkpoint.pt")["model"]
    gpu = load_checkpoint(tmp_path / "cuda/checkpoint.pt")["model"]
    for name in cpu:
        torch.testing.assert_close(gpu[name].float(), cpu[name].float(), rtol=2e-2, atol=2e-3,
                                   msg=name)


def test_sync_batchnorm_on_cuda_keeps_the_state_dict():
    cfg = load_config(overrides=TINY)
    model = build_model(cfg)
    keys = set(model.state_dict())
    synced = synchronise_batchnorm(model, torch.device("cuda"))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    assert set(synced.state_dict()) == keys


def test_tiles_and_frames_built_on_cuda_equal_the_cpu_ones():
    """The step's random draws come from its CPU generator wherever the tiles are built, so a
    GPU batch is the CPU batch up to float rounding of the jitter (pow, exp)."""
    from permrl.config import model_tasks
    from permrl.tasks import prepare_task

    cfg = load_config(overrides=TINY)
    for task in model_tasks(cfg):
        from permrl.tasks import build_permutations

        data = prepare_task(cfg, task, build_permutations(cfg, task))
        batch = data.batches[3]
        cpu, gpu = data.batches.parts(batch, "cpu"), data.batches.parts(batch, "cuda")
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_finetune_crops_on_cuda_equal_the_cpu_crops():
    from permrl.evaluate.finetune import augment

    images = torch.randint(0, 256, (32, 3, 40, 44), dtype=torch.uint8)
    cpu = augment(images, 32, torch.Generator().manual_seed(1))
    gpu = augment(images.cuda(), 32, torch.Generator().manual_seed(1))
    assert torch.equal(gpu.cpu(), cpu)


def test_bf16_retrieval_on_cuda_is_close_to_float32():
    from permrl.data.sources import open_source
    from permrl.evaluate.knn import knn_features

    torch.manual_seed(0)
    trunk = build_model(load_config(overrides=TINY)).trunk
    gallery = open_source("demo-photos?subset=gallery&crops=6")
    queries = open_source("demo-photos?subset=query&crops=6")
    args = dict(layer="pool5", input_size=64, conv1_stride=2, device="cuda")
    (g32, _, _), (q32, _, _), _ = knn_features(trunk, gallery, queries, **args)
    (g16, _, _), (q16, _, _), _ = knn_features(trunk, gallery, queries, precision="bf16", **args)
    for exact, fast in ((g32, g16), (q32, q16)):
        assert ((exact - fast).norm(dim=1) / exact.norm(dim=1)).max() < 2**-5
