"""Self-supervised training: the whole loop in `train()`, read top to bottom.

Per step, for each active task (spatial, temporal, or both for S+T): the sampler picks a
permutation for every sample (uniform for now; the learned policy of Sect. 3.2 later), the parts
are shuffled (Eq. 1), the trunk sees all B*n parts in one call, cross-entropy on the permutation
index. In S+T the task losses are summed and back-propagated once; in S&T
(`train.serial_switch`) the spatial task trains alone until the switch, then the temporal task
from those weights. Every `val_every` steps the held-out puzzle error (Eq. 6) of each task over
all |Psi| x |X_val| pairs; every `checkpoint_every` steps an atomic checkpoint from which
`--resume` continues exactly (the data of step s is a pure function of (seed, s)).

Under torchrun the same function runs in every process; `permrl.distributed` says what is
shared how (each process builds its rows of the global batch, rank 0 draws the permutations and
runs the policy, DDP averages the gradients, rank 0 writes).
"""

from __future__ import annotations

import inspect
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from permrl.checkpoint import load_checkpoint, save_checkpoint
from permrl.config import TASKS, Config, idle_policy, task_steps, to_dict, to_yaml
from permrl.data.batches import (
    AUTO_VAL_RULE,
    ClipBatches,
    PuzzleBatches,
    ValidationError,
    shard_positions,
    split_validation,
    step_seed,
    validation_clips,
    validation_tiles,
)
from permrl.data.samples import PuzzleGeometry, shuffle_tiles
from permrl.data.sources import SkipCounter, open_source
from permrl.data.video_sources import open_video_source
from permrl.distributed import (
    ONE_PROCESS,
    Distributed,
    DistributedError,
    sharded_state,
    synchronise_batchnorm,
)
from permrl.evaluate.knn import evaluate_knn
from permrl.models.heads import OrderingNet, SpatialHead, TemporalHead
from permrl.models.trunk import CaffeNetBN
from permrl.permutations import (
    load_permutations,
    permutation_checksum,
    reversal_twins,
    select_permutations,
)
from permrl.policy.bandits import Exp3S, Hardness
from permrl.policy.reinforce import Reinforce
from permrl.policy.samplers import (
    GroupLearner,
    PermutationSampler,
    PolicySampler,
    UniformSampler,
)
from permrl.policy.state import NetworkState, compute_state
from permrl.run_dir import (
    GracefulStop,
    MetricsLog,
    PermutationErrors,
    RunError,
    apply_changed_hyperparameters,
    check_resumable,
    ignore_interrupts,
    last_validation,
    prepare_run_dir,
)


def geometry_of(cfg: Config) -> PuzzleGeometry:
    s = cfg.spatial
    return PuzzleGeometry(grid=s.grid, cell=s.cell, tile=s.tile)


def model_tasks(cfg: Config) -> list[str]:
    """Heads to build: the configured tasks, in canonical order."""
    return [t for t in TASKS if t in cfg.tasks]


def build_model(cfg: Config) -> OrderingNet:
    """CaffeNet-BN trunk + one head per task, each sized by its parts (design §4)."""
    m = cfg.model
    trunk = CaffeNetBN(width=m.width, conv1_stride=m.conv1_stride)
    heads: dict[str, torch.nn.Module] = {}
    if "spatial" in cfg.tasks:
        c, h, w = trunk.output_shape(cfg.spatial.tile)
        heads["spatial"] = SpatialHead(
            c * h * w, geometry_of(cfg).num_tiles, cfg.spatial.permutations,
            fc6_dim=m.fc6, fc7_dim=m.fc7, dropout=m.dropout,
        )
    if "temporal" in cfg.tasks:
        c, h, w = trunk.output_shape(cfg.temporal.frame_size)
        heads["temporal"] = TemporalHead(
            c * h * w, cfg.temporal.frames, cfg.temporal.permutations,
            fc6_dim=m.fc6, hidden=m.lstm, dropout=m.dropout,
        )
    return OrderingNet(trunk, heads, channels_last=m.channels_last)


def build_permutations(cfg: Config, task: str = "spatial") -> np.ndarray:
    """Psi of a task: from its `permutation_file`, or selected greedily by Hamming distance."""
    t = getattr(cfg, task)
    n = geometry_of(cfg).num_tiles if task == "spatial" else cfg.temporal.frames
    if t.permutation_file:
        perms = load_permutations(t.permutation_file)
        if perms.shape != (t.permutations, n):
            raise RunError(
                f"{task}.permutation_file holds {perms.shape[0]} permutations of "
                f"{perms.shape[1]}, the config asks for {t.permutations} of {n}"
            )
        return perms
    return select_permutations(t.permutations, n, seed=t.permutation_seed,
                               criterion=t.criterion, include_identity=t.include_identity,
                               exclude_reversals=task == "temporal" and t.exclude_reversals)


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


def active_tasks(cfg: Config, step: int) -> list[str]:
    """S, T, S+T: every configured task at every step; S&T: spatial, then temporal."""
    return [task for task in model_tasks(cfg) if step in task_steps(cfg, task)]


@dataclass
class TaskData:
    """What one ordering task brings to the loop: Psi, its sampler, data and X_val views."""

    name: str
    permutations: np.ndarray
    sampler: PermutationSampler
    batches: Dataset
    val_parts: torch.Tensor
    skips: SkipCounter = field(default_factory=SkipCounter)  # this process's, with names
    warned: bool = False
    attempted: int = 0  # items the loop tried to read, all processes (data.max_bad_fraction)
    unreadable: int = 0  # of which unreadable, all processes; X_val's included


def prepare_task(
    cfg: Config, task: str, permutations: np.ndarray, env: Distributed = ONE_PROCESS
) -> TaskData:
    """Open the task's source, hold out X_val, build the per-step batches (this process's
    shard of each); every process holds all of X_val."""
    skips = SkipCounter()
    tr, b = cfg.train, cfg.train.batch_size
    shard = {"rank": env.rank, "world_size": env.world_size}
    if env.is_main:  # start-up can take a while (built-in data is rendered): say what runs
        spec = cfg.data.images if task == "spatial" else cfg.data.videos
        print(f"permrl: {task}: {len(permutations)} permutations; opening {spec} and holding "
              "out X_val", file=sys.stderr)
    try:
        if task == "spatial":
            source = open_source(cfg.data.images)
            train_idx, val_idx = split_validation(len(source), tr.val_size, cfg.seed, "image")
            s = cfg.spatial
            batches: Dataset = PuzzleBatches(source, train_idx, geometry_of(cfg), b, cfg.seed,
                                             s.grey_prob, s.colour_jitter, **shard)
            val_parts = validation_tiles(source, val_idx, geometry_of(cfg), skips)
        else:
            source = open_video_source(cfg.data.videos)
            source.threads = cfg.data.decode_threads
            train_idx, val_idx = split_validation(len(source), tr.val_size, cfg.seed, "video")
            t = cfg.temporal
            clip = {"frames": t.frames, "size": t.frame_size, "stride_min": t.stride_min,
                    "stride_max": t.stride_max, "crop_min": t.crop_min}
            batches = ClipBatches(source, train_idx, batch_size=b, seed=cfg.seed,
                                  grey_prob=t.grey_prob, colour_jitter=t.colour_jitter, **clip,
                                  **shard)
            val_parts = validation_clips(source, val_idx, skips=skips, **clip)
    except ValidationError as e:
        raise RunError(str(e)) from None
    if tr.val_size == 0 and env.is_main:
        what = "images" if task == "spatial" else "videos"
        print(f"permrl: X_val ({task}): {len(val_idx)} of {len(source)} {what} held out "
              f"(train.val_size=0: {AUTO_VAL_RULE}; set it to choose)", file=sys.stderr)
    for note in source.notes if env.is_main else []:
        print(f"permrl: {note}", file=sys.stderr)
    if skips.count and env.is_main:
        print(f"permrl: X_val ({task}): {skips.warning_line()}", file=sys.stderr)
    return TaskData(task, permutations, make_sampler(cfg, task, len(permutations)), batches,
                    val_parts, skips, unreadable=skips.count)


def make_sampler(cfg: Config, task: str, num_permutations: int) -> PermutationSampler:
    """Uniform draws, or a learner over groups of Psi: the REINFORCE policy (`policy:
    reinforce`, Sect. 3.2) or an adaptive baseline (`exp3`, `hardness`)."""
    if cfg.policy == "uniform":
        return UniformSampler(num_permutations)
    r, b = cfg.reinforce, cfg.bandit
    seed = cfg.seed * 2 + TASKS.index(task)
    learner: GroupLearner
    if cfg.policy == "reinforce":
        learner = Reinforce(r.groups, hidden=r.hidden, lr=r.lr, entropy_weight=r.entropy_weight,
                            baseline_momentum=r.baseline_momentum, gamma=r.gamma,
                            horizon=r.horizon, advantage=r.advantage, prior=r.prior,
                            optimizer=r.optimizer, seed=seed)
    elif cfg.policy == "exp3":
        learner = Exp3S(r.groups, lr=b.exp3_lr, exploration=b.exploration, switch=b.exp3_switch)
    else:  # learns nothing from rewards: its episodes draw per sample
        learner = Hardness(r.groups, exploration=b.exploration)
        return PolicySampler(num_permutations, learner, r.groups, seed)
    return PolicySampler(num_permutations, learner, r.groups, seed, r.episode_actions)


def policy_phase(cfg: Config, done: int) -> str | None:
    """Where `done` iterations fall in the schedule of Sect. 3.2 (design §5).

    Cycles of N SGD iterations with the policy fixed, then an episode of K mini-batches:
    "episode_start" after the N iterations (validate -> s_t, groups, s_hat), "episode_end"
    after the K (validate -> E_{t+1}, reward, policy update).
    """
    if cfg.policy == "uniform" or done == 0:
        return None
    n, k = cfg.reinforce.sgd_steps, cfg.reinforce.episode_batches
    position = done % (n + k)
    return "episode_start" if position == n else "episode_end" if position == 0 else None


def puzzle_accuracy(
    model: OrderingNet, task: str, val_parts: torch.Tensor, permutations: torch.Tensor
) -> float:
    """Accuracy over all |Psi| x |X_val| permuted validation samples: 1 - Eq. 6 error.

    The trunk and fc6 run once per validation tile (frame); every permutation is then evaluated
    from the cached features (exact in eval mode, design §6).
    """
    return 1.0 - compute_state(model, task, val_parts, permutations).error


def retrieval_during_training(
    model: OrderingNet, cfg: Config, device: torch.device
) -> dict[str, Any]:
    """kNN Top-k of the current trunk on `eval.knn_train` / `eval.knn_test` (Fig. 5), with the
    same protocol as `permrl eval knn` (BN re-estimated on a copy; the model is untouched).
    The copy is a plain trunk: its BatchNorm never waits for other processes."""
    was_training = model.training
    trunk = CaffeNetBN(width=cfg.model.width, conv1_stride=cfg.model.conv1_stride).to(device)
    trunk.load_state_dict(model.trunk.state_dict())
    with torch.random.fork_rng(devices=[]):  # training's random stream stays untouched
        result = evaluate_knn(
            trunk, open_source(cfg.eval.knn_train), open_source(cfg.eval.knn_test),
            layer=cfg.eval.layer, input_size=cfg.eval.input_size,
            conv1_stride=cfg.eval.conv1_stride, device=device,
        )
    model.train(was_training)
    return {f"knn_{k}": v for k, v in result.items() if k.startswith("top")}


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


MIN_ITEMS_FOR_BAD_FRACTION = 100


def check_bad_fraction(cfg: Config, task: TaskData) -> None:
    """Stop when too much of the data is unreadable, rather than train on what is left."""
    n, bad = task.attempted, task.unreadable
    if n >= MIN_ITEMS_FOR_BAD_FRACTION and bad > cfg.data.max_bad_fraction * n:
        what = "image" if task.name == "spatial" else "video"
        raise RunError(f"{bad} of the {n} {what}s read so far ({bad / n:.0%}) were unreadable "
                       f"(first: {task.skips.first}), above data.max_bad_fraction="
                       f"{cfg.data.max_bad_fraction}; fix or remove them, or raise the limit")


def all_finite(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """True (a bool tensor on the loss's device: no host sync) when the loss and every
    gradient are finite: the total gradient norm, one fused reduction (10x cheaper than a check
    per tensor), is NaN or inf otherwise. A finite gradient whose norm overflows float32
    (> 3e38) counts as non-finite too: a diverged step either way."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
    return torch.isfinite(total.to(loss.device) + loss.detach().float().sum())


def empty_window(names: list[str], device: torch.device) -> dict[str, dict[str, Any]]:
    """Loss and correct counts of a logging window, kept on the device (read once per window,
    not once per step); `seen` is known on the host."""
    return {n: {"loss": torch.zeros((), dtype=torch.float64, device=device),
                "correct": torch.zeros((), dtype=torch.long, device=device), "seen": 0}
            for n in names}


def handle_non_finite(cfg: Config, step: int, skips: int, optimizer, scheduler) -> int:
    """A NaN/inf loss or gradient: stop with a clear message, or skip the step and lower the
    learning rate (`train.nan_policy: lower_lr`). Never reaches a checkpoint."""
    optimizer.zero_grad(set_to_none=True)
    hint = "the weights were not updated and the last checkpoint is intact"
    if cfg.train.nan_policy == "stop":
        raise RunError(f"non-finite loss or gradient at step {step}; {hint}; lower train.lr "
                       "(or set train.nan_policy=lower_lr) and continue with --resume")
    skips += 1
    if skips > cfg.train.nan_max_skips:
        raise RunError(f"non-finite loss or gradient in {skips} steps in a row (last: step "
                       f"{step}); {hint}; lower train.lr and continue with --resume")
    scheduler.base_lrs = [lr * cfg.train.nan_lr_factor for lr in scheduler.base_lrs]
    tqdm.write(f"permrl: non-finite loss or gradient at step {step}: step skipped, learning "
               f"rate x{cfg.train.nan_lr_factor}", file=sys.stderr)
    return skips


def no_parts(cfg: Config, task: str) -> torch.Tensor:
    """An empty batch of the task's parts: a process whose whole shard was unreadable."""
    if task == "spatial":
        return torch.zeros(0, geometry_of(cfg).num_tiles, 3, cfg.spatial.tile, cfg.spatial.tile)
    t = cfg.temporal
    return torch.zeros(0, t.frames, 3, t.frame_size, t.frame_size)


def no_buffer_sync() -> dict[str, bool]:
    """DDP keyword that stops the broadcast of buffers from rank 0 at every forward (our
    BatchNorm statistics are already global): renamed in torch 2.13."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
            else {"broadcast_buffers": False})


def task_loader(cfg: Config, data: TaskData, start: int, device: torch.device) -> DataLoader:
    """Batches of the steps (from `start`) at which this task trains, prefetched by workers."""
    steps = [s for s in range(start, cfg.train.steps) if data.name in active_tasks(cfg, s)]
    # On a GPU the tiles are built there from uint8 crops; on the CPU, in the workers.
    data.batches.build_in_worker = device.type == "cpu" and cfg.data.workers > 0
    return DataLoader(
        data.batches, batch_size=None, sampler=steps, num_workers=cfg.data.workers,
        prefetch_factor=4 if cfg.data.workers else None, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by the loader
        worker_init_fn=ignore_interrupts,
    )


def train(
    cfg: Config, run_dir: str | Path, *, resume: bool = False, force: bool = False,
    progress: bool = True, stop_at: int | None = None, init_from: str | Path | None = None,
) -> RunResult:
    """Train the trunk by spatial and/or temporal ordering; see the module docstring.

    `stop_at` ends the run early after that step with a checkpoint, as an interruption would;
    `resume=True` continues it to `train.steps`. `init_from`: a checkpoint whose weights and
    optimiser state this new run starts from, at step 0 with a fresh sampler and Psi kept (the
    Fig. 4 protocol, `permrl.policy_learning`). Under torchrun every process calls this and
    joins one process group for the run (see `permrl.distributed`).
    """
    try:
        env = Distributed.from_environment()
    except DistributedError as e:
        raise RunError(str(e)) from None
    device = resolve_device(cfg.train.device, env)
    if device.type == "cuda":  # fixed shapes every step: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    run_dir = Path(run_dir)
    new_dir = not run_dir.exists()
    env.start(device)
    try:
        return train_processes(cfg, run_dir, env, device, resume=resume, force=force,
                               progress=progress, stop_at=stop_at, init_from=init_from)
    except BaseException:
        if new_dir and env.is_main and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder
        raise
    finally:
        env.stop()


def train_processes(
    cfg: Config, run_dir: Path, env: Distributed, device: torch.device, *, resume: bool,
    force: bool, progress: bool, stop_at: int | None, init_from: str | Path | None = None,
) -> RunResult:
    """The run itself, on this process (one of `env.world_size`); see `train`."""
    cfg = env.on_main(lambda: cfg)  # one config for all processes: rank 0's
    if cfg.train.batch_size < env.world_size:
        raise RunError(f"train.batch_size={cfg.train.batch_size} is the global batch; it must "
                       f"be at least the number of processes ({env.world_size})")
    if env.enabled and env.is_main:
        per = [len(shard_positions(cfg.train.batch_size, r, env.world_size))
               for r in range(env.world_size)]
        print(f"permrl: {env.world_size} processes ({'nccl' if device.type == 'cuda' else 'gloo'}"
              f"), global batch {cfg.train.batch_size} = {min(per)}"
              f"{'' if min(per) == max(per) else f'-{max(per)}'} per process", file=sys.stderr)
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

    # Per task: Psi, data with X_val held out, a permutation sampler.
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
    perms = {name: torch.from_numpy(t.permutations) for name, t in tasks.items()}
    reversal_twins_of = {name: torch.from_numpy(reversal_twins(p)) for name, p in perms.items()}
    perms_on_device = {name: p.to(device) for name, p in perms.items()}
    if cfg.eval.knn_every:  # fail now, not after knn_every steps
        for spec in (cfg.eval.knn_train, cfg.eval.knn_test):
            if not (open_source(spec).labels >= 0).any():
                raise RunError(f"eval.knn_every: source {spec!r} has no labels")
    model = build_model(cfg)
    if env.enabled:  # BatchNorm statistics of the global batch, as on one process
        model = synchronise_batchnorm(model, device)
    model = model.to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(cfg, model)
    if env.is_main:
        print(f"permrl: model {type(model).__name__} ("
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
              f"{device}; {cfg.train.steps} steps, first batches from "
              f"{cfg.data.workers or 'no'} DataLoader worker(s)", file=sys.stderr)
    start = 0
    if init is not None:  # weights and optimiser moments; the learning rate is this config's
        model.load_state_dict(init["model"])
        lrs = scheduler.get_last_lr()
        optimizer.load_state_dict(init["optimizer"])
        for group, base, lr in zip(optimizer.param_groups, scheduler.base_lrs, lrs, strict=True):
            group["initial_lr"], group["lr"] = base, lr
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
    log = MetricsLog(run_dir / "metrics.jsonl", start if ckpt else None, enabled=env.is_main)
    permutation_errors = PermutationErrors(run_dir / "permutation_errors.npz",
                                           start if ckpt else None, enabled=env.is_main)

    def checkpoint(step: int) -> None:
        if not env.is_main:  # rank 0 writes; the others hold the same weights
            return
        save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "config": to_dict(cfg),
            "world_size": env.world_size,
            "sampler": {n: t.sampler.state_dict() for n, t in tasks.items()},
            "permutations": {n: t.permutations for n, t in tasks.items()},
            "permutation_checksum": {n: permutation_checksum(t.permutations)
                                     for n, t in tasks.items()},
        }, run_dir, step, keep=cfg.train.keep_checkpoints)
        permutation_errors.save()

    def state_of(name: str, step: int) -> NetworkState:
        """Eq. 3, 4, 6 on the task's X_val (exact, from cached features: design §6); X_val is
        split across the processes and the state gathered on all of them."""
        state = sharded_state(model, name, tasks[name].val_parts, perms[name], env)
        permutation_errors.add(name, step, state)
        return state

    def validate(step: int) -> dict[str, float]:
        states = {n: state_of(n, step) for n in tasks}
        accuracy = {n: 1.0 - state.error for n, state in states.items()}
        record: dict[str, Any] = {"step": step}
        for n, acc in accuracy.items():
            record |= {f"{n}_val_accuracy": acc, f"{n}_val_error": 1 - acc,
                       f"{n}_val_samples": int(tasks[n].val_parts.shape[0])}
        said = {n: f"{acc:.3f}" for n, acc in accuracy.items()}
        if "temporal" in states:  # a clip's order told up to its direction (OPN's classes)
            both = states["temporal"].accuracy_up_to(reversal_twins_of["temporal"])
            record["temporal_val_accuracy_up_to_reversal"] = both
            said["temporal"] += f" ({both:.3f} up to reversal)"
        log.write(record)
        if env.is_main:
            tqdm.write(f"step {step}: held-out puzzle accuracy " + ", ".join(
                f"{n} {said[n]} ({tasks[n].val_parts.shape[0]} x {len(perms[n])} permutations)"
                for n in accuracy), file=sys.stderr)
        return accuracy

    batches = {n: iter(task_loader(cfg, t, start, device)) for n, t in tasks.items()}
    forward: torch.nn.Module = model
    if env.enabled:  # gradients averaged over processes; BN buffers are already global
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.train.serial_switch), **no_buffer_sync())
    if cfg.train.compile:
        forward = torch.compile(forward)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=cfg.train.amp and device.type == "cuda")
    bar = tqdm(total=cfg.train.steps, initial=start, disable=not (progress and env.is_main),
               unit="step", dynamic_ncols=True, file=sys.stderr)
    model.train()
    batch_size = cfg.train.batch_size
    window = empty_window(names, device)
    t0 = time.perf_counter()
    last_loss, val_acc = None, {}
    nan_skips, stopped = 0, None
    interrupted = GracefulStop()
    postfix_policy: dict[str, dict[str, Any]] = {}
    try:
        bn_buffers = [b for name, b in model.named_buffers() if "running" in name]
        for step in range(start, cfg.train.steps):
            # Dropout of this step on this process: a function of (seed, step, rank), so a
            # resumed run draws what the interrupted one would have.
            torch.manual_seed(step_seed(cfg.seed, step, 100 + env.rank))
            if cfg.train.nan_policy == "lower_lr":  # a skipped step must not leave its BN update
                bn_before = [b.clone() for b in bn_buffers]
            fetched = {name: next(batches[name]) for name in active_tasks(cfg, step)}
            # Which samples of the global batch are readable, per task, over all processes. A
            # task with none sits the step out; a process whose own shard is all unreadable
            # joins with an empty batch (DDP needs every process in the forward).
            readable = torch.zeros(len(fetched), batch_size, dtype=torch.long)
            for k, b in enumerate(fetched.values()):
                readable[k, b["rows"]] = 1
            readable = env.sum(readable).bool()
            kept = dict(zip(fetched, readable.sum(1).tolist(), strict=True))
            parts, targets, losses = {}, {}, {}
            for k, (name, batch) in enumerate(fetched.items()):
                task = tasks[name]
                task.skips.extend(batch["skipped"])
                task.attempted += batch_size
                task.unreadable += batch_size - kept[name]
                check_bad_fraction(cfg, task)
                if task.skips.count and not task.warned:  # one line at the first skip
                    tqdm.write(f"{task.skips.warning_line()} [{name}]", file=sys.stderr)
                    task.warned = True
                if kept[name] == 0:
                    continue
                # 1. Which permutation for which sample: drawn on rank 0 for the whole batch
                #    (the sampler, later the policy, lives there), each process takes its rows.
                stream = 3 + TASKS.index(name)
                gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, stream))
                drawn = (task.sampler.draw(batch_size, gen, readable[k]) if env.is_main
                         else torch.zeros(batch_size, dtype=torch.long))
                perm_index = env.broadcast(drawn)[batch["rows"]]
                # 2. Tiles (frames) built on the training device from the workers' uint8
                #    crops, then shuffled (Eq. 1); the permutation index is the class.
                mine = task.batches.parts(batch, device)
                if mine is None:  # this process's shard is all unreadable
                    mine = no_parts(cfg, name).to(device)
                targets[name] = perm_index.to(device, non_blocking=True)
                parts[name] = shuffle_tiles(mine, perms_on_device[name], targets[name])
            finite = torch.ones((), dtype=torch.bool, device=device)
            if parts:
                # 3. One forward for all tasks (one trunk call each), the losses summed (S+T)
                #    and back-propagated once, down to conv1. Each process's summed loss is
                #    scaled so that DDP's average is the mean over the global batch.
                with autocast:
                    logits = forward(parts)
                for name, target in targets.items():
                    summed = F.cross_entropy(logits[name].float(), target, reduction="sum")
                    losses[name] = summed * env.world_size / kept[name]
                    w = window[name]
                    w["loss"] += summed.detach().double()
                    w["correct"] += (logits[name].argmax(1) == target).sum()
                    w["seen"] += len(target)
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                finite = all_finite(loss, model)
            # Every process takes the same decisions: skip a non-finite step, stop on a signal.
            # One host sync per step: these two flags, summed over the processes.
            agreed = env.sum(torch.stack([
                (~finite).double(),
                torch.tensor(float(interrupted.name is not None), dtype=torch.float64,
                             device=device)])).tolist()
            if parts:
                if agreed[0] == 0:
                    optimizer.step()
                    nan_skips = 0
                else:  # nothing is updated: the weights are still the last good state
                    nan_skips = handle_non_finite(cfg, step + 1, nan_skips, optimizer, scheduler)
                    for buffer, before in zip(bn_buffers, bn_before, strict=True):
                        buffer.copy_(before)
                last_loss = loss.detach().double()  # read once, after the loop
            scheduler.step()
            # 4. Bookkeeping: progress bar, metrics, held-out validation, checkpoint.
            done = step + 1
            if done % cfg.train.log_every == 0 or done in (cfg.train.steps, stop_at):
                elapsed = time.perf_counter() - t0
                totals = env.sum(torch.stack([  # the window's one host sync
                    torch.stack([w["loss"], w["correct"].double(),
                                 torch.tensor(float(w["seen"]), dtype=torch.float64,
                                              device=device)])
                    for w in window.values()])).cpu()
                record: dict[str, Any] = {"step": done, "lr": scheduler.get_last_lr()[0]}
                postfix = {}
                for n, episode in postfix_policy.items():
                    postfix |= {f"{n[0]}_err": f"{episode['error_after']:.3f}",
                                f"{n[0]}_reward": f"{episode.get('reward', 0.0):.4f}"}
                for n, (loss_sum, correct, seen) in zip(window, totals.tolist(), strict=True):
                    if seen:
                        record |= {f"{n}_loss": loss_sum / seen, f"{n}_accuracy": correct / seen}
                        postfix |= {f"{n[0]}_loss": f"{record[f'{n}_loss']:.3f}",
                                    f"{n[0]}_acc": f"{record[f'{n}_accuracy']:.3f}"}
                record |= {"samples_per_s": totals[:, 2].sum().item() / max(elapsed, 1e-9),
                           "skipped": sum(t.unreadable for t in tasks.values())}
                log.write(record)
                bar.set_postfix(postfix | {"samples_s": f"{record['samples_per_s']:.0f}"})
                window = empty_window(names, device)
                t0 = time.perf_counter()
            # 5. The policy (Sect. 3.2): after N SGD iterations the state s_t regroups Psi and
            #    fixes s_hat; the next K mini-batches are the episode; after them E_{t+1} gives
            #    the reward (Eq. 7) and REINFORCE updates pi (Eq. 9). The state is computed by
            #    all processes; the policy lives on rank 0.
            phase = policy_phase(cfg, done)
            for name in active_tasks(cfg, step) if phase else []:
                sampler = tasks[name].sampler
                if not env.on_main(lambda s=sampler, p=phase: p == "episode_start"
                                   or s.episode is not None):
                    continue  # (in S&T a task may join in mid-cycle: no episode to end)
                state = state_of(name, done)
                if not env.is_main:
                    continue
                if phase == "episode_start":
                    sampler.observe(done, state)
                    sampler.begin_episode()
                else:
                    episode = sampler.end_episode(done, state)
                    log.write({"step": done, "task": name, "episode": sampler.updates} | episode)
                    postfix_policy[name] = episode  # reward and error go to the progress bar
            if (cfg.train.val_every and done % cfg.train.val_every == 0) or done == cfg.train.steps:
                val_acc = validate(done)
            if cfg.eval.knn_every and env.is_main and (
                    done % cfg.eval.knn_every == 0 or done == cfg.train.steps):
                log.write({"step": done} | retrieval_during_training(model, cfg, device))
            if done % cfg.train.checkpoint_every == 0 or done in (cfg.train.steps, stop_at):
                checkpoint(done)
            bar.update(1)
            if agreed[1] > 0:  # SIGINT / SIGTERM (on any process): finish the step, save, exit
                if done % cfg.train.checkpoint_every and done != cfg.train.steps:
                    checkpoint(done)
                stopped = done
                break
            if done == stop_at:
                break
    finally:  # the signal handlers never outlive train()
        bar.close()
        interrupted.restore()
    if stopped is not None and env.is_main:
        print(f"permrl: {interrupted.name or 'a stop signal'} received: stopped after step "
              f"{stopped} with a checkpoint in {run_dir}", file=sys.stderr)
    if start >= cfg.train.steps:  # resuming a finished run: nothing to do, nothing to log
        val_acc = env.on_main(lambda: last_validation(run_dir / "metrics.jsonl"))
    for name, t in tasks.items():
        if t.skips.count:
            print(f"{t.skips.warning_line()} [{name}, whole run]", file=sys.stderr)
    # The last step's loss, the mean over the global batch (every process sums its share).
    has_loss = env.sum(torch.tensor(float(last_loss is not None), device=device)).item()
    loss_value = float("nan")
    if has_loss == env.world_size:
        loss_value = env.sum(last_loss).item() / env.world_size
    return RunResult(run_dir, stopped or cfg.train.steps, loss_value, val_acc,
                     sum(t.unreadable for t in tasks.values()),
                     # (a process stopped by its peers' signal reports SIGTERM)
                     stop_signal=(interrupted.signum or int(signal.SIGTERM)) if stopped else 0,
                     rank=env.rank)
