"""Settings: defaults, env + file sources, one clear line on a bad value, the token hidden."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atelier.settings import load_settings
from storage.settings import SettingsError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ATELIER_") or name == "DISCORD_TOKEN":
            monkeypatch.delenv(name)


def test_safe_defaults() -> None:
    settings = load_settings()
    assert settings.db_url.endswith("data/atelier.db") and settings.db_url.startswith("sqlite")
    assert settings.default_base_model == "tiny"
    assert settings.base_models["tiny"].path == "builtin:tiny"


def test_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "atelier.toml").write_text(
        "vote_window_hours = 2\n[limits]\nmax_files = 10\n"
        '[base_models.sd15]\npath = "/models/sd15"\narchitecture = "sd1"\n'
    )
    monkeypatch.setenv("ATELIER_LIMITS__JOBS_PER_MEMBER", "3")
    settings = load_settings()
    assert settings.vote_window_hours == 2
    assert settings.limits.max_files == 10 and settings.limits.jobs_per_member == 3
    assert settings.base_models["sd15"].path == "/models/sd15"


def test_bad_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_LIMITS__MAX_FILES", "lots")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message and "limits.max_files" in message


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "atelier.toml").write_text("vote_windw_hours = 2\n")
    with pytest.raises(SettingsError, match="vote_windw_hours"):
        load_settings()


def test_token_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "super-secret-token-value")
    settings = load_settings()
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "super-secret-token-value"
    assert "super-secret" not in repr(settings) and "super-secret" not in str(settings)
    assert "super-secret" not in settings.model_dump_json()
