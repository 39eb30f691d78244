"""Shared fixtures: real databases (a SQLite file, and PostgreSQL when a server URL is given)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from storage.db import make_engine
from storage.migrate import upgrade

POSTGRES_URL = os.environ.get("ATELIER_TEST_POSTGRES_URL")

if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    # Each pytest-xdist worker (and the workers, bots and `atelier train` processes its tests
    # start) gets its share of the cores for torch's threads: two workers each running a
    # two-thread job on two cores would spin against each other. Set before torch is imported.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def _postgres_database() -> Iterator[str]:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = POSTGRES_URL.replace("postgresql://", "postgresql://", 1)  # type: ignore[union-attr]
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests (training runs, subprocesses: up to minutes each) first, the rest after
    them in their own order: on two workers the long ones then overlap the short ones instead of
    one long test ending the run alone (longest-first scheduling)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'atelier.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL: set ATELIER_TEST_POSTGRES_URL (.ci/postgres.sh starts one)")
    yield from _postgres_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'atelier.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database on either backend."""
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()
