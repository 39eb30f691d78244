"""Limits hold on every path into the queue: `/job retry` counts against jobs_per_member, and
no child is trained from a cancelled parent (its `change:` is checked like /train's options)."""

from __future__ import annotations

import pytest

from bot import queries
from storage import jobs
from tests.bot.e2e_jobs import command, job_row, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def test_retry_respects_jobs_per_member(emu, atelier, bot_engine, dataset_zip) -> None:
    d = emu.default
    queries.update_guild_settings(bot_engine, d.guild.id, jobs_per_member=1)
    failed, _ = await train(emu, d.alice, dataset_zip, name="broken")
    jobs.fail(bot_engine, failed, None, "out of memory")
    waiting, _ = await train(emu, d.alice, dataset_zip, name="next")
    assert waiting
    reply = await command(emu, d.alice, "job retry", {"job": failed})
    assert "already has 1 job(s)" in reply.content, reply.content
    assert job_row(bot_engine, failed).state == "failed"
    await command(emu, d.alice, "job cancel", {"job": waiting})
    reply = await command(emu, d.alice, "job retry", {"job": failed})
    assert "back in the queue" in reply.content, reply.content


async def test_no_child_from_a_cancelled_parent(emu, atelier, bot_engine, dataset_zip) -> None:
    d = emu.default
    parent, _ = await train(emu, d.alice, dataset_zip, name="gone")
    await command(emu, d.alice, "job cancel", {"job": parent})
    reply = await command(emu, d.alice, "train lora", {"from": parent, "change": "rank=8"})
    assert "was cancelled" in reply.content, reply.content
