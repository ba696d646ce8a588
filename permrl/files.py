"""Files written so that a crash leaves either the old file or the new one, never half of one.

Every file permrl writes that a later command reads (checkpoints, permutation sets, feature
caches, exports, ablation cells, logs' side arrays) goes through `atomic_path`: the writer fills
a temporary file in the same folder, which is fsynced and renamed over the target only when
the writer returned; on any error (a full disk, Ctrl-C) the temporary file is removed and the
target is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to `path`; renamed over `path` after the block (see above)."""
    target = Path(path)  # its folder must exist (a missing one is the caller's error)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # a new file's usual mode, not mkstemp's 0600
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """This process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """`data` (bytes, or text as UTF-8) into `path`, atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
