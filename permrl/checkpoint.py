"""Checkpoints that survive crashes: atomic, checksummed, the last N kept.

`save_checkpoint` serialises in memory, writes `checkpoint-<step>.pt` through a temporary file
(fsync, then rename) with a `.sha256` sidecar, points `checkpoint.pt` at it (a relative
symbolic link, replaced by an atomic rename: no second copy of the bytes), and deletes step
files beyond the newest `keep`. A crash at any moment
leaves the previous checkpoint intact; a write that fails (disk full) raises `CheckpointError`
and leaves it intact too. `load_checkpoint` verifies the checksum and, when a file is
half-written or corrupt, falls back to the newest intact step file with a message.

Nothing in a checkpoint runs code when it is read: files are written with tensors, numbers,
strings and plain containers only (NumPy arrays travel as tensors under a `__numpy__` key and
come back as arrays), and read with `torch.load(weights_only=True)`. A file that needs more
(a crafted pickle, or a checkpoint of permrl 0.1) is refused with one line.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from permrl.errors import UserError
from permrl.files import write_atomic

NUMPY = "__numpy__"  # {NUMPY: tensor} stands for a NumPy array in a saved checkpoint


class CheckpointError(UserError):
    """A checkpoint that cannot be read or written: one line naming the file."""


def _link_atomic(target: Path, link: Path) -> None:
    """Make `link` a relative symbolic link to `target` (in the same folder) in one rename."""
    tmp = link.parent / f".{link.name}.{os.getpid()}.link.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_plain(obj: Any) -> Any:
    """What `torch.load(weights_only=True)` can read: arrays as {NUMPY: tensor}, NumPy scalars
    as Python numbers; tensors, numbers, strings, None and containers of them as they are."""
    if isinstance(obj, np.ndarray):
        return {NUMPY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_plain(v) for v in obj)
    if obj is None or isinstance(obj, torch.Tensor | str | int | float | bool):
        return obj
    raise TypeError(f"a checkpoint holds plain data only, not {type(obj).__name__}")


def from_plain(obj: Any) -> Any:
    """The inverse of `to_plain`."""
    if isinstance(obj, dict):
        if set(obj) == {NUMPY}:
            return obj[NUMPY].numpy()
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def step_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the kept step checkpoints, newest first."""
    found = []
    for p in run_dir.glob("checkpoint-*.pt"):
        m = re.fullmatch(r"checkpoint-(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_checkpoint(obj: dict[str, Any], run_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Write the checkpoint of `step` (see the module docstring); returns checkpoint.pt."""
    run_dir = Path(run_dir)
    buffer = io.BytesIO()
    torch.save(to_plain(obj), buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    step_path = run_dir / f"checkpoint-{step:08d}.pt"
    latest = run_dir / "checkpoint.pt"
    try:
        write_atomic(step_path, data)
        write_atomic(f"{step_path}.sha256", f"{digest}  {step_path.name}\n")
        _link_atomic(step_path, latest)
        Path(f"{latest}.sha256").unlink(missing_ok=True)  # a copy's sidecar (permrl <= 0.2)
    except OSError as e:
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {run_dir} ({e.strerror}); the "
            "previous checkpoint is intact") from None
    for _, old in step_files(run_dir)[max(keep, 1):]:
        old.unlink(missing_ok=True)
        Path(f"{old}.sha256").unlink(missing_ok=True)
    return latest


def _verified(path: Path) -> bool:
    """True when the file matches its .sha256 sidecar (or has none: older checkpoints); a link
    is checked against the sidecar of the file it points at."""
    sidecar = Path(f"{path.resolve()}.sha256")
    if not sidecar.exists():
        return True
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    return hashlib.sha256(path.read_bytes()).hexdigest() == expected


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} points at a missing file")
    if not _verified(path):
        raise CheckpointError(f"checkpoint {path} does not match its checksum")
    try:
        ckpt = from_plain(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as e:  # the weights-only unpickler met code or objects
        found = str(e).split("GLOBAL ")[1].split()[0] if "GLOBAL " in str(e) else "objects"
        raise CheckpointError(
            f"checkpoint {path} holds more than weights and plain data ({found}); refused, "
            "nothing in it was run (permrl 0.1 checkpoints are refused too: retrain)") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a permrl checkpoint")
    return ckpt


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint; a corrupt `checkpoint.pt` falls back to the newest intact step file."""
    path = Path(path)
    if not path.is_file() and not path.is_symlink():  # (a dangling link falls back below)
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return _read(path)
    except CheckpointError as first:
        if path.name != "checkpoint.pt":
            raise
        for step, older in step_files(path.parent):
            try:
                ckpt = _read(older)
            except CheckpointError:
                continue
            print(f"permrl: {first}; using {older.name} (step {step}) instead", file=sys.stderr)
            return ckpt
        raise CheckpointError(f"{first}, and no intact step checkpoint is left in "
                              f"{path.parent}") from None
