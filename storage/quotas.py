"""Upload quotas and the sweep of dataset folders nothing refers to.

Quotas are checked twice: before a byte is downloaded (the zip's announced size stands in for
what will be stored) and after ingest (the bytes actually stored, when the folder is new).
A dataset's stored bytes are its `report["stored_bytes"]` (written by ingest); folders from
before that field existed are measured on disk.

Pillow-free and torch-free: the bot calls these through its database thread pool.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from storage import jobs
from storage.db import session_scope
from storage.models import Dataset
from storage.settings import Limits

SWEEP_GRACE_SECONDS = 3600.0
"""A folder younger than this may belong to an upload whose row is being written."""

_DATASET_ID_CHARS = frozenset("0123456789abcdef")


class QuotaExceeded(Exception):
    """An upload refused by a quota or limit; `str(error)` is one plain sentence."""


@dataclass(frozen=True)
class Usage:
    """Dataset bytes stored for one member (in one guild) and for the whole guild."""

    member: int
    guild: int


def size_words(count: int) -> str:
    """Bytes in words: '1.5 GB', '820 MB'."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{count:,} bytes"


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it is gone)."""
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return 0


def dataset_bytes(dataset: Dataset) -> int:
    stored = (dataset.report or {}).get("stored_bytes")
    return int(stored) if isinstance(stored, int) else folder_bytes(Path(dataset.path))


def usage(session: Session, guild_id: int | None, user_id: int) -> Usage:
    rows = session.exec(select(Dataset).where(Dataset.guild_id == guild_id)).all()
    guild = sum(dataset_bytes(row) for row in rows)
    member = sum(dataset_bytes(row) for row in rows if row.created_by == user_id)
    return Usage(member, guild)


def check_before_download(
    engine: Engine,
    guild_id: int | None,
    user_id: int,
    incoming: Usage,
    limits: Limits,
    job_limit: int | None = None,
) -> None:
    """Refuse an upload before it is fetched: the member's job limit (for `/train`), and the
    storage quotas with `incoming` (this upload plus the member's/guild's others in flight)."""
    with session_scope(engine) as session:
        if job_limit is not None and jobs.active_jobs_of(session, guild_id, user_id) >= job_limit:
            raise QuotaExceeded(
                f"You already have {job_limit} job(s) queued or running; wait for one to finish."
            )
        used = usage(session, guild_id, user_id)
    _check(used, incoming, limits, "this upload")


def check_after_ingest(
    engine: Engine, guild_id: int | None, user_id: int, stored: int, limits: Limits
) -> None:
    """Refuse a new dataset folder whose stored bytes pass a quota."""
    with session_scope(engine) as session:
        used = usage(session, guild_id, user_id)
    _check(used, Usage(stored, stored), limits, "these images")


def _check(used: Usage, incoming: Usage, limits: Limits, what: str) -> None:
    if used.member + incoming.member > limits.member_storage_bytes:
        raise QuotaExceeded(
            f"Your datasets in this server use {size_words(used.member)} of your "
            f"{size_words(limits.member_storage_bytes)} quota and {what} "
            f"({size_words(incoming.member)}) would pass it; remove one with `/dataset remove`."
        )
    if used.guild + incoming.guild > limits.guild_storage_bytes:
        raise QuotaExceeded(
            f"This server's datasets use {size_words(used.guild)} of its "
            f"{size_words(limits.guild_storage_bytes)} quota and {what} "
            f"({size_words(incoming.guild)}) would pass it; ask a manager to remove old ones."
        )


def is_referenced(engine: Engine, dataset_id: str) -> bool:
    with session_scope(engine) as session:
        return session.get(Dataset, dataset_id) is not None


def discard_if_unreferenced(engine: Engine, folder: Path, dataset_id: str) -> bool:
    """Delete a just-published folder that no row records (its upload was refused after
    ingest). Only a folder directly inside its datasets folder, named by its id."""
    if folder.name != dataset_id or is_referenced(engine, dataset_id):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def sweep_datasets(
    engine: Engine, datasets_dir: Path, grace_seconds: float = SWEEP_GRACE_SECONDS
) -> list[str]:
    """Delete dataset folders no `Dataset` row points to, older than `grace_seconds`.

    Folders left by a refused upload, a crash between ingest and the row being written, or a
    row deleted without its folder. Returns the names removed."""
    if not datasets_dir.is_dir():
        return []
    with session_scope(engine) as session:
        rows = session.exec(select(Dataset.id, Dataset.path)).all()
    referenced = {row[0] for row in rows} | {Path(row[1]).name for row in rows}
    cutoff = time.time() - grace_seconds
    removed = []
    for child in datasets_dir.iterdir():
        name = child.name
        if name in referenced or not _looks_like_dataset(name):
            continue
        try:
            if not child.is_dir() or child.is_symlink() or child.stat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(name)
    return sorted(removed)


def sweep_incoming(incoming_dir: Path, grace_seconds: float = SWEEP_GRACE_SECONDS) -> int:
    """Delete downloaded zips a crashed upload left in `incoming/`."""
    if not incoming_dir.is_dir():
        return 0
    cutoff = time.time() - grace_seconds
    count = 0
    for child in incoming_dir.glob("*.zip"):
        try:
            if child.is_file() and child.stat().st_mtime < cutoff:
                child.unlink()
                count += 1
        except OSError:
            continue
    return count


def _looks_like_dataset(name: str) -> bool:
    return len(name) >= 16 and set(name) <= _DATASET_ID_CHARS
