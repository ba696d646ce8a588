"""Self-supervised training: the whole loop in `train()`, read top to bottom.

Per step: the sampler picks a permutation for every image (uniform for now; the learned policy
of Sect. 3.2 later), the tiles are shuffled (Eq. 1), the trunk sees all B*m*m tiles in one call,
cross-entropy on the permutation index, one optimiser step. Every `val_every` steps the held-out
puzzle error (Eq. 6) over all |Psi| x |X_val| pairs; every `checkpoint_every` steps an atomic
checkpoint from which `--resume` continues exactly (the data of step s is a pure function of
(seed, s), so no loader state needs saving).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from permrl.checkpoint import load_checkpoint, save_atomic
from permrl.config import Config, config_from_dict, to_dict, to_yaml
from permrl.data.images import resize_square
from permrl.data.samples import PuzzleGeometry, make_tiles, shuffle_tiles
from permrl.data.sources import ImageSource, SkipCounter, open_source
from permrl.models.heads import JigsawNet, SpatialHead, permutation_logits
from permrl.models.trunk import CaffeNetBN
from permrl.permutations import load_permutations, permutation_checksum, select_permutations
from permrl.policy.samplers import UniformSampler


class RunError(ValueError):
    """A user error about a run directory or a resume: one line."""


def geometry_of(cfg: Config) -> PuzzleGeometry:
    s = cfg.spatial
    return PuzzleGeometry(grid=s.grid, cell=s.cell, tile=s.tile)


def build_model(cfg: Config) -> JigsawNet:
    geometry = geometry_of(cfg)
    trunk = CaffeNetBN(width=cfg.model.width, conv1_stride=cfg.model.conv1_stride)
    c, h, w = trunk.output_shape(geometry.tile)
    head = SpatialHead(
        c * h * w, geometry.num_tiles, cfg.spatial.permutations,
        fc6_dim=cfg.model.fc6, fc7_dim=cfg.model.fc7, dropout=cfg.model.dropout,
    )
    return JigsawNet(trunk, head, channels_last=cfg.model.channels_last)


def build_permutations(cfg: Config) -> np.ndarray:
    """Psi_S: from `spatial.permutation_file`, or selected greedily by Hamming distance."""
    s = cfg.spatial
    n = s.grid * s.grid
    if s.permutation_file:
        perms = load_permutations(s.permutation_file)
        if perms.shape != (s.permutations, n):
            raise RunError(
                f"spatial.permutation_file holds {perms.shape[0]} permutations of "
                f"{perms.shape[1]}, the config asks for {s.permutations} of {n}"
            )
        return perms
    return select_permutations(
        s.permutations, n, seed=s.permutation_seed, criterion=s.criterion,
        include_identity=s.include_identity,
    )


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device: cuda was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def split_validation(num_items: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X_val: `val_size` items drawn with the seed and excluded from training (SPEC 3)."""
    if num_items < val_size + 1:
        raise RunError(
            f"the image source has {num_items} items; train.val_size={val_size} held-out "
            "images plus at least one training image are needed"
        )
    order = np.random.default_rng([seed, 7]).permutation(num_items)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for (run seed, step, stream): the randomness of a step is reproducible."""
    return int(np.random.default_rng([seed, step, stream]).integers(2**63 - 1))


class PuzzleBatches(Dataset):
    """Item `step` is the batch of unshuffled tiles for that step (loaded in a worker).

    Images are drawn epoch by epoch in a seeded order; each is resized so its shorter side is
    256/225 of the puzzle size and a random square crop of the puzzle size is taken (the jigsaw
    recipe), then cut into jittered, colour-jittered, normalised tiles (SPEC 3).
    """

    def __init__(self, source: ImageSource, indices: np.ndarray, cfg: Config) -> None:
        self.source, self.indices = source, indices
        self.geometry = geometry_of(cfg)
        self.batch_size, self.seed = cfg.train.batch_size, cfg.seed
        self.grey_prob, self.jitter = cfg.spatial.grey_prob, cfg.spatial.colour_jitter

    def items_of_step(self, step: int) -> np.ndarray:
        n = len(self.indices)
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
            out[mask] = self.indices[order[positions[mask] % n]]
        return out

    def __getitem__(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng(step_seed(self.seed, step, 1))
        size = self.geometry.image_size
        images, skipped = [], []
        for i in self.items_of_step(step):
            img = self.source.load(int(i))
            if img is None:
                skipped.append(self.source.describe(int(i)))
                continue
            big = resize_square(img, round(size * 256 / 225), crop="center")
            top, left = rng.integers(0, big.shape[0] - size + 1, size=2)
            images.append(big[top : top + size, left : left + size])
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 2))
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) if images else None
        tiles = None
        if batch is not None:
            tiles = make_tiles(
                batch, self.geometry, train=True, grey_prob=self.grey_prob,
                jitter_strength=self.jitter, generator=gen,
            )
        return {"step": step, "tiles": tiles, "skipped": skipped}

    def __len__(self) -> int:
        return sys.maxsize


def load_validation_tiles(
    source: ImageSource, indices: np.ndarray, geometry: PuzzleGeometry, skips: SkipCounter
) -> torch.Tensor:
    """The deterministic view of X_val: centre crop, centred tiles, no jitter (SPEC 3)."""
    images = []
    for i in indices:
        img = source.load(int(i))
        if img is None:
            skips.add(source.describe(int(i)))
            continue
        images.append(resize_square(img, geometry.image_size, crop="center"))
    if not images:
        raise RunError(f"none of the {len(indices)} validation images could be read")
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return make_tiles(batch, geometry, train=False)


@torch.no_grad()
def puzzle_accuracy(
    model: JigsawNet, val_tiles: torch.Tensor, permutations: torch.Tensor, chunk: int = 32
) -> float:
    """Accuracy over all |Psi| x |X_val| permuted validation puzzles; Eq. 6 error = 1 - this.

    The trunk and fc6 run once per validation tile; every permutation is then evaluated from
    the cached features (exact in eval mode, SPEC 6).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, total = 0, 0
    target = torch.arange(permutations.shape[0], device=device)
    for start in range(0, val_tiles.shape[0], chunk):
        tiles = val_tiles[start : start + chunk].to(device)
        feats = model.spatial_head.tile_features(model.trunk(tiles.flatten(0, 1)))
        logits = permutation_logits(model.spatial_head, feats, permutations.to(device))
        correct += (logits.argmax(-1) == target).sum().item()
        total += logits.shape[0] * logits.shape[1]
    model.train(was_training)
    return correct / total


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


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    final_loss: float
    val_accuracy: float
    skipped: int


class MetricsLog:
    """RUN_DIR/metrics.jsonl, one JSON object per logged event; truncated to `step` on resume."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, force: bool) -> Path | None:
    """Refuse to clobber another run; return the checkpoint to resume from, if any."""
    ckpt = run_dir / "checkpoint.pt"
    if resume:
        if not ckpt.exists():
            raise RunError(f"--resume: {ckpt} does not exist")
        return ckpt
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise RunError(f"{run_dir} is not empty; use --resume to continue it or --force to "
                       "overwrite")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to {run_dir}: {e.strerror}") from None
    return None


def train(
    cfg: Config, run_dir: str | Path, *, resume: bool = False, force: bool = False,
    progress: bool = True, stop_at: int | None = None,
) -> RunResult:
    """Train the trunk by spatial jigsaw ordering; see the module docstring.

    `stop_at` ends the run early after that step with a checkpoint, as an interruption would;
    `resume=True` continues it to `train.steps`.
    """
    run_dir = Path(run_dir)
    resume_from = prepare_run_dir(run_dir, cfg, resume, force)
    ckpt = load_checkpoint(resume_from) if resume_from else None
    if ckpt is not None:
        def fixed(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if k != "train"}

        if fixed(to_dict(config_from_dict(ckpt["config"]))) != fixed(to_dict(cfg)):
            raise RunError(f"--resume: the config differs from the one in {resume_from} "
                           "(only train.* keys may change on resume)")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    # Data: X_val held out from the image source; the rest is the training pool.
    source = open_source(cfg.data.images)
    for note in source.notes:
        print(f"permrl: {note}", file=sys.stderr)
    skips = SkipCounter()
    train_idx, val_idx = split_validation(len(source), cfg.train.val_size, cfg.seed)
    geometry = geometry_of(cfg)
    val_tiles = load_validation_tiles(source, val_idx, geometry, skips)

    # Psi_S, model, optimiser, sampler.
    perms_np = ckpt["permutations"] if ckpt else build_permutations(cfg)
    permutations = torch.from_numpy(perms_np)
    model = build_model(cfg).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(cfg, model)
    sampler = UniformSampler(len(permutations))
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    log = MetricsLog(run_dir / "metrics.jsonl", start if ckpt else None)

    def checkpoint(step: int) -> None:
        save_atomic({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
            "step": step, "rng": rng_state(), "config": to_dict(cfg),
            "permutations": perms_np, "permutation_checksum": permutation_checksum(perms_np),
        }, run_dir / "checkpoint.pt")

    loader = DataLoader(
        PuzzleBatches(source, train_idx, cfg), batch_size=None,
        sampler=range(start, cfg.train.steps), num_workers=cfg.data.workers,
        prefetch_factor=4 if cfg.data.workers else None, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by the loader
    )
    bar = tqdm(total=cfg.train.steps, initial=start, disable=not progress, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    model.train()
    window = {"loss": 0.0, "correct": 0, "seen": 0, "t0": time.perf_counter()}
    loss_value, val_acc, reported = float("nan"), float("nan"), 0
    for batch in loader:
        step = batch["step"]
        for path in batch["skipped"]:
            skips.add(path)
        if skips.count and not reported:  # one warning line at the first skip, a total at the end
            tqdm.write(skips.warning_line(), file=sys.stderr)
            reported = skips.count
        if batch["tiles"] is None:
            continue
        # 1. Which permutation for which image (the sampler; the policy plugs in here).
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, 3))
        perm_index = sampler.draw(batch["tiles"].shape[0], gen)
        # 2. Shuffle the tiles (Eq. 1) and solve the puzzle: all B*m*m tiles in one trunk call.
        tiles = shuffle_tiles(batch["tiles"], permutations, perm_index).to(device)
        target = perm_index.to(device)
        logits = model(tiles)
        b = tiles.shape[0]
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        # 3. Bookkeeping: progress bar, metrics, held-out validation, checkpoint.
        loss_value = loss.item()
        window["loss"] += loss_value * b
        window["correct"] += (logits.argmax(1) == target).sum().item()
        window["seen"] += b
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            elapsed = time.perf_counter() - window["t0"]
            record = {"step": done, "loss": window["loss"] / window["seen"],
                      "accuracy": window["correct"] / window["seen"],
                      "lr": scheduler.get_last_lr()[0],
                      "samples_per_s": window["seen"] / max(elapsed, 1e-9),
                      "skipped": skips.count}
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                            samples_s=f"{record['samples_per_s']:.0f}")
            window = {"loss": 0.0, "correct": 0, "seen": 0, "t0": time.perf_counter()}
        if (cfg.train.val_every and done % cfg.train.val_every == 0) or done == cfg.train.steps:
            val_acc = puzzle_accuracy(model, val_tiles, permutations)
            log.write({"step": done, "val_accuracy": val_acc, "val_error": 1 - val_acc,
                       "val_images": int(val_tiles.shape[0]),
                       "val_puzzles": int(val_tiles.shape[0] * len(permutations))})
            tqdm.write(f"step {done}: held-out puzzle accuracy {val_acc:.3f} "
                       f"({val_tiles.shape[0]} images x {len(permutations)} permutations)",
                       file=sys.stderr)
        if done % cfg.train.checkpoint_every == 0 or done in (cfg.train.steps, stop_at):
            checkpoint(done)
        bar.update(1)
        if done == stop_at:
            break
    bar.close()
    if start >= cfg.train.steps and ckpt is not None:
        val_acc = puzzle_accuracy(model, val_tiles, permutations)
    if skips.count > reported:
        print(skips.warning_line(), file=sys.stderr)
    return RunResult(run_dir, cfg.train.steps, loss_value, val_acc, skips.count)
