"""Votes, the winner rule, finalize (files kept and deleted), the outbox and generation requests."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from storage import events, jobs
from storage.db import session_scope
from storage.finalize import NothingToFinalize, finalize, sweep_deleted
from storage.generations import claim_generation, complete_generation, request_generation
from storage.models import Checkpoint, utcnow
from storage.votes import replace_votes, set_vote, tally
from tests.storage.helpers import make_jobs


def _trained_job(engine: Engine, tmp_path: Path, steps: list[int]) -> tuple[int, list[Checkpoint]]:
    (job_id,) = make_jobs(engine, [5])
    jobs.claim(engine, "w")
    jobs.start_training(engine, job_id, "w", total_steps=steps[-1])
    saved = []
    for step in steps:
        folder = tmp_path / f"step-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "state").mkdir()
        saved.append(
            jobs.add_checkpoint(
                engine,
                job_id,
                "w",
                Checkpoint(
                    job_id=job_id,
                    step=step,
                    path=str(folder / "model.safetensors"),
                    state_path=str(folder / "state"),
                ),
            )
        )
    jobs.finish_training(engine, job_id, "w", utcnow() + timedelta(hours=1))
    return job_id, saved


def test_most_votes_wins_and_the_rest_is_deleted(engine: Engine, tmp_path: Path) -> None:
    job_id, (a, b, c) = _trained_job(engine, tmp_path, [10, 20, 30])
    with session_scope(engine) as session:
        for user in (1, 2):
            set_vote(session, a.id, user, on=True)
        set_vote(session, c.id, 3, on=True)
        set_vote(session, c.id, 3, on=True)  # one vote per member per checkpoint
    outcome = finalize(engine, job_id, keep=1, by_user=None)
    assert outcome.winner.step == 10 and outcome.reason == "most votes (2)"
    assert Path(a.path).exists()
    assert not Path(b.path).exists() and not Path(c.path).exists()
    assert not Path(c.state_path).exists()  # type: ignore[arg-type]
    with pytest.raises(NothingToFinalize):
        finalize(engine, job_id, keep=1, by_user=None)


def test_ties_go_to_the_later_step_and_no_votes_to_the_last(engine: Engine, tmp_path: Path) -> None:
    job_id, (a, b) = _trained_job(engine, tmp_path, [10, 20])
    with session_scope(engine) as session:
        set_vote(session, a.id, 1, on=True)
        set_vote(session, b.id, 2, on=True)
    outcome = finalize(engine, job_id, keep=2, by_user=7)
    assert outcome.winner.step == 20 and "tied" in outcome.reason
    assert Path(a.path).exists() and Path(b.path).exists(), "keep=2 keeps both"

    (tmp_path / "second").mkdir()
    other, _ = _trained_job(engine, tmp_path / "second", [5, 15])
    result = finalize(engine, other, keep=1, by_user=None)
    assert result.winner.step == 15 and "no votes" in result.reason


def test_removing_a_reaction_removes_the_vote_and_recount_replaces(
    engine: Engine, tmp_path: Path
) -> None:
    job_id, (a,) = _trained_job(engine, tmp_path, [10])
    with session_scope(engine) as session:
        set_vote(session, a.id, 1, on=True)
        set_vote(session, a.id, 2, on=True)
        set_vote(session, a.id, 1, on=False)
        assert tally(session, job_id) == {a.id: 1}
        replace_votes(session, a.id, [4, 5, 6])
        assert tally(session, job_id) == {a.id: 3}


def test_sweep_removes_files_left_by_a_crash(engine: Engine, tmp_path: Path) -> None:
    _, (a, b) = _trained_job(engine, tmp_path, [10, 20])
    with session_scope(engine) as session:
        row = session.get(Checkpoint, a.id)
        row.deleted = True  # marked, but the process died before deleting
    assert sweep_deleted(engine) == 1
    assert not Path(a.path).exists() and Path(b.path).exists()


def test_outbox_in_order_and_delivered_once(engine: Engine) -> None:
    make_jobs(engine, [1, 2])
    first = events.pending(engine)
    assert [e.kind for e in first] == ["queued", "queued"]
    assert first[0].id < first[1].id
    assert events.event_nonce(first[0]) != events.event_nonce(first[1])
    assert len(events.event_nonce(first[0])) <= 25
    events.mark_attempted(engine, first[0].id)
    events.mark_delivered(engine, first[0].id, 1234)
    assert [e.id for e in events.pending(engine)] == [first[1].id]


def test_generation_request_is_claimed_once_and_reported(engine: Engine, tmp_path: Path) -> None:
    job_id, (a,) = _trained_job(engine, tmp_path, [10])
    with session_scope(engine) as session:
        request = request_generation(
            session, guild_id=1, channel_id=2, user_id=3, checkpoint_id=a.id, prompt="a cat"
        )
    taken = claim_generation(engine, "w1")
    assert taken is not None and taken.id == request.id
    assert claim_generation(engine, "w2") is None
    complete_generation(engine, request.id, "/tmp/x.png")
    kinds = [e.kind for e in events.pending(engine) if e.job_id == job_id]
    assert kinds[-1] == "generated"


def test_a_pivotal_checkpoint_is_deleted_with_its_embedding(tmp_path: Path) -> None:
    from storage.finalize import checkpoint_paths, delete_checkpoint_files

    out = tmp_path / "checkpoints"
    stem = "ohwx-step00000020"
    (out / stem).mkdir(parents=True)
    (out / "diffusers" / stem).mkdir(parents=True)
    lora, embedding = out / stem / f"{stem}.safetensors", out / stem / "ohwx.safetensors"
    for path in (lora, embedding, out / "diffusers" / stem / "learned_embeds.safetensors"):
        path.write_bytes(b"weights")
    kept = out / "ohwx-step00000040"  # another step's folder stays
    kept.mkdir()
    checkpoint = Checkpoint(job_id=1, step=20, path=str(lora))
    assert set(checkpoint_paths(checkpoint)) == {lora, out / stem, out / "diffusers" / stem}
    delete_checkpoint_files(checkpoint)
    assert not embedding.exists() and not (out / "diffusers" / stem).exists() and kept.is_dir()
