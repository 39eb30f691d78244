"""Upload quotas, the in-flight cap, discarding a refused new folder, and the sweep of dataset
folders nothing refers to."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from atelier.settings import load_settings
from storage import quotas
from storage.db import make_engine, session_scope
from storage.migrate import upgrade
from storage.models import Dataset
from storage.settings import Limits

GUILD, ALICE, BOB = 10, 1, 2


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    upgrade(engine)
    return engine


def add_row(engine: Engine, folder: Path, by: int, stored: int | None, guild: int = GUILD) -> None:
    report = {"stored_bytes": stored} if stored is not None else {}
    with session_scope(engine) as session:
        session.add(
            Dataset(
                id=folder.name,
                guild_id=guild,
                path=str(folder),
                images=1,
                created_by=by,
                report=report,
            )
        )


def make_folder(root: Path, name: str, size: int = 10, age: float = 0.0) -> Path:
    folder = root / name
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "0001.jpg").write_bytes(b"x" * size)
    if age:
        past = time.time() - age
        os.utime(folder, (past, past))
    return folder


def test_usage_counts_member_and_guild_with_legacy_folders_measured(
    engine: Engine, tmp_path: Path
) -> None:
    add_row(engine, make_folder(tmp_path, "a" * 24), ALICE, 1000)
    add_row(engine, make_folder(tmp_path, "b" * 24, size=300), ALICE, None)  # measured on disk
    add_row(engine, make_folder(tmp_path, "c" * 24), BOB, 50)
    add_row(engine, make_folder(tmp_path, "d" * 24), ALICE, 7000, guild=99)  # another guild
    with session_scope(engine) as session:
        assert quotas.usage(session, GUILD, ALICE) == quotas.Usage(1300, 1350)


def test_quotas_refuse_before_download(engine: Engine, tmp_path: Path) -> None:
    add_row(engine, make_folder(tmp_path, "a" * 24), ALICE, 900)
    limits = Limits(member_storage_bytes=1000, guild_storage_bytes=5000)
    quotas.check_before_download(engine, GUILD, ALICE, quotas.Usage(100, 100), limits)
    with pytest.raises(quotas.QuotaExceeded, match="of your 1,000 bytes quota"):
        quotas.check_before_download(engine, GUILD, ALICE, quotas.Usage(101, 101), limits)
    quotas.check_before_download(engine, GUILD, BOB, quotas.Usage(1000, 1000), limits)
    with pytest.raises(quotas.QuotaExceeded, match="This server's datasets"):
        quotas.check_before_download(engine, GUILD, BOB, quotas.Usage(10, 4101), limits)
    with pytest.raises(quotas.QuotaExceeded, match="these images"):
        quotas.check_after_ingest(engine, GUILD, ALICE, 101, limits)


def test_job_limit_refuses_before_download(engine: Engine) -> None:
    from storage import jobs
    from storage.models import Job

    with session_scope(engine) as session:
        session.add(Dataset(id="ds", path="/tmp/ds", images=1))
        jobs.enqueue(
            session,
            Job(
                guild_id=GUILD,
                owner_id=ALICE,
                name="x",
                method="lora",
                base_model="tiny",
                dataset_id="ds",
                config={},
            ),
        )
    zero = quotas.Usage(0, 0)
    quotas.check_before_download(engine, GUILD, ALICE, zero, Limits(), job_limit=2)
    with pytest.raises(quotas.QuotaExceeded, match="already have 1 job"):
        quotas.check_before_download(engine, GUILD, ALICE, zero, Limits(), job_limit=1)


def test_discard_only_unreferenced_new_folders(engine: Engine, tmp_path: Path) -> None:
    kept = make_folder(tmp_path, "a" * 24)
    add_row(engine, kept, ALICE, 10)
    refused = make_folder(tmp_path, "b" * 24)
    assert not quotas.discard_if_unreferenced(engine, kept, kept.name)
    assert not quotas.discard_if_unreferenced(engine, refused, "c" * 24)  # name mismatch
    assert quotas.discard_if_unreferenced(engine, refused, refused.name)
    assert kept.is_dir() and not refused.exists()


def test_sweep_removes_old_unreferenced_dataset_folders(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    referenced = make_folder(root, "a" * 24, age=7200)
    add_row(engine, referenced, ALICE, 10)
    orphan = make_folder(root, "b" * 24, age=7200)
    young = make_folder(root, "c" * 24)  # may be an upload whose row is being written
    other = make_folder(root, "notes", age=7200)  # not a dataset id: never touched
    assert quotas.sweep_datasets(engine, root) == ["b" * 24]
    assert referenced.is_dir() and young.is_dir() and other.is_dir() and not orphan.exists()


def test_sweep_incoming_removes_stale_downloads(tmp_path: Path) -> None:
    stale, fresh = tmp_path / "old.zip", tmp_path / "new.zip"
    stale.write_bytes(b"z")
    fresh.write_bytes(b"z")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert quotas.sweep_incoming(tmp_path) == 1
    assert fresh.exists() and not stale.exists()


async def test_in_flight_cap_per_member(engine: Engine, tmp_path: Path) -> None:
    from bot.errors import LimitReached
    from bot.ingesting import Ingests

    settings = load_settings(data_dir=tmp_path / "data")
    ingests = Ingests(settings)
    try:
        async with ingests.admitted(engine, GUILD, ALICE, 100):
            with pytest.raises(LimitReached, match="already have an upload being checked"):
                async with ingests.admitted(engine, GUILD, ALICE, 100):
                    pass
            async with ingests.admitted(engine, GUILD, BOB, 100):
                assert ingests.reserved_guild[GUILD] == 200
        async with ingests.admitted(engine, GUILD, ALICE, 100):  # released again
            assert ingests.in_flight[(GUILD, ALICE)] == 1
        assert ingests.reserved_guild[GUILD] == 0
    finally:
        ingests.close()
