"""End to end: the thread shows, per checkpoint, how much the model changed prompts without the
trigger, and the comparison grid's message names the suggested checkpoint (real bot against the
emulator, real worker training the tiny model with held-out images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bot.render import NUMBER_EMOJI
from storage.db import session_scope
from storage.models import Checkpoint, Event
from tests.bot.conftest import WorkerThread, make_zip
from tests.bot.e2e_jobs import job_row, train
from trainer.leakage import DEFAULT_LEAK_PROMPTS, LABEL_PREFIX, suggest
from trainer.validation import strip_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_leakage_number_and_suggested_checkpoint_in_the_thread(
    emu, atelier, settings, bot_engine
) -> None:
    job_id, reply = await train(emu, emu.default.alice, make_zip(count=12), steps=20)
    assert job_id, reply.content
    job = job_row(bot_engine, job_id)
    with WorkerThread(settings, bot_engine):
        await emu.wait_until(lambda: job_row(bot_engine, job_id).state == "awaiting_vote", 240)
        done = await emu.wait_for_message(job.thread_id, "Training done", timeout=30)

    with session_scope(bot_engine) as session:
        ckpts = session.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step).all()
        events = [
            json.loads(e.payload) if isinstance(e.payload, str) else e.payload
            for e in session.query(Event).filter_by(job_id=job_id, kind="checkpoint_ready").all()
        ]
    assert len(ckpts) >= 2
    numbers = {int(p["step"]): (p.get("heldout_loss"), p.get("leakage")) for p in events}
    assert all(isinstance(leak, float) and leak >= 0 for _, leak in numbers.values()), numbers

    for ckpt in ckpts:  # each grid message says the number; the grid has the no-trigger rows
        grid = emu.message(ckpt.grid_message_id)
        leak = numbers[ckpt.step][1]
        assert f"Outside the trigger, images changed by **{leak:.1f}/255**" in grid.content
        assert grid.attachments
        with Image.open(strip_path(Path(ckpt.grid_path))) as strip:
            labels = json.loads(strip.text["labels"])
        assert [f"{LABEL_PREFIX}{p}" for p in DEFAULT_LEAK_PROMPTS] == labels[-2:]

    expected = suggest([(step, h, c) for step, (h, c) in sorted(numbers.items())])
    assert expected is not None, numbers  # held-out images exist: a suggestion is made
    index = [c.step for c in ckpts].index(expected)
    assert f"⭐ Suggested: {NUMBER_EMOJI[index]} step {expected}" in done.content
    assert "votes decide" in done.content
    assert len(done.attachments) == 2  # comparison grid (star + footer) and loss curve


async def test_keep_prompts_are_stored_with_the_job_or_refused_in_one_line(
    emu, atelier, bot_engine
) -> None:
    """`/train lora keep_prompts:` turns preservation on those prompts; one naming the trigger
    is refused before anything is stored."""
    job_id, reply = await train(
        emu, emu.default.alice, make_zip(count=4), keep_prompts="a red car | a blue house"
    )
    assert job_id, reply.content
    preservation = job_row(bot_engine, job_id).config["preservation"]
    assert preservation["enabled"] and preservation["prompts"] == ["a red car", "a blue house"]

    refused_id, refused = await train(
        emu, emu.default.alice, make_zip(count=4), keep_prompts="ohwx on a beach"
    )
    assert refused_id == 0 and refused.ephemeral
    assert "contains the trigger" in refused.content and "\n" not in refused.content


async def test_keep_weight_sets_preservation_or_is_refused_in_one_line(
    emu, atelier, bot_engine
) -> None:
    """`/train lora keep_weight:` is preservation's weight (a NUMBER option, so 2.5 arrives as
    a float); 0 turns it off, and with keep prompts that is refused before anything is stored."""
    job_id, reply = await train(emu, emu.default.alice, make_zip(count=4), keep_weight=2.5)
    assert job_id, reply.content
    preservation = job_row(bot_engine, job_id).config["preservation"]
    assert preservation["enabled"] and preservation["weight"] == 2.5

    refused_id, refused = await train(
        emu, emu.default.alice, make_zip(count=4), keep_prompts="a red car", keep_weight=0
    )
    assert refused_id == 0 and refused.ephemeral
    assert "keep_weight 0 turns" in refused.content and "\n" not in refused.content
