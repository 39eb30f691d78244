"""Durable file writes: what survives a power cut, not only a SIGKILL.

A rename makes a write atomic for other processes, but after a power loss the renamed name can
point at a file whose blocks never reached the disk (an empty or truncated file under its final
name). So: fsync the file's contents, rename, then fsync the folder that holds the new name.

Standard library only: the trainer's checkpointing and export use it as well as `storage`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp"
"""Temporary names written here contain this, so a sweep can find what a crash left."""


def fsync_file(path: Path | str) -> None:
    """Flush one file's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    """Flush a folder's entries (new names, renames) to the disk; a no-op where the platform
    cannot open folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; nothing more to do there
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path | str) -> None:
    """fsync every file under `folder`, then every folder (deepest first)."""
    folders: list[str] = []
    for root, _dirs, files in os.walk(folder):
        folders.append(root)
        for name in files:
            fsync_file(os.path.join(root, name))
    for root in reversed(folders):
        fsync_dir(root)


def durable_replace(tmp: Path | str, final: Path | str) -> None:
    """fsync `tmp` (a file or a folder tree), rename it to `final`, fsync `final`'s folder."""
    if os.path.isdir(tmp):
        fsync_tree(tmp)
    else:
        fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(os.path.abspath(final)))


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `final` to write to; on success it is fsynced and renamed
    into place durably, on any error it is removed (no `.tmp` left behind, e.g. after ENOSPC)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}-", suffix=TEMP_MARK, dir=final.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        durable_replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(final: Path | str, data: bytes) -> None:
    """Write `data` to `final` atomically and durably."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: Path | str, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def remove_temp_files(root: Path | str, older_than_seconds: float = 3600.0) -> int:
    """Delete what interrupted atomic writes left under `root` (hidden names containing
    `.tmp`, e.g. after ENOSPC or a crash); returns how many entries went. Only entries older
    than `older_than_seconds`: another process on a shared data folder may be writing one now."""
    removed = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    for path in list(root.rglob(f".*{TEMP_MARK}*")):
        try:
            if path.lstat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
