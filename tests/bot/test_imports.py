"""The bot's import path must not load torch (it starts in about a second)."""

import subprocess
import sys

MODULES = [
    "bot.client",
    "bot.__main__",
    "bot.exts.train",
    "bot.exts.jobs",
    "bot.exts.models",
    "bot.exts.admin",
    "bot.exts.votes",
    "bot.notifier",
    "bot.voting",
    "bot.links",
    "bot.downloads",
    "bot.render",
]


def test_no_torch_on_the_bot_import_path() -> None:
    code = (
        f"import {', '.join(MODULES)}; import sys; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_token_is_a_clear_exit_2(tmp_path, monkeypatch, capsys) -> None:
    from bot.__main__ import bot_cli
    from storage.settings import get_settings

    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATELIER_CONFIG", str(tmp_path / "none.toml"))
    get_settings.cache_clear()
    try:
        assert bot_cli([]) == 2
    finally:
        get_settings.cache_clear()
    assert "DISCORD_TOKEN is not set" in capsys.readouterr().err
