"""One ordering task as the training loop sees it: Psi, the data with X_val held out, the
permutation sampler, the DataLoader of its steps, and the count of unreadable items.

`prepare_task(cfg, "spatial" | "temporal")` opens the task's source (`data.images` or
`data.videos`), holds out X_val (design §3), builds the per-step batches of this process's
shard (`permrl.data.batches`) and the sampler of `cfg.policy`: uniform, the REINFORCE policy of
Sect. 3.2, or an adaptive baseline over the same groups (design §5).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from permrl.config import TASKS, Config, active_tasks
from permrl.data.batches import (
    AUTO_VAL_RULE,
    ClipBatches,
    PuzzleBatches,
    ValidationError,
    split_validation,
    validation_clips,
    validation_tiles,
)
from permrl.data.samples import geometry_of
from permrl.data.sources import SkipCounter, open_source
from permrl.data.video_sources import open_video_source
from permrl.distributed import ONE_PROCESS, Distributed
from permrl.permutations import load_permutations, select_permutations
from permrl.policy.bandits import Exp3S, Hardness
from permrl.policy.reinforce import Reinforce
from permrl.policy.samplers import (
    GroupLearner,
    GroupSampler,
    HardestShareSampler,
    PermutationSampler,
    UniformSampler,
)
from permrl.run_dir import RunError, ignore_interrupts


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
    if cfg.policy == "fixed":  # the ceiling arm: no learner
        return HardestShareSampler(num_permutations, cfg.bandit.fixed_share)
    c, r, b = cfg.cycle, cfg.reinforce, cfg.bandit
    seed = cfg.seed * 2 + TASKS.index(task)
    learner: GroupLearner
    if cfg.policy == "reinforce":
        learner = Reinforce(c.groups, hidden=r.hidden, lr=r.lr, entropy_weight=r.entropy_weight,
                            baseline_momentum=r.baseline_momentum, gamma=r.gamma,
                            horizon=r.horizon, advantage=r.advantage, prior=r.prior,
                            optimizer=r.optimizer, seed=seed)
    elif cfg.policy == "exp3":
        learner = Exp3S(c.groups, lr=b.exp3_lr, exploration=b.exploration, switch=b.exp3_switch)
    else:  # learns nothing from rewards: its episodes draw per sample
        learner = Hardness(c.groups, exploration=b.exploration)
        return GroupSampler(num_permutations, learner, c.groups, seed)  # (no reward used)
    return GroupSampler(num_permutations, learner, c.groups, seed, c.episode_actions,
                        c.reward_metric, c.reward_baseline)


MIN_ITEMS_FOR_BAD_FRACTION = 100


def check_bad_fraction(cfg: Config, task: TaskData) -> None:
    """Stop when too much of the data is unreadable, rather than train on what is left."""
    n, bad = task.attempted, task.unreadable
    if n >= MIN_ITEMS_FOR_BAD_FRACTION and bad > cfg.data.max_bad_fraction * n:
        what = "image" if task.name == "spatial" else "video"
        raise RunError(f"{bad} of the {n} {what}s read so far ({bad / n:.0%}) were unreadable "
                       f"(first: {task.skips.first}), above data.max_bad_fraction="
                       f"{cfg.data.max_bad_fraction}; fix or remove them, or raise the limit")


def no_parts(cfg: Config, task: str) -> torch.Tensor:
    """An empty batch of the task's parts: a process whose whole shard was unreadable."""
    if task == "spatial":
        return torch.zeros(0, geometry_of(cfg).num_tiles, 3, cfg.spatial.tile, cfg.spatial.tile)
    t = cfg.temporal
    return torch.zeros(0, t.frames, 3, t.frame_size, t.frame_size)


PREFETCH = 4  # batches each DataLoader worker holds ready


def shared_memory_notice(cfg: Config, task: str, free_bytes: int | None = None) -> str | None:
    """One line when /dev/shm (where workers hand their batches over) looks too small for the
    batches in flight: Docker's default 64 MB kills workers with a bus error at the paper
    preset. Upper bound of a batch: its parts in float32."""
    if not cfg.data.workers:
        return None
    if free_bytes is None:
        try:
            stat = os.statvfs("/dev/shm")
        except OSError:  # no /dev/shm (macOS, Windows): nothing to say
            return None
        free_bytes = stat.f_bavail * stat.f_frsize
    batch = cfg.train.batch_size * math.prod(no_parts(cfg, task).shape[1:]) * 4
    needed = cfg.data.workers * PREFETCH * batch
    if free_bytes >= needed:
        return None
    return (f"permrl: warning: /dev/shm has {free_bytes / 2**20:.0f} MiB free, but "
            f"{cfg.data.workers} DataLoader workers x {PREFETCH} {task} batches of up to "
            f"{batch / 2**20:.0f} MiB need {needed / 2**20:.0f} MiB: workers may die with a bus "
            "error. Give the container more (docker run --shm-size=8g) or lower data.workers")


def task_loader(cfg: Config, data: TaskData, start: int, device: torch.device) -> DataLoader:
    """Batches of the steps (from `start`) at which this task trains, prefetched by workers."""
    steps = [s for s in range(start, cfg.train.steps) if data.name in active_tasks(cfg, s)]
    # On a GPU the tiles are built there from uint8 crops; on the CPU, in the workers.
    data.batches.build_in_worker = device.type == "cpu" and cfg.data.workers > 0
    return DataLoader(
        data.batches, batch_size=None, sampler=steps, num_workers=cfg.data.workers,
        prefetch_factor=PREFETCH if cfg.data.workers else None, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by the loader
        worker_init_fn=ignore_interrupts,
    )
