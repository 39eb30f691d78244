"""`atelier serve` supervises real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_DATA_DIR=str(tmp_path / "data"),
        ATELIER_WORKER__POLL_SECONDS="0.2",
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("DISCORD_TOKEN", None)
    return env


def _children(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE]


def _wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_serve_restarts_a_killed_worker(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "atelier.cli", "serve", "--no-bot", "--workers", "1"]
    serve = subprocess.Popen(command, env=_env(tmp_path))
    try:
        (first,) = _wait_for(lambda: _children(serve.pid))
        os.kill(first, signal.SIGKILL)
        (replacement,) = _wait_for(lambda: [p for p in _children(serve.pid) if p != first])
        assert psutil.pid_exists(replacement)
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0


@pytest.mark.slow
def test_one_bot_per_data_folder_but_any_number_of_worker_hosts(tmp_path: Path) -> None:
    """The lock is the bot's: a second `serve` with the bot is refused, while `serve --no-bot`
    (the scale-out recipe) starts next to it on the same folder."""
    from atelier.serve import lock_data_folder

    held = lock_data_folder(tmp_path / "data")  # a running `serve` with the bot
    try:
        with_bot = subprocess.run(
            [sys.executable, "-m", "atelier.cli", "serve"],
            env={**_env(tmp_path), "DISCORD_TOKEN": "not-a-real-token"},
            capture_output=True,
            text=True,
        )
        assert with_bot.returncode == 2 and "already running the bot" in with_bot.stderr
        command = [sys.executable, "-m", "atelier.cli", "serve", "--no-bot", "--workers", "1"]
        workers = subprocess.Popen(command, env=_env(tmp_path))
        try:
            _wait_for(lambda: _children(workers.pid))
            assert workers.poll() is None
        finally:
            workers.send_signal(signal.SIGTERM)
            assert workers.wait(timeout=60) == 0
    finally:
        held.close()


def test_serve_without_token_points_to_the_demo(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "serve"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: DISCORD_TOKEN is not set")
    assert "atelier demo" in result.stderr
