"""Versioned schema migrations (Alembic), and the start-up check that refuses a database the
code does not match."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaMismatch(RuntimeError):
    """The database's schema version is not the code's; the message says what to do."""


def _config() -> Config:
    """Alembic's config holds only the scripts' folder. The database reaches Alembic as an open
    connection (`config.attributes`), never as a URL string: Alembic's ConfigParser would
    interpolate a %-encoded password (and crash with the URL, password included, in the
    traceback)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision the code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None for a database Alembic never touched."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database forward to `revision`, keeping its rows."""
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def ensure_schema(engine: Engine) -> None:
    """Create the schema in an empty database; refuse an older or newer one with a clear line."""
    current = current_revision(engine)
    if current is None:
        if inspect(engine).get_table_names():
            raise SchemaMismatch(
                "the database has tables but no Atelier schema version; is it another app's?"
            )
        upgrade(engine)
        return
    head = head_revision()
    if current == head:
        return
    if current not in known_revisions():
        raise SchemaMismatch(
            f"the database schema ({current}) is newer than this Atelier ({head}); "
            "upgrade Atelier or point it at another database"
        )
    raise SchemaMismatch(
        f"the database schema ({current}) is older than this Atelier ({head}); "
        "run `atelier db upgrade` (rows are kept)"
    )
