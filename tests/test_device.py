"""Where a run trains, decided from the machine: launchers, CPU fallbacks, shared memory.

CPU-only machines stand in for GPU ones by patching what torch reports (is_available,
device_count) and whether an NVIDIA driver is present."""

from __future__ import annotations

import pytest
import torch

import permrl.distributed as distributed
import permrl.train as train_module
from permrl.config import load_config
from permrl.distributed import Distributed, cpu_fallback_notice, resolve_device
from permrl.run_dir import RunError
from permrl.tasks import shared_memory_notice
from permrl.train import train


def gpus(monkeypatch, count: int, driver: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    for module in (distributed, train_module):
        monkeypatch.setattr(module, "nvidia_gpu_present", lambda: driver)


def test_a_process_that_sees_one_gpu_uses_it_whatever_its_local_rank(monkeypatch):
    gpus(monkeypatch, 1)  # SLURM --gpus-per-task=1: each task sees only its own GPU
    assert resolve_device("auto", Distributed(3, 4, 3)) == torch.device("cuda", 0)
    gpus(monkeypatch, 4)  # torchrun on a 4-GPU node: GPU LOCAL_RANK
    assert resolve_device("cuda", Distributed(6, 8, 2)) == torch.device("cuda", 2)
    gpus(monkeypatch, 2)
    with pytest.raises(RunError, match="LOCAL_RANK=3 but this node has 2 GPUs"):
        resolve_device("auto", Distributed(3, 4, 3))


def test_auto_falling_back_to_the_cpu_beside_an_nvidia_gpu_says_so(monkeypatch):
    gpus(monkeypatch, 0, driver=True)  # a CPU-only torch on a GPU machine
    notice = cpu_fallback_notice("auto", resolve_device("auto"))
    assert notice.startswith("permrl: warning: an NVIDIA GPU is on this machine but torch ")
    assert cpu_fallback_notice("cpu", torch.device("cpu")) is None  # asked for: nothing
    gpus(monkeypatch, 0, driver=False)
    assert cpu_fallback_notice("auto", torch.device("cpu")) is None  # no GPU anywhere


def test_the_paper_preset_is_refused_on_the_cpu_unless_asked_for(monkeypatch, tmp_path):
    gpus(monkeypatch, 0, driver=True)
    cfg = load_config(preset="paper")
    with pytest.raises(RunError, match=r"^preset paper without a usable GPU: .* 350000 steps; "
                       r"set train.device=cpu .*install a CUDA build of torch\)$"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_small_shared_memory_is_said_with_its_numbers():
    cfg = load_config(preset="paper")  # 8 workers, 256 puzzles of 9 x 3 x 64 x 64 tiles
    batch = 256 * 9 * 3 * 64 * 64 * 4  # bytes, float32: 108 MiB
    assert shared_memory_notice(cfg, "spatial", free_bytes=8 * 4 * batch) is None
    assert shared_memory_notice(cfg, "spatial", free_bytes=64 * 2**20) == (
        "permrl: warning: /dev/shm has 64 MiB free, but 8 DataLoader workers x 4 spatial "
        "batches of up to 108 MiB need 3456 MiB: workers may die with a bus error. Give the "
        "container more (docker run --shm-size=8g) or lower data.workers")
    no_workers = load_config(preset="paper", overrides=["data.workers=0"])
    assert shared_memory_notice(no_workers, "spatial", free_bytes=0) is None


def test_on_cuda_every_batchnorm_becomes_one_that_sends_an_empty_batch_in_float32(monkeypatch):
    from torch import nn

    from permrl.distributed import EmptySafeSyncBatchNorm, synchronise_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(8))
    synced = synchronise_batchnorm(model, torch.device("cuda"))  # (conversion only: no GPU)
    assert [type(m) for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ] == [EmptySafeSyncBatchNorm] * 2
    received = []
    monkeypatch.setattr(nn.SyncBatchNorm, "forward", lambda self, x: received.append(x.dtype))
    bn = synced[1]
    for x in (torch.zeros(0, 4, 5, 5, dtype=torch.bfloat16), torch.zeros(0, 4, 5, 5),
              torch.zeros(2, 4, 5, 5, dtype=torch.bfloat16)):
        bn(x)
    # empty bf16 -> float32 (what a full process's statistics are); the rest untouched
    assert received == [torch.float32, torch.float32, torch.bfloat16]
