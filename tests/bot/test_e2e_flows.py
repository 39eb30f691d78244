"""End to end without training: the bot against the emulator, with the worker's side written
straight through `storage.jobs` (claim, progress, checkpoint) so each case takes seconds."""

from __future__ import annotations

import pytest

from bot.render import VOTE_EMOJI
from storage import jobs
from storage.db import session_scope
from storage.models import Checkpoint, Vote
from tests.bot.conftest import start_bot, stop_bot
from tests.bot.e2e_jobs import fake_checkpoint, job_row, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


async def test_refusals_and_cancel(emu, atelier, bot_engine, dataset_zip) -> None:
    d = emu.default
    job_id, reply = await train(emu, d.alice, b"this is not a zip")
    assert job_id == 0 and "Dataset refused" in reply.content and reply.ephemeral
    assert not [m for m in emu.timeline(d.channel) if "Job #" in m.content]
    _, reply = await train(emu, d.alice, dataset_zip, steps=20, rank=500)
    assert reply.ephemeral  # Discord's own range check is not enforced by the emulator
    job_id, reply = await train(emu, d.alice, dataset_zip)
    assert job_id and reply.ephemeral  # the public card is in the channel, not the reply
    handle = await emu.run_slash_command(d.bob, d.channel, "job cancel", {"job": job_id})
    refused = await handle.wait_followup(1, 10)
    assert "Only the job's owner" in refused.content and refused.ephemeral
    assert job_row(bot_engine, job_id).state == "queued"
    handle = await emu.run_slash_command(d.alice, d.channel, "job cancel", {"job": job_id})
    await handle.wait_followup(1, 10)
    thread = job_row(bot_engine, job_id).thread_id
    said = await emu.wait_for_message(thread, "cancelled", timeout=10)
    assert f"<@{d.alice.id}>" in said.content and job_row(bot_engine, job_id).state == "cancelled"
    choices = await (
        await emu.run_autocomplete(d.alice, d.channel, "train lora", "preset", "qu")
    ).wait_choices()
    assert [c["value"] for c in choices] == ["quick-test"]


async def test_missing_attach_files_is_explained_then_delivered(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip)
    thread = job_row(bot_engine, job_id).thread_id
    emu.set_permissions(d.channel, emu.world.bot, deny=["attach_files"])
    jobs.claim(bot_engine, "w")
    jobs.start_training(bot_engine, job_id, "w", total_steps=20)
    fake_checkpoint(bot_engine, tmp_path, job_id, 10)
    said = await emu.wait_for_message(thread, "Attach Files", timeout=10)
    assert f"<@{d.alice.id}>" in said.content
    emu.set_permissions(d.channel, emu.world.bot, deny=[])
    await emu.wait_until(
        lambda: job_row(bot_engine, job_id) and any(m.attachments for m in emu.timeline(thread)), 15
    )


async def test_progress_coalesced_through_429_storm(emu, atelier, bot_engine, dataset_zip) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip)
    thread = job_row(bot_engine, job_id).thread_id
    jobs.claim(bot_engine, "w")
    jobs.start_training(bot_engine, job_id, "w", total_steps=20)
    await emu.wait_until(lambda: job_row(bot_engine, job_id).status_message_id is not None, 10)
    emu.rate_limit(r"PATCH /channels/\d+/messages/\d+", count=6, retry_after=0.2)
    for step in range(1, 16):
        jobs.report_progress(
            bot_engine,
            job_id,
            "w",
            step=step,
            total=20,
            loss=0.5,
            steps_per_second=2.0,
            eta_seconds=(20 - step) / 2,
        )
    status_id = job_row(bot_engine, job_id).status_message_id
    await emu.wait_until(lambda: "step 15/20" in emu.message(status_id).content, 20)
    edits = [c for c in emu.calls if c[0] == "PATCH" and c[1].endswith(str(status_id))]
    assert len(edits) <= 10  # 15 progress events, a few edits (coalesced), 429s retried
    assert len([m for m in emu.timeline(thread) if "step" in m.content]) == 1


async def test_restart_recounts_reactions_made_while_down(
    emu, settings, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    bot = await start_bot(emu, settings, bot_engine)
    try:
        job_id, _ = await train(emu, d.alice, dataset_zip)
        jobs.claim(bot_engine, "w")
        jobs.start_training(bot_engine, job_id, "w", total_steps=20)
        ckpt = fake_checkpoint(bot_engine, tmp_path, job_id, 10)
        await emu.wait_until(
            lambda: (
                _grid_id(bot_engine, ckpt.id) is not None
                and VOTE_EMOJI in emu.reactions(_grid_id(bot_engine, ckpt.id))
            ),
            10,
        )
    finally:
        await stop_bot(bot)
    grid_id = _grid_id(bot_engine, ckpt.id)
    emu.add_reaction(d.bob, grid_id, VOTE_EMOJI)  # while the bot is away
    emu.add_reaction(d.carol, grid_id, VOTE_EMOJI)
    bot = await start_bot(emu, settings, bot_engine)
    try:
        await emu.wait_until(lambda: _voters(bot_engine, ckpt.id) == {d.bob.id, d.carol.id}, 10)
        assert not bot.synced  # same commands: no second sync
    finally:
        await stop_bot(bot)


def _grid_id(engine, checkpoint_id: int) -> int | None:
    with session_scope(engine) as session:
        return session.get(Checkpoint, checkpoint_id).grid_message_id


def _voters(engine, checkpoint_id: int) -> set[int]:
    with session_scope(engine) as session:
        return {v.user_id for v in session.query(Vote).filter_by(checkpoint_id=checkpoint_id)}
