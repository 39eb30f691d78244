"""One job's bad luck never silences the bot: a poison event backs off alone and is given up on
out loud, a job started inside a thread works, and what could not be delivered is said (the
model file is kept and linked)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storage import jobs
from storage.db import session_scope
from storage.events import EventKind, emit
from tests.bot.e2e_jobs import command, job_row, texts, train, train_to_vote, undelivered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def poison(engine, job_id: int) -> None:
    """A checkpoint event without its step (a worker bug): rendering it raises KeyError."""
    with session_scope(engine) as session:
        emit(session, EventKind.CHECKPOINT, job_id, checkpoint_id=0)


async def test_poison_event_does_not_stall_other_jobs(
    emu, atelier, bot_engine, dataset_zip
) -> None:
    d = emu.default
    atelier.notifier.max_tries = 3
    first, _ = await train(emu, d.alice, dataset_zip, name="first")
    second, _ = await train(emu, d.bob, dataset_zip, name="second")
    poison(bot_engine, first)  # older than anything the second job says next
    jobs.fail(bot_engine, second, None, "the dataset was empty")
    second_thread = job_row(bot_engine, second).thread_id
    await emu.wait_for_message(second_thread, "the dataset was empty", timeout=10)
    first_thread = job_row(bot_engine, first).thread_id
    told = await emu.wait_for_message(first_thread, "could not post", timeout=15)
    assert f"job #{first}" in told.content and "after 3 tries" in told.content
    assert "internal error" in told.content and "KeyError" in told.content
    await emu.wait_until(lambda: not undelivered(bot_engine, first), 5)


async def test_train_inside_a_thread(emu, atelier, bot_engine, dataset_zip) -> None:
    d = emu.default
    thread = emu.create_thread(d.alice, d.channel, "chat about models")
    handle = await emu.run_slash_command(
        d.alice,
        thread,
        "train lora",
        {"trigger": "ohwx", "preset": "quick-test", "steps": 20, "name": "inthread"},
        attachments={"dataset": ("set.zip", dataset_zip, "application/zip")},
    )
    reply = await handle.wait_followup(1, 30)
    job_id = int(re.search(r"Job #(\d+)", reply.content).group(1))  # type: ignore[union-attr]
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    assert job_row(bot_engine, job_id).thread_id == thread.id
    assert texts(emu, thread, f"Job #{job_id}") and texts(emu, thread, "Dataset report")
    assert [t.id for t in emu.threads_of(d.channel)] == [thread.id]  # no thread in a thread
    assert f"<#{thread.id}>" in reply.content


async def test_undeliverable_model_file_is_said_and_kept(
    emu, atelier, settings, bot_engine, dataset_zip
) -> None:
    d = emu.default
    atelier.notifier.max_tries = 2
    job_id, _ = await train(emu, d.alice, dataset_zip, name="lost")
    files = settings.data_dir / "jobs" / "lost"
    files.mkdir(parents=True)
    ckpts = train_to_vote(bot_engine, files, job_id)
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    thread = job_row(bot_engine, job_id).thread_id
    emu.server_error(rf"POST /channels/{thread}/messages$", count=2, status=503)
    reply = await command(emu, d.alice, "job finalize", {"job": job_id})
    assert "finalized" in reply.content
    told = await emu.wait_for_message(thread, "could not post the model file", timeout=15)
    assert "503" in told.content and "/dl/" in told.content  # a link to the kept file
    assert Path(ckpts[-1].path).is_file()
    assert not texts(emu, thread, "The team chose")
