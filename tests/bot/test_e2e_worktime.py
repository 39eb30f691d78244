"""Worker time, as members see it: one role rule for every command that uses a worker, a
render quota, a render whose worker keeps dying is requeued and then said to have failed, and
the outbox's bounded tries survive a restart."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlmodel import select

from bot import notifier, queries
from bot.retries import Retries
from storage.db import session_scope
from storage.events import EventKind, emit
from storage.generations import complete_generation
from storage.models import Event, Generation, utcnow
from storage.requests import MAX_RENDER_ATTEMPTS
from storage.worktime import claim_next
from tests.bot.conftest import start_bot, stop_bot
from tests.bot.e2e_jobs import command, job_row, train, train_to_vote, undelivered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def finalized_model(emu, bot_engine, dataset_zip, tmp_path) -> int:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip)
    train_to_vote(bot_engine, tmp_path, job_id)
    await command(emu, d.alice, "job finalize", {"job": job_id})
    return job_id


def generations(engine) -> list[Generation]:
    with session_scope(engine) as session:
        return list(session.exec(select(Generation).order_by(Generation.id)).all())


async def test_generate_needs_the_trainer_role_like_train(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    model = await finalized_model(emu, bot_engine, dataset_zip, tmp_path)
    trainers = emu.create_role(d.guild, "Trainers")
    queries.update_guild_settings(bot_engine, d.guild.id, trainer_role_ids=[trainers.id])
    refused = await command(emu, d.bob, "generate", {"prompt": "ohwx", "model": model})
    assert "trainer roles" in refused.content and refused.ephemeral, refused.content
    assert generations(bot_engine) == [], "a refused /generate queues nothing"
    emu.set_member_roles(d.guild, d.bob, [trainers])
    allowed = await command(emu, d.bob, "generate", {"prompt": "ohwx", "model": model})
    assert "Queued image" in allowed.content, allowed.content


async def test_renders_count_against_the_members_render_quota(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    model = await finalized_model(emu, bot_engine, dataset_zip, tmp_path)
    atelier.settings.limits.renders_per_member = 2
    first = await command(
        emu, d.bob, "generate", {"prompt": "ohwx", "model": model, "weights": "0.5, 1"}
    )
    assert "Queued image" in first.content, first.content
    more = await command(emu, d.bob, "generate", {"prompt": "again", "model": model})
    assert "2 render(s) queued or running" in more.content, more.content
    compare = await command(emu, d.bob, "compare", {"a": model, "b": model})
    assert "render(s) queued or running" in compare.content, compare.content
    iterate = await command(emu, d.bob, "iterate start", {"model": model, "count": 2})
    assert "render(s) queued or running" in iterate.content, iterate.content
    assert len(generations(bot_engine)) == 2
    other = await command(emu, d.alice, "generate", {"prompt": "mine", "model": model})
    assert "Queued image" in other.content, "the quota is per member"
    done = generations(bot_engine)[0]
    complete_generation(bot_engine, done.id, str(tmp_path / "cmp.png"))  # type: ignore[arg-type]
    again = await command(emu, d.bob, "generate", {"prompt": "again", "model": model})
    assert "Queued image" in again.content, again.content


async def test_a_render_whose_worker_keeps_dying_is_requeued_then_said_failed(
    emu, atelier, settings, bot_engine, dataset_zip, tmp_path
) -> None:
    from trainer.worker import Worker

    d = emu.default
    model = await finalized_model(emu, bot_engine, dataset_zip, tmp_path)
    await command(emu, d.bob, "generate", {"prompt": "ohwx in the rain", "model": model})
    (request,) = generations(bot_engine)
    survivor = Worker(settings, bot_engine, "survivor")
    for attempt in range(1, MAX_RENDER_ATTEMPTS + 1):
        claimed = claim_next(bot_engine, f"doomed-{attempt}")
        assert claimed is not None and claimed.row.id == request.id
        with session_scope(bot_engine) as session:  # the worker dies: no heartbeat since
            row = session.get(Generation, request.id)
            row.heartbeat_at = utcnow() - timedelta(seconds=60)
        survivor.requeue_stale()
        (row,) = generations(bot_engine)
        expected = "failed" if attempt == MAX_RENDER_ATTEMPTS else "queued"
        assert (row.state, row.attempts) == (expected, attempt)
    said = await emu.wait_for_message(d.channel, "could not make your image", timeout=10)
    assert f"<@{d.bob.id}>" in said.content and "stopped 3 times" in said.content


async def test_outbox_tries_survive_a_restart(
    emu, atelier, settings, bot_engine, dataset_zip, caplog, monkeypatch
) -> None:
    """An event that keeps failing gets `max_tries` in all, not a fresh round per restart."""
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip, name="poisoned")
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    atelier.notifier.max_tries = 3
    atelier.notifier.retry_base_seconds = 2.0  # the 3rd try would come 4 s after the 2nd
    with session_scope(bot_engine) as session:  # a checkpoint event without its step
        event_id = emit(session, EventKind.CHECKPOINT, job_id, checkpoint_id=0)
        session.flush()
        event_id = event_id.id

    def tries() -> int:
        with session_scope(bot_engine) as session:
            return session.get(Event, event_id).tries

    await emu.wait_until(lambda: tries() >= 2, 15)
    await stop_bot(atelier)
    assert tries() == 2 and undelivered(bot_engine, job_id)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="bot.notifier")
    # the same bound from the new bot's first tick (start_bot sets its timings only after)
    monkeypatch.setattr(notifier, "Retries", lambda **_: Retries(base_seconds=0.3, max_tries=3))
    bot = await start_bot(emu, settings, bot_engine)
    try:
        thread = job_row(bot_engine, job_id).thread_id
        told = await emu.wait_for_message(thread, "could not post", timeout=15)
    finally:
        await stop_bot(bot)
    assert "after 3 tries" in told.content, told.content
    after_restart = [r.getMessage() for r in caplog.records if "failed (try" in r.getMessage()]
    assert after_restart == [
        f"job {job_id}: event {event_id} (checkpoint_ready) failed (try 3): "
        "an internal error (KeyError)"
    ], after_restart
    assert tries() == 3
