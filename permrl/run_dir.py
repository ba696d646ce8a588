"""The run directory of `permrl train`: what a run writes and reads back, and how it stops.

RUN_DIR holds config.yaml, metrics.jsonl (mirrored to TensorBoard when installed),
permutation_errors.npz (Fig. 6), checkpoint-<step>.pt and checkpoint.pt (permrl.checkpoint).
Here: refusing to overwrite another run, the checks and hyperparameter changes of `--resume`,
the two logs (truncated to the resumed step), and SIGINT/SIGTERM as a flag the loop reads.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from permrl.config import TASKS, Config, config_differences, config_from_dict
from permrl.errors import RunError  # (its home until 0.3; kept importable from here)
from permrl.files import atomic_path

if TYPE_CHECKING:
    from permrl.policy.state import NetworkState


class PermutationErrors:
    """Per-permutation validation error at every state (the paper's Fig. 6), kept compactly as
    float16 rows in RUN_DIR/permutation_errors.npz (rewritten with each checkpoint)."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.rows: dict[str, list[tuple[int, np.ndarray]]] = {}
        if enabled and resume_step is not None and path.exists():
            with np.load(path) as f:
                for task in TASKS:
                    if f"{task}_steps" in f:
                        pairs = zip(f[f"{task}_steps"], f[f"{task}_errors"], strict=True)
                        self.rows[task] = [(int(s), e) for s, e in pairs if s <= resume_step]

    def add(self, task: str, step: int, state: NetworkState) -> None:
        """One row per (task, step): a validation that coincides with a policy state at the
        same step (the same weights) is stored once."""
        errors = state.per_permutation_error.cpu().numpy().astype(np.float16)
        rows = self.rows.setdefault(task, [])
        if rows and rows[-1][0] == step:
            rows.pop()
        rows.append((step, errors))

    def save(self) -> None:
        if not self.enabled:
            return
        arrays = {}
        for task, rows in self.rows.items():
            arrays[f"{task}_steps"] = np.array([s for s, _ in rows], dtype=np.int64)
            arrays[f"{task}_errors"] = np.stack([e for _, e in rows])
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl in file order ([] if the file is absent): the one
    reader of that file. Blank or unparsable lines (e.g. a line cut short by a killed run) and
    lines that are not JSON objects are skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class MetricsLog:
    """RUN_DIR/metrics.jsonl, one JSON object per logged event; truncated to `step` on resume.

    Scalars also go to TensorBoard event files in RUN_DIR/tensorboard when the `tensorboard`
    package is installed (optional; nothing happens without it).
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path, self.enabled, self.tensorboard = path, enabled, None
        if not enabled:  # processes other than rank 0 log nothing
            return
        if resume_step is None:
            path.write_text("")
        elif path.exists():  # (records written by `write`: json.dumps round-trips them)
            keep = [r for r in read_metrics(path.parent) if int(r.get("step", 0)) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(path.parent / "tensorboard"),
                                             purge_step=None if resume_step is None
                                             else resume_step + 1)
        except ImportError:
            self.tensorboard = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            prefix = f"{record['task']}/" if "task" in record else ""
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.tensorboard.add_scalar(prefix + key, value, record["step"])
            self.tensorboard.flush()


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> Path | None:
    """Refuse to clobber another run; return the checkpoint to resume from, if any."""
    ckpt = run_dir / "checkpoint.pt"
    if resume:
        if not ckpt.exists():
            raise RunError(f"--resume: {ckpt} does not exist")
        return ckpt
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir} is a file, not a directory")
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise RunError(f"{run_dir} is not empty; use --resume to continue it or --force to "
                       "overwrite")
    if force and run_dir.exists():  # nothing of the previous run may be mistaken for this one
        for old in [*run_dir.glob("checkpoint*.pt"), *run_dir.glob("checkpoint*.pt.sha256"),
                    run_dir / "permutation_errors.npz", run_dir / "metrics.jsonl"]:
            old.unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to {run_dir}: {e.strerror}") from None
    return None


FIXED_ON_RESUME = ("optimizer", "batch_size", "val_size")


def check_resumable(ckpt: dict[str, Any], cfg: Config, path: Path) -> None:
    if cfg.train.steps < ckpt["step"]:
        raise RunError(f"--resume: train.steps={cfg.train.steps} is fewer than the "
                       f"{ckpt['step']} steps already done in {path}; give train.steps >= "
                       f"{ckpt['step']}, or train a new run")
    stored = ckpt["config"]["train"]
    for key in FIXED_ON_RESUME:
        if stored[key] != getattr(cfg.train, key):
            raise RunError(f"--resume: train.{key} cannot change on resume ({stored[key]!r} in "
                           f"{path}, {getattr(cfg.train, key)!r} now)")
    changed = config_differences(config_from_dict(ckpt["config"]), cfg, ignore=("train",))
    if changed:
        raise RunError(f"--resume: the config differs from the one in {path} ("
                       f"{'; '.join(changed)}); only train.* keys may change on resume")


def last_validation(metrics: Path) -> dict[str, float]:
    """Each task's last held-out puzzle accuracy in metrics.jsonl."""
    last: dict[str, float] = {}
    for record in read_metrics(metrics.parent):
        for key, value in record.items():
            if key.endswith("_val_accuracy"):
                last[key.removesuffix("_val_accuracy")] = value
    return last


def apply_changed_hyperparameters(stored: dict[str, Any], cfg: Config, optimizer,
                                  scheduler) -> None:
    """On resume, train.lr / momentum / weight_decay changed on the command line take effect
    (the optimiser and schedule states come back from the checkpoint otherwise)."""
    t = cfg.train
    if stored["lr"] != t.lr:
        scheduler.base_lrs = [t.lr for _ in scheduler.base_lrs]
    for group in optimizer.param_groups:
        if stored["momentum"] != t.momentum and "momentum" in group:
            group["momentum"] = t.momentum
        if stored["weight_decay"] != t.weight_decay and group["weight_decay"] > 0:
            group["weight_decay"] = t.weight_decay


class GracefulStop:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and returns."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.signum = 0
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class Interrupted(Exception):
    """A run stopped on a signal after checkpointing; the command exits 128 + the signal's
    number (130 for Ctrl-C, 143 for SIGTERM), so `permrl train ... && permrl eval ...` stops."""

    def __init__(self, signum: int, how_to_continue: str) -> None:
        super().__init__(how_to_continue)
        self.signum = signum
        self.exit_code = 128 + signum


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which finishes its step,
    checkpoints and shuts them down. SLURM's scancel, Kubernetes and `timeout` signal the whole
    process group: a worker killed by it would make the main process raise instead."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
