"""`atelier bot` starts, or exits with a clear code and one line; it validates the whole
configuration (the worker's section too), as every entry point does."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.cli import main
from atelier.settings import get_settings


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    path = tmp_path / "atelier.toml"
    monkeypatch.setenv("ATELIER_CONFIG", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_missing_token_is_a_clear_exit_2(config: Path, capsys: pytest.CaptureFixture) -> None:
    # the worker's section is part of the one configuration: the bot accepts it
    config.write_text('[worker]\ndevice = "cpu"\n[discord]\nlink_port = 9000\n')
    assert main(["bot"]) == 2
    assert "DISCORD_TOKEN is not set" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["bot"], ["worker", "--once"]])
def test_a_typo_in_any_section_stops_every_process(
    config: Path, capsys: pytest.CaptureFixture, command: list[str]
) -> None:
    config.write_text('[worker]\ndevise = "cpu"\n[discord]\nlink_port = 9000\n')
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "worker.devise" in err and len(err.strip().splitlines()) == 1
