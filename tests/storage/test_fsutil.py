"""Durable atomic writes: contents fsynced before the rename, the folder after, no leftovers."""

from __future__ import annotations

import errno
import os
import time

import pytest

from storage import fsutil


def test_atomic_write_fsyncs_contents_before_rename_and_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                 real_fsync(fd))[1],
    )  # fmt: skip
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append(("rename", str(b))), real_replace(a, b))[1]
    )
    target = tmp_path / "model.safetensors"
    fsutil.atomic_write_bytes(target, b"weights")
    assert target.read_bytes() == b"weights"
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "rename", "fsync"]
    assert events[0][1] != str(target) and events[2] == ("fsync", str(tmp_path))


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    """ENOSPC half way through: the target is untouched and no `.tmp` stays behind."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(OSError), fsutil.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_remove_temp_files_takes_only_old_leftovers(tmp_path):
    old = tmp_path / "jobs" / "1" / ".a.safetensors-x.tmp"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    fresh = tmp_path / "jobs" / "1" / ".b.safetensors-y.tmp"
    fresh.write_bytes(b"y")
    keep = tmp_path / "jobs" / "1" / "a.safetensors"
    keep.write_bytes(b"z")
    assert fsutil.remove_temp_files(tmp_path, older_than_seconds=3600) == 1
    assert not old.exists() and fresh.exists() and keep.exists()
