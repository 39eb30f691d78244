"""End to end: a worker process is killed mid-job; a second worker requeues the job, resumes it
from its newest checkpoint and finishes it, and the thread says so without repeating itself."""

from __future__ import annotations

from collections import Counter

import pytest

from storage.db import session_scope
from storage.models import Checkpoint
from tests.bot.conftest import WorkerProcess
from tests.bot.e2e_jobs import job_row, texts, train, undelivered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


@pytest.fixture
def settings(settings):  # short heartbeats: a lost worker is noticed in about 3 s
    fast = settings.worker.model_copy(
        update={
            "heartbeat_seconds": 0.5,
            "stale_after_seconds": 3.0,
            "poll_seconds": 0.2,
            "progress_event_seconds": 0.2,
        }
    )
    return settings.model_copy(update={"worker": fast})


def checkpoint_steps(engine, job_id: int) -> list[int]:
    with session_scope(engine) as session:
        return [c.step for c in session.query(Checkpoint).filter_by(job_id=job_id)]


async def test_killed_worker_job_resumes_on_another(
    emu, atelier, settings, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, reply = await train(emu, d.alice, dataset_zip, steps=20, name="lost")
    assert job_id, reply.content
    thread = job_row(bot_engine, job_id).thread_id
    first = WorkerProcess(settings, "first", tmp_path / "first.log").start()
    try:
        await emu.wait_until(lambda: checkpoint_steps(bot_engine, job_id), 150)
    finally:
        first.kill()
    killed_at = job_row(bot_engine, job_id)
    assert killed_at.state == "training", first.log()[-3000:]
    resumed_from = max(checkpoint_steps(bot_engine, job_id))
    with WorkerProcess(settings, "second", tmp_path / "second.log") as second:
        lost = await emu.wait_for_message(thread, "was lost", timeout=30)
        await emu.wait_until(lambda: job_row(bot_engine, job_id).state == "awaiting_vote", 150)
    assert "resume from its newest checkpoint" in lost.content
    resumed = await emu.wait_for_message(thread, "Training resumed", timeout=10)
    assert f"step {resumed_from}" in resumed.content, second.log()[-3000:]
    await emu.wait_for_message(thread, "Training done", timeout=20)
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 20)
    job = job_row(bot_engine, job_id)
    assert job.attempts == 2 and job.step == 20
    said = [m.content for m in emu.timeline(thread) if m.content]
    assert [t for t, n in Counter(said).items() if n > 1] == []
    for step in sorted(set(checkpoint_steps(bot_engine, job_id))):
        assert len(texts(emu, thread, f"step **{step}/20**")) == 1
    assert len(texts(emu, d.channel, f"Job #{job_id}")) == 1
