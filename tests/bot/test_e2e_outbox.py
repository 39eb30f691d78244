"""The outbox survives a crash between posting a message and marking its event delivered: within
Discord's nonce window the retry gets the message Discord already has; later (a late restart)
the bot finds its own earlier post by the marker it carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot import notifier, queries
from tests.bot.conftest import start_bot, stop_bot
from tests.bot.e2e_jobs import command, texts, train, train_to_vote, undelivered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def crash_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the notifier's next `mark_delivered` of a posted message raise (the crash)."""
    real: Callable[..., None] = notifier.mark_delivered
    crashed: list[int] = []

    def flaky(engine: Any, event_id: int, message_id: int | None) -> None:
        if message_id is not None and not crashed:
            crashed.append(event_id)
            raise RuntimeError("simulated crash after posting")
        real(engine, event_id, message_id)

    monkeypatch.setattr(notifier, "mark_delivered", flaky)
    return crashed


async def test_dataset_report_posted_once_after_crash(
    emu, atelier, bot_engine, dataset_zip, monkeypatch
) -> None:
    d = emu.default
    crashed = crash_once(monkeypatch)
    job_id, reply = await train(emu, d.alice, dataset_zip, name="once")
    assert job_id, reply.content  # the member still gets the answer; the notifier retries
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    assert crashed  # the crash did happen, after the card and the report were posted
    thread = texts(emu, d.channel, f"Job #{job_id}")
    assert len(thread) == 1
    assert len(texts(emu, thread[0].id, "Dataset report")) == 1
    assert len(emu.threads_of(d.channel)) == 1


async def test_announcement_posted_once_after_crash(
    emu, atelier, settings, bot_engine, dataset_zip, tmp_path, monkeypatch
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip, name="annc")
    train_to_vote(bot_engine, tmp_path, job_id)
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    crashed = crash_once(monkeypatch)
    reply = await command(emu, d.alice, "job finalize", {"job": job_id})
    assert "finalized" in reply.content
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    assert crashed
    thread_id = texts(emu, d.channel, f"Job #{job_id}")[0].id
    assert len(texts(emu, thread_id, "The team chose")) == 1
    assert len(texts(emu, d.channel, "New model")) == 1


# --- beyond Discord's nonce window --------------------------------------------------------------


async def test_card_found_by_its_marker_after_the_nonce_window(
    emu, atelier, bot_engine, dataset_zip, monkeypatch
) -> None:
    """A crash between posting the job card and recording its id, and the retry comes after
    Discord forgot the nonce: the bot finds its card in the channel instead of posting again."""
    real = queries.set_event_message
    crashed: list[int] = []

    def flaky(engine: Any, event_id: int | None, message_id: int) -> None:
        if not crashed:
            crashed.append(message_id)
            emu.expire_nonces()  # the retry comes "late"
            raise RuntimeError("simulated crash after posting")
        real(engine, event_id, message_id)

    monkeypatch.setattr(queries, "set_event_message", flaky)
    d = emu.default
    job_id, reply = await train(emu, d.alice, dataset_zip, name="late")
    assert job_id, reply.content
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    assert crashed
    cards = texts(emu, d.channel, f"Job #{job_id}")
    assert [c.id for c in cards] == crashed
    assert len(emu.threads_of(d.channel)) == 1
    assert len(texts(emu, cards[0].id, "Dataset report")) == 1


async def test_report_posted_once_after_a_late_restart(
    emu, settings, bot_engine, dataset_zip, monkeypatch
) -> None:
    """The bot dies after posting the card and the report, and comes back after the nonce
    window: the report (a secondary post) is not posted twice."""
    d = emu.default
    bot = await start_bot(emu, settings, bot_engine)
    try:
        crashed = crash_once(monkeypatch)
        job_id, _ = await train(emu, d.alice, dataset_zip, name="restart")
        await emu.wait_until(lambda: bool(crashed), 10)
    finally:
        await stop_bot(bot)
    monkeypatch.undo()
    emu.expire_nonces()
    bot = await start_bot(emu, settings, bot_engine)
    try:
        await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    finally:
        await stop_bot(bot)
    assert len(texts(emu, d.channel, f"Job #{job_id}")) == 1
    thread = emu.threads_of(d.channel)
    assert len(thread) == 1
    assert len(texts(emu, thread[0].id, "Dataset report")) == 1
