"""`atelier demo` end to end: the real bot on the emulator, a real worker process, the toy
model; the transcript must show the grids and the votes the scripted members cast."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atelier.demo import run_demo
from bot.render import NUMBER_EMOJI, VOTE_EMOJI

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


async def test_demo_transcript_shows_grids_and_votes(tmp_path: Path) -> None:
    result = await run_demo(tmp_path, base_model="toy", steps=60)
    html = result.transcript.read_text(encoding="utf-8")
    steps = sorted(int(step) for step in result.votes)
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    assert len(images) >= len(steps) + 2, "a grid per checkpoint, the comparison and the loss"

    middle = steps[len(steps) // 2]
    assert result.winner_step == middle, "alice (number) and bob (👍 on its grid) chose it"
    assert result.votes[str(middle)] == 2 and result.votes[str(steps[-1])] == 1
    # reaction counts include the bot's own reaction on each
    assert f"{NUMBER_EMOJI[len(steps) // 2]} 2" in html
    assert f"{NUMBER_EMOJI[len(steps) - 1]} 2" in html
    assert f"{VOTE_EMOJI} 2" in html
    assert "The team chose" in html and "New model" in html
    assert result.model_file.is_file() and result.model_file.suffix == ".safetensors"
