"""What a training run holds (`Run`) and how it starts (`start_run`): the run directory, Psi and
the data of each task, the model, its optimiser and schedule, restored from a checkpoint on
`--resume`; the state s_t of a task (computed once per step) and the checkpoint it writes.
`permrl.train` runs the loop on it.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from permrl.checkpoint import load_checkpoint, save_checkpoint
from permrl.config import Config, idle_policy, model_tasks, to_dict, to_yaml
from permrl.data.batches import shard_positions
from permrl.data.sources import open_source
from permrl.distributed import (
    Distributed,
    synchronise_batchnorm,
)
from permrl.models.build import build_model
from permrl.models.heads import OrderingNet
from permrl.permutations import permutation_checksum, reversal_twins
from permrl.policy.state import NetworkState, sharded_state
from permrl.policy.twin import PairedTwin
from permrl.run_dir import (
    MetricsLog,
    PermutationErrors,
    RunError,
    apply_changed_hyperparameters,
    check_resumable,
    prepare_run_dir,
)
from permrl.tasks import (
    TaskData,
    build_permutations,
    prepare_task,
    shared_memory_notice,
)


def make_optimizer(cfg: Config, model: torch.nn.Module):
    t = cfg.train
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=t.lr)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if t.schedule == "step":
            return 0.1 ** (step // t.step_size)
        return 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    final_loss: float
    val_accuracy: dict[str, float]
    skipped: int
    stop_signal: int = 0  # the signal that stopped the run early (0: it ran to the end)
    rank: int = 0  # under torchrun: which process this result is from (0 prints it)

    @property
    def interrupted(self) -> bool:
        return self.stop_signal != 0


@dataclass
class Run:
    """What a training run holds, built by `start_run`; rank 0 writes its files."""

    cfg: Config
    run_dir: Path
    env: Distributed
    device: torch.device
    model: OrderingNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    tasks: dict[str, TaskData]
    start: int  # steps already done (a resumed run)
    log: MetricsLog
    permutation_errors: PermutationErrors
    twin: PairedTwin | None = None  # the paired twin of the running episode (twin baseline)

    def __post_init__(self) -> None:
        self.perms = {n: torch.from_numpy(t.permutations) for n, t in self.tasks.items()}
        self.perms_on_device = {n: p.to(self.device) for n, p in self.perms.items()}
        self.reversal_twins = {n: torch.from_numpy(reversal_twins(p))
                               for n, p in self.perms.items()}
        self.states: dict[str, tuple[int, NetworkState]] = {}  # the last state of each task

    def state_of(self, name: str, done: int) -> NetworkState:
        """Eq. 3, 4, 6 on the task's X_val (exact, from cached features: design §6); X_val is
        split across the processes and the state gathered on all of them. Computed once per
        step: a validation on an episode boundary reuses the policy's state (same weights)."""
        if (last := self.states.get(name)) is not None and last[0] == done:
            return last[1]
        state = sharded_state(self.model, name, self.tasks[name].val_parts, self.perms[name],
                              self.env)
        self.permutation_errors.add(name, done, state)
        self.states[name] = (done, state)
        return state

    def validate(self, done: int) -> dict[str, float]:
        """Held-out puzzle accuracy of every task (1 - Eq. 6), logged and printed."""
        states = {n: self.state_of(n, done) for n in self.tasks}
        accuracy = {n: 1.0 - state.error for n, state in states.items()}
        record: dict[str, Any] = {"step": done}
        for n, acc in accuracy.items():
            record |= {f"{n}_val_accuracy": acc, f"{n}_val_error": 1 - acc,
                       f"{n}_val_samples": int(self.tasks[n].val_parts.shape[0])}
        said = {n: f"{acc:.3f}" for n, acc in accuracy.items()}
        if "temporal" in states:  # a clip's order told up to its direction (OPN's classes)
            both = states["temporal"].accuracy_up_to(self.reversal_twins["temporal"])
            record["temporal_val_accuracy_up_to_reversal"] = both
            said["temporal"] += f" ({both:.3f} up to reversal)"
        self.log.write(record)
        if self.env.is_main:
            tqdm.write(f"step {done}: held-out puzzle accuracy " + ", ".join(
                f"{n} {said[n]} ({self.tasks[n].val_parts.shape[0]} x {len(self.perms[n])} "
                "permutations)" for n in accuracy), file=sys.stderr)
        return accuracy

    def checkpoint(self, done: int) -> None:
        if not self.env.is_main:  # rank 0 writes; the others hold the same weights
            return
        tasks = self.tasks
        save_checkpoint({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": done, "config": to_dict(self.cfg),
            "world_size": self.env.world_size,
            "sampler": {n: t.sampler.state_dict() for n, t in tasks.items()},
            "permutations": {n: t.permutations for n, t in tasks.items()},
            "permutation_checksum": {n: permutation_checksum(t.permutations)
                                     for n, t in tasks.items()},
            "twin": self.twin.state_dict() if self.twin is not None else None,
        }, self.run_dir, done, keep=self.cfg.train.keep_checkpoints)
        self.permutation_errors.save()


SMALL_GPU_SHARE = 64  # samples per GPU below which a step is mostly launch overhead


def start_run(
    cfg: Config, run_dir: Path, env: Distributed, device: torch.device, *, resume: bool,
    force: bool, init_from: str | Path | None,
) -> Run:
    """The run directory, Psi and data of each task, the model and its optimiser, restored
    from the checkpoint of `--resume` (or from `init_from`'s weights)."""
    cfg = env.on_main(lambda: cfg)  # one config for all processes: rank 0's
    if cfg.train.batch_size < env.world_size:
        raise RunError(f"train.batch_size={cfg.train.batch_size} is the global batch; it must "
                       f"be at least the number of processes ({env.world_size})")
    if env.enabled and env.is_main:
        per = [len(shard_positions(cfg.train.batch_size, r, env.world_size))
               for r in range(env.world_size)]
        print(f"permrl: {env.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}"
              f"), global batch {cfg.train.batch_size} = {min(per)}"
              f"{'' if min(per) == max(per) else f'-{max(per)}'} per process, lr {cfg.train.lr:g} "
              "(train.batch_size and train.lr are global: the same run as on one process)",
              file=sys.stderr)
        if device.type == "cuda" and min(per) < SMALL_GPU_SHARE:
            print(f"permrl: warning: {min(per)} samples per GPU: kernel launches may dominate "
                  "the step; raise train.batch_size (and train.lr with it, the linear scaling "
                  "rule) to use the GPUs", file=sys.stderr)
    resume_from = env.on_main(lambda: prepare_run_dir(run_dir, resume, force))
    ckpt = env.on_main(lambda: load_checkpoint(resume_from) if resume_from else None)
    if ckpt is not None:
        check_resumable(ckpt, cfg, resume_from)
    if (idle := idle_policy(cfg)) and env.is_main:
        print(f"permrl: warning: {idle}", file=sys.stderr)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)  # the initial weights: the same on every process
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    # Per task: Psi (the checkpoint's when there is one), data with X_val held out, a sampler.
    names = model_tasks(cfg)
    init = None
    if init_from is not None and ckpt is None:
        init = env.on_main(lambda: load_checkpoint(init_from))
        if sorted(init["permutations"]) != names:
            raise RunError(f"{init_from} has tasks {sorted(init['permutations'])}, this run "
                           f"{names}")
    source = ckpt or init
    tasks = {name: prepare_task(cfg, name, source["permutations"][name] if source
                                else build_permutations(cfg, name), env) for name in names}
    for name in names if env.local_rank == 0 else []:
        if notice := shared_memory_notice(cfg, name):
            print(notice, file=sys.stderr)
    if cfg.eval.knn_every:  # fail now, not after knn_every steps
        for spec in (cfg.eval.knn_train, cfg.eval.knn_test):
            if not (open_source(spec).labels >= 0).any():
                raise RunError(f"eval.knn_every: source {spec!r} has no labels")

    model = build_model(cfg)
    if env.enabled:  # BatchNorm statistics of the global batch, as on one process
        model = synchronise_batchnorm(model, device)
    model = model.to(device, torch.float64 if cfg.train.float64 else None)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(cfg, model)
    if env.is_main:
        print(f"permrl: model {type(model).__name__} ("
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
              f"{device}; {cfg.train.steps} steps, first batches from "
              f"{cfg.data.workers or 'no'} DataLoader worker(s)", file=sys.stderr)
    if init is not None:  # weights and optimiser moments; the learning rate is this config's
        model.load_state_dict(init["model"])
        lrs = scheduler.get_last_lr()
        optimizer.load_state_dict(init["optimizer"])
        for group, base, lr in zip(optimizer.param_groups, scheduler.base_lrs, lrs, strict=True):
            group["initial_lr"], group["lr"] = base, lr
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        apply_changed_hyperparameters(ckpt["config"]["train"], cfg, optimizer, scheduler)
        for name, t in tasks.items():
            try:
                t.sampler.load_state_dict(ckpt["sampler"][name])
            except (KeyError, ValueError) as e:  # another sampler, or permrl 0.1's policy
                raise RunError(f"--resume: the {name} sampler state in {resume_from} does not "
                               f"fit this run ({type(e).__name__}: {e}); start a new run") from None
        start = ckpt["step"]
    if env.is_main and start < cfg.train.steps:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    elif env.is_main:
        print(f"permrl: {run_dir} has already trained its {start} steps; nothing to do",
              file=sys.stderr)
    resumed = start if ckpt else None
    run = Run(cfg, run_dir, env, device, model, optimizer, scheduler, tasks, start,
              MetricsLog(run_dir / "metrics.jsonl", resumed, enabled=env.is_main),
              PermutationErrors(run_dir / "permutation_errors.npz", resumed,
                                enabled=env.is_main))
    if ckpt is not None and ckpt.get("twin") is not None:  # stopped mid-episode
        run.twin = PairedTwin(model, optimizer)
        run.twin.load_state_dict(ckpt["twin"])
    return run


def uses_twin(cfg: Config) -> bool:
    """Whether the policy's reward compares with a paired twin (`permrl.policy.twin`)."""
    return cfg.policy in ("reinforce", "exp3") and cfg.cycle.reward_baseline == "twin"
