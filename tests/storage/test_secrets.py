"""Database URLs, the token and the link secret never reach a repr, a log line or a traceback;
a %-encoded database password works with `atelier db upgrade`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atelier.settings import AtelierSettings, load_settings
from storage import redact
from storage.db import make_engine
from storage.migrate import current_revision, head_revision, upgrade
from storage.settings import SettingsError

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "top%25secret"  # "top%secret", %-encoded as a URL needs it


def test_repr_and_str_of_settings_hide_the_database_url() -> None:
    settings = AtelierSettings(database_url=f"postgresql://atelier:{PASSWORD}@db:5432/atelier")
    for text in (repr(settings), str(settings)):
        assert "top%" not in text and "atelier:" not in text
    assert settings.db_url_masked == "postgresql://atelier:***@db:5432/atelier"


def test_upgrade_works_where_the_url_holds_a_percent_sign(tmp_path: Path) -> None:
    """Alembic's ConfigParser used to choke on `%` in the URL it was given."""
    folder = tmp_path / "a%b"
    engine = make_engine(f"sqlite:///{folder / 'atelier.db'}")
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_a_crashing_db_upgrade_prints_no_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env["ATELIER_DATA_DIR"] = str(tmp_path)
    env["ATELIER_DATABASE_URL"] = f"postgresql://atelier:{PASSWORD}@127.0.0.1:1/atelier"
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "db", "upgrade"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "interpolation" not in output
    assert "top%" not in output, output[-2000:]
    assert "OperationalError" in output


def test_log_records_and_tracebacks_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    settings = AtelierSettings(
        database_url=f"postgresql://atelier:{PASSWORD}@db/atelier",
        link_secret="L" * 40,
        DISCORD_TOKEN="tok.en.value-1234",
    )
    log = logging.getLogger("test.redact")
    caplog.handler.addFilter(redact.RedactingFilter(redact.secret_strings(settings)))
    try:
        raise RuntimeError(f"cannot reach postgresql://atelier:{PASSWORD}@db/atelier")
    except RuntimeError:
        log.exception("token %s, key %s, raw %s", "tok.en.value-1234", "L" * 40, "top%secret")
    text = caplog.text
    assert "top%" not in text and "tok.en.value" not in text and "L" * 40 not in text
    assert "***" in text and "RuntimeError" in text


def test_link_secret_needs_32_characters_and_empty_means_unset() -> None:
    with pytest.raises(SettingsError, match="link_secret"):
        load_settings(link_secret="short")
    assert load_settings(link_secret="").link_secret is None
    assert load_settings(link_secret="x" * 32).link_secret is not None


def test_docker_env_file_is_ignored_by_git() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "docker/.env"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, "docker/.env (the token) must be in .gitignore"
