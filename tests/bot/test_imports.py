"""The bot's import path must not load torch (it starts in about a second)."""

import subprocess
import sys


def test_bot_imports_no_torch_and_only_the_trainers_config() -> None:
    """Every module of the bot (extensions included): no torch or diffusers, and from `trainer`
    only the pydantic-only config and presets (imports point bot → storage, trainer.config)."""
    code = (
        "import importlib, pkgutil, sys, bot\n"
        "for info in pkgutil.walk_packages(bot.__path__, 'bot.'):\n"
        "    importlib.import_module(info.name)\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('trainer'))\n"
        "assert loaded == ['trainer', 'trainer.config', 'trainer.presets'], loaded\n"
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
