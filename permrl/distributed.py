"""Training on several processes (design §8): `torchrun` + DistributedDataParallel.

`torchrun --nproc_per_node N -m permrl train ...` starts N copies of `permrl train`; each finds
RANK / WORLD_SIZE / LOCAL_RANK in its environment (`Distributed.from_environment`) and joins one
process group (gloo on CPU, nccl on CUDA). What is synchronised, and how:

- data: each process builds its contiguous block of every global batch
  (`batches.shard_positions`); the random draws of a step are made for the whole batch and each
  process keeps its rows, so the samples are those one process would have built;
- permutations: rank 0 draws them for the whole batch (the policy, its k-means grouping and
  its updates live there) and broadcasts them;
- gradients: DDP averages them; each process scales its summed loss by world size / global
  count of samples, so the average is the gradient of the global-batch mean;
- BatchNorm: batch statistics over the global batch (nn.SyncBatchNorm on CUDA; on CPU, where
  SyncBatchNorm refuses to run, `GlobalBatchNorm`: the same sums all-reduced with autograd);
- the validation state (Eq. 3, 4, 6): X_val split in blocks of whole sample chunks, the
  columns of the state gathered on every process;
- metrics, checkpoints, figures: rank 0 only. Stops (SIGINT/SIGTERM, non-finite loss) are
  agreed on by all processes at the end of each step.

One process (no torchrun) is `Distributed()`: every collective is the identity.
"""

from __future__ import annotations

import datetime
import inspect
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from permrl.errors import RunError, UserError

T = TypeVar("T")


# How long a process waits in a collective for the others. Rank 0 alone evaluates retrieval
# during training (eval.knn_every) and writes checkpoints while the others wait, which can take
# longer than NCCL's default of 10 minutes on a large gallery.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


class DistributedError(UserError):
    """A user-facing problem of the distributed set-up: one line."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; `world_size` 1 = a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun; none of them: one process."""
        if "WORLD_SIZE" not in os.environ:
            return cls()
        try:
            env = cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                      int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
        except (KeyError, ValueError):
            raise DistributedError("WORLD_SIZE is set but RANK / LOCAL_RANK are missing or not "
                                   "integers; launch with torchrun") from None
        if not 0 <= env.rank < env.world_size:
            raise DistributedError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
        return env

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # Process group --------------------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, nccl on CUDA); nothing for one process."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        options = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=self.rank, world_size=self.world_size,
                                timeout=COLLECTIVE_TIMEOUT, **options)

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        """Wait for every process (nothing for one process). After a run that ended normally on
        all of them: a peer that tears its connections down while another is still in its last
        collective can abort that one at exit (gloo, seen once under load as "terminate called
        without an active exception")."""
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def device_for(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda -> cuda:LOCAL_RANK, or the only GPU this process sees
        (a launcher that gives each task its own, e.g. SLURM --gpus-per-task=1)."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", 0 if torch.cuda.device_count() == 1 else self.local_rank)
        return device

    # Collectives (identities for one process) ---------------------------------------------
    def _comm(self, tensor: torch.Tensor) -> torch.Tensor:
        backend_cuda = dist.get_backend() == "nccl"
        return tensor.cuda() if backend_cuda else tensor.cpu()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over all processes (a new tensor on the input's device)."""
        if not self.enabled:
            return tensor.clone()
        out = self._comm(tensor.detach().clone())
        dist.all_reduce(out)
        return out.to(tensor.device)

    def average_gradients(self, module: nn.Module) -> None:
        """Every gradient of `module` replaced by its mean over the processes, in one
        all-reduce (what DDP does to the network's; the paired twin is not wrapped in DDP)."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        mean = self.sum(torch.cat([g.reshape(-1) for g in grads])) / self.world_size
        for g, value in zip(grads, mean.split([g.numel() for g in grads]), strict=True):
            g.copy_(value.view_as(g))

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's tensor on every process (same shape and dtype everywhere)."""
        if not self.enabled:
            return tensor
        out = self._comm(tensor.clone())
        dist.broadcast(out, src=0)
        return out.to(tensor.device)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only; its result, or the exception it raised, reaches every process
        (so a user error on rank 0 is the same one-line error everywhere, not a hang)."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # re-raised below, on every process
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def gather_columns(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """(rows, counts[rank]) blocks of every process -> (rows, sum(counts)), in rank order."""
        if not self.enabled:
            return local
        width = max(counts)
        padded = local.new_zeros((local.shape[0], width))
        padded[:, : local.shape[1]] = local
        comm = self._comm(padded.contiguous())
        parts = [torch.empty_like(comm) for _ in range(self.world_size)]
        dist.all_gather(parts, comm)
        return torch.cat([p[:, :n].cpu() for p, n in zip(parts, counts, strict=True)], dim=1)


class AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of each process's input is the sum of
    the gradients of all processes' outputs (every process's loss depends on the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return AllReduceSum.apply(grad)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across processes.

    The per-channel sum and count, then the sum of squared deviations, are all-reduced by
    `AllReduceSum`, which is differentiable, so the gradient is that of BatchNorm on the whole
    batch. The running statistics use the global mean and the unbiased global variance, like
    BatchNorm on one process. Outside training (or with one process) it is plain BatchNorm.
    Under autocast the statistics and the output are float32 (a bf16 sum over a batch's
    positions loses the mean; every process, an empty one too, then sends float32).
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = x.new_full((1,), x.numel() / max(1, x.shape[1]))
        totals = AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class EmptySafeSyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm, with an empty batch under autocast sent as float32.

    A process with a full batch sends float32 statistics (batch_norm_stats accumulates bf16 /
    fp16 input in float32); one whose shard is empty (all unreadable) sends zeros in its
    input's dtype (torch.nn.modules._functions.SyncBatchNorm), bf16 under autocast: the
    all-gather would then mix sizes, a hang or garbage under NCCL. Its empty input in float32
    makes every process send the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0 and x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return super().forward(x)


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` -> global-batch statistics (SyncBatchNorm on CUDA)."""
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        for m in module.modules():
            if type(m) is nn.SyncBatchNorm:
                m.__class__ = EmptySafeSyncBatchNorm
        return module
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats, device=device)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            synchronise_batchnorm(child, device)
    return module


ONE_PROCESS = Distributed()  # the default: no torchrun, every collective the identity


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver on this machine, whether or not this torch build can use it."""
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def cpu_fallback_notice(name: str, device: torch.device) -> str | None:
    """One line when `train.device: auto` resolved to the CPU on a machine with an NVIDIA GPU
    (typically a CPU-only torch build, which is what constraints.txt installs)."""
    if name != "auto" or device.type != "cpu" or not nvidia_gpu_present():
        return None
    return (f"permrl: warning: an NVIDIA GPU is on this machine but torch {torch.__version__} "
            "cannot use it (a CPU-only build?): training on the CPU. Install a CUDA build of "
            "torch (docs/scale.md, \"Training on a GPU\") or set train.device=cpu to silence this")


def resolve_device(name: str, env: Distributed = ONE_PROCESS) -> torch.device:
    """auto -> cuda when available; under torchrun, this process's GPU (LOCAL_RANK)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device: cuda was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = env.device_for(torch.device(name))
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise RunError(f"LOCAL_RANK={env.local_rank} but this node has "
                       f"{torch.cuda.device_count()} GPUs; lower --nproc_per_node")
    return device


def no_buffer_sync() -> dict[str, bool]:
    """DDP keyword that stops the broadcast of buffers from rank 0 at every forward (our
    BatchNorm statistics are already global): renamed in torch 2.13."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
            else {"broadcast_buffers": False})
