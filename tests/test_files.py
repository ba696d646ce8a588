"""Atomic writes: the old file or the new one, never half of one, and no temporary left."""

from __future__ import annotations

import errno
import os

import pytest

import permrl.files as files_module
from permrl.files import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "cell.json"
    write_atomic(target, "old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["cell.json"]


def test_a_writer_that_fails_leaves_the_old_file(tmp_path):
    target = tmp_path / "perms.npy"
    write_atomic(target, "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_a_full_disk_at_fsync_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "features.pt"
    write_atomic(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new")
    monkeypatch.setattr(files_module.os, "fsync", os.fsync)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


def test_a_written_file_has_the_mode_the_umask_gives_a_new_file(tmp_path):
    """Not mkstemp's 0600: a checkpoint on a shared cluster is readable as any file is."""
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.json", "{}")
        os.umask(0o002)
        write_atomic(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o664

