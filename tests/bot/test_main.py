"""`python -m bot` starts, or exits with a clear code and one line."""


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
