"""Schema migrations: from empty, from the previous version with rows kept, and refusals."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import select

from storage.db import make_engine, session_scope
from storage.migrate import SchemaMismatch, current_revision, ensure_schema, head_revision, upgrade
from storage.models import Job


def test_empty_database_is_created_at_head(db_url: str) -> None:
    engine = make_engine(db_url)
    ensure_schema(engine)
    assert current_revision(engine) == head_revision()


def test_previous_version_is_upgraded_keeping_rows(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO dataset (id, path, images, report, created_at) "
                "VALUES ('d1', '/x', 3, '{}', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO job (owner_id, name, method, base_model, dataset_id, config, state,"
                " attempts, step, total_steps, created_at)"
                " VALUES (7, 'old', 'lora', 'tiny', 'd1', '{}', 'queued', 0, 0, 10,"
                " CURRENT_TIMESTAMP)"
            )
        )
    with pytest.raises(SchemaMismatch, match="atelier db upgrade"):
        ensure_schema(engine)
    upgrade(engine)
    ensure_schema(engine)
    with session_scope(engine) as session:
        (job,) = session.exec(select(Job)).all()
        assert (job.name, job.owner_id, job.parent_job_id) == ("old", 7, None)


def test_newer_database_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaMismatch, match="newer than this Atelier"):
        ensure_schema(engine)


def test_sqlite_pragmas(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
