"""End to end: the real bot against the Discord emulator, with a real worker training the tiny
model. One job is shared across the happy-path assertions (train → grids → votes → finalize →
file → announcement)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from bot.render import NUMBER_EMOJI, VOTE_EMOJI
from storage.db import session_scope
from storage.models import Checkpoint, Job, Vote
from tests.bot.conftest import WorkerThread

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def job_row(engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        return session.get(Job, job_id)


async def test_train_vote_finalize(emu, atelier, settings, bot_engine, dataset_zip) -> None:
    d = emu.default
    handle = await emu.run_slash_command(
        d.alice,
        d.channel,
        "train lora",
        {"trigger": "ohwx", "preset": "quick-test", "steps": 20, "name": "redfig"},
        attachments={"dataset": ("set.zip", dataset_zip, "application/zip")},
    )
    response = await handle.wait_response(3)
    assert response["type"] == 5  # deferred within 3 s
    reply = await handle.wait_followup(1, 30)
    match = re.search(r"Job #(\d+)", reply.content)
    assert match, reply.content
    job_id = int(match.group(1))
    job = job_row(bot_engine, job_id)
    assert job.thread_id and job.state == "queued"
    thread_msgs = emu.timeline(job.thread_id)
    assert thread_msgs and thread_msgs[0].embeds[0]["title"] == "Dataset report"
    card = emu.message(job.thread_id)  # the thread's id is its starter message's id
    assert "redfig" in card.content

    with WorkerThread(settings, bot_engine):
        await emu.wait_until(lambda: job_row(bot_engine, job_id).state == "awaiting_vote", 180)
        done = await emu.wait_for_message(job.thread_id, "Training done", timeout=20)
    job = job_row(bot_engine, job_id)
    status = emu.message(job.status_message_id)
    await emu.wait_until(lambda: "waiting for votes" in status.content, 10)
    assert "step 20/20" in status.content
    with session_scope(bot_engine) as session:
        ckpts = session.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step).all()
    assert len(ckpts) >= 2 and all(c.grid_message_id for c in ckpts)
    grid = emu.message(ckpts[0].grid_message_id)
    assert grid.attachments and VOTE_EMOJI in emu.reactions(grid.id)
    assert len(done.attachments) == 2  # comparison grid + loss curve
    await emu.wait_until(lambda: NUMBER_EMOJI[len(ckpts) - 1] in emu.reactions(done.id), 10)

    # votes: alice and bob like the first checkpoint, carol the second (twice: one vote)
    emu.add_reaction(d.alice, grid.id, VOTE_EMOJI)
    emu.add_reaction(d.bob, done.id, NUMBER_EMOJI[0])
    emu.add_reaction(d.carol, done.id, NUMBER_EMOJI[1])
    emu.add_reaction(d.carol, ckpts[1].grid_message_id, VOTE_EMOJI)
    emu.add_reaction(d.alice, done.id, "🎉")  # not a vote

    def votes() -> dict[int, set[int]]:
        with session_scope(bot_engine) as session:
            out: dict[int, set[int]] = {}
            for vote in session.query(Vote).all():
                out.setdefault(vote.checkpoint_id, set()).add(vote.user_id)
            return out

    expected = {ckpts[0].id: {d.alice.id, d.bob.id}, ckpts[1].id: {d.carol.id}}
    try:
        await emu.wait_until(lambda: votes() == expected, 10)
    finally:
        print("VOTES", votes(), expected, [e for e, _ in emu.events[-12:]])

    # bob may not finalize alice's job; alice may
    refused = await emu.run_slash_command(d.bob, d.channel, "job finalize", {"job": job_id})
    msg = await refused.wait_followup(1, 10)
    assert "Only the job's owner" in msg.content and msg.ephemeral
    closing = await emu.run_slash_command(d.alice, d.channel, "job finalize", {"job": job_id})
    msg = await closing.wait_followup(1, 30)
    assert f"step {ckpts[0].step} kept" in msg.content
    final = await emu.wait_for_message(job.thread_id, "The team chose", timeout=20)
    assert final.attachments, final.content
    with session_scope(bot_engine) as session:
        winner = session.get(Checkpoint, ckpts[0].id)
    model_bytes = Path(winner.path).read_bytes()
    assert emu.attachment_bytes(final.id) == model_bytes
    announcement = await emu.wait_for_message(d.channel, "New model", timeout=10)
    assert "ohwx" in announcement.content and "tiny" in announcement.content
    assert job_row(bot_engine, job_id).state == "finalized"

    # over the upload limit: a signed link that serves the exact bytes, until it expires
    emu.update_guild(d.guild, attachment_size_limit=16)
    handle = await emu.run_slash_command(d.bob, d.channel, "models get", {"model": job_id})
    reply = await handle.wait_followup(1, 10)
    url = re.search(r"(http://\S+)", reply.content).group(1)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200 and await resp.read() == model_bytes
        atelier.signer.ttl = -1
        expired, _ = atelier.signer.link(Path(winner.path))
        async with http.get(expired) as resp:
            assert resp.status == 403
