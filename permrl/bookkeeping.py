"""What the training loop keeps besides the algorithm, each behind one small object:

- `StepGuard`: a step whose loss or gradient is not finite never moves the weights (nor the
  BatchNorm statistics): stop with a clear message, or skip it and lower the learning rate;
- `StepAgreement`: the one host sync of a step, the decisions every process takes together
  (skip a non-finite step, stop on SIGINT/SIGTERM), summed over the processes;
- `LogWindow`: loss and accuracy of the last `train.log_every` steps, kept on the device and
  read once per window.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from permrl.config import Config
from permrl.distributed import Distributed
from permrl.run_dir import GracefulStop, RunError


def all_finite(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """True (a bool tensor on the loss's device: no host sync) when the loss and every
    gradient are finite: the total gradient norm, one fused reduction (10x cheaper than a check
    per tensor), is NaN or inf otherwise. A finite gradient whose norm overflows float32
    (> 3e38) counts as non-finite too: a diverged step either way."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
    return torch.isfinite(total.to(loss.device) + loss.detach().float().sum())


class StepGuard:
    """Applies or refuses the optimiser step (`train.nan_policy`). Never reaches a checkpoint:
    a refused step leaves the weights, the optimiser and the BN buffers as they were."""

    def __init__(self, cfg: Config, model: torch.nn.Module, optimizer, scheduler) -> None:
        self.cfg, self.optimizer, self.scheduler = cfg, optimizer, scheduler
        self.bn_buffers = [b for name, b in model.named_buffers() if "running" in name]
        self.bn_before: list[torch.Tensor] = []
        self.skips = 0  # non-finite steps in a row

    def before_forward(self) -> None:
        if self.cfg.train.nan_policy == "lower_lr":  # a skipped step must not keep its BN update
            self.bn_before = [b.clone() for b in self.bn_buffers]

    def step(self, finite: bool, step: int) -> None:
        """The optimiser step when every process's loss and gradients were finite."""
        if finite:
            self.optimizer.step()
            self.skips = 0
            return
        self.optimizer.zero_grad(set_to_none=True)
        t = self.cfg.train
        hint = "the weights were not updated and the last checkpoint is intact"
        if t.nan_policy == "stop":
            raise RunError(f"non-finite loss or gradient at step {step}; {hint}; lower train.lr "
                           "(or set train.nan_policy=lower_lr) and continue with --resume")
        self.skips += 1
        if self.skips > t.nan_max_skips:
            raise RunError(f"non-finite loss or gradient in {self.skips} steps in a row (last: "
                           f"step {step}); {hint}; lower train.lr and continue with --resume")
        self.scheduler.base_lrs = [lr * t.nan_lr_factor for lr in self.scheduler.base_lrs]
        tqdm.write(f"permrl: non-finite loss or gradient at step {step}: step skipped, learning "
                   f"rate x{t.nan_lr_factor}", file=sys.stderr)
        for buffer, before in zip(self.bn_buffers, self.bn_before, strict=True):
            buffer.copy_(before)


class StepAgreement:
    """The decisions of a step, the same on every process: one stacked tensor summed over the
    processes, read with one host sync (a NaN step must be refused before the optimiser moves,
    so this sync stays)."""

    def __init__(self, env: Distributed, device: torch.device, stop: GracefulStop) -> None:
        self.env, self.device, self.stop = env, device, stop

    def __call__(self, finite: torch.Tensor) -> tuple[bool, bool]:
        """(every process finite, a stop signal reached some process)."""
        stop_asked = torch.tensor(float(self.stop.name is not None), dtype=torch.float64,
                                  device=self.device)
        non_finite, stops = self.env.sum(torch.stack([(~finite).double(), stop_asked])).tolist()
        return non_finite == 0, stops > 0


class LogWindow:
    """Summed loss, correct count and samples per task since the last `flush`, on the device."""

    def __init__(self, names: list[str], env: Distributed, device: torch.device) -> None:
        self.names, self.env, self.device = names, env, device
        self.reset()

    def reset(self) -> None:
        self.sums = {n: {"loss": torch.zeros((), dtype=torch.float64, device=self.device),
                         "correct": torch.zeros((), dtype=torch.long, device=self.device),
                         "seen": 0} for n in self.names}
        self.t0 = time.perf_counter()

    def add(self, name: str, summed_loss: torch.Tensor, logits: torch.Tensor,
            target: torch.Tensor) -> None:
        w = self.sums[name]
        w["loss"] += summed_loss.detach().double()
        w["correct"] += (logits.argmax(1) == target).sum()
        w["seen"] += len(target)

    def flush(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Means of the window over all processes (its one host sync), for metrics.jsonl and
        for the progress bar; then a new window."""
        elapsed = time.perf_counter() - self.t0
        totals = self.env.sum(torch.stack([
            torch.stack([w["loss"], w["correct"].double(),
                         torch.tensor(float(w["seen"]), dtype=torch.float64, device=self.device)])
            for w in self.sums.values()])).cpu()
        record: dict[str, Any] = {}
        postfix: dict[str, str] = {}
        for n, (loss_sum, correct, seen) in zip(self.sums, totals.tolist(), strict=True):
            if seen:
                record |= {f"{n}_loss": loss_sum / seen, f"{n}_accuracy": correct / seen}
                postfix |= {f"{n[0]}_loss": f"{record[f'{n}_loss']:.3f}",
                            f"{n[0]}_acc": f"{record[f'{n}_accuracy']:.3f}"}
        record["samples_per_s"] = totals[:, 2].sum().item() / max(elapsed, 1e-9)
        postfix["samples_s"] = f"{record['samples_per_s']:.0f}"
        self.reset()
        return record, postfix
