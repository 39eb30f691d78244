"""Votes under faults: a count Discord did not give us decides nothing and deletes nothing;
only members' reactions count; a removed reaction re-reads only its checkpoint's messages; the
/compare tally is shown on the grid."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from bot.render import VOTE_EMOJI
from storage import comparisons
from storage.db import session_scope
from storage.models import Checkpoint, Vote
from tests.bot.e2e_jobs import command, job_row, png, texts, train, train_to_vote, undelivered

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def votes(engine) -> list[tuple[int, int]]:
    with session_scope(engine) as session:
        return sorted((v.checkpoint_id, v.user_id) for v in session.exec(select(Vote)))


def grid_ids(engine, job_id: int) -> list[int]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
        ).all()
        return [int(c.grid_message_id or 0) for c in rows]


async def voted_job(emu, engine, zip_bytes, tmp: Path, steps=(10, 20)) -> tuple[int, list]:
    job_id, _ = await train(emu, emu.default.alice, zip_bytes, name="voted")
    ckpts = train_to_vote(engine, tmp, job_id, steps=steps)
    await emu.wait_until(lambda: not undelivered(engine, job_id), 10)
    return job_id, ckpts


async def test_unreadable_count_at_close_keeps_votes_and_files(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, ckpts = await voted_job(emu, bot_engine, dataset_zip, tmp_path)
    first_grid = grid_ids(bot_engine, job_id)[0]
    emu.add_reaction(d.bob, first_grid, VOTE_EMOJI)
    await emu.wait_until(lambda: votes(bot_engine) == [(ckpts[0].id, d.bob.id)], 5)
    fault = emu.server_error(rf"GET /channels/\d+/messages/{first_grid}$", count=50, status=503)
    reply = await command(emu, d.alice, "job finalize", {"job": job_id})
    assert "nothing was closed or deleted" in reply.content, reply.content
    assert job_row(bot_engine, job_id).state == "awaiting_vote"
    assert all(Path(c.path).is_file() for c in ckpts)
    assert votes(bot_engine) == [(ckpts[0].id, d.bob.id)]
    fault.remaining = 0  # Discord is back: the member's vote decides
    reply = await command(emu, d.alice, "job finalize", {"job": job_id})
    assert "step 10 kept" in reply.content, reply.content
    assert Path(ckpts[0].path).is_file()


async def test_only_members_reactions_count(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    other_bot = emu.create_user("otherbot", bot=True)
    emu.add_member(d.guild, other_bot)
    job_id, ckpts = await voted_job(emu, bot_engine, dataset_zip, tmp_path)
    first, second = grid_ids(bot_engine, job_id)
    emu.add_reaction(other_bot, first, VOTE_EMOJI)
    emu.add_reaction(d.bob, second, VOTE_EMOJI)
    await emu.wait_until(lambda: votes(bot_engine) == [(ckpts[1].id, d.bob.id)], 5)
    await atelier.voting.recount(job_row(bot_engine, job_id))  # as after a restart
    assert votes(bot_engine) == [(ckpts[1].id, d.bob.id)]


async def test_removed_reaction_reads_only_its_checkpoint(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, ckpts = await voted_job(emu, bot_engine, dataset_zip, tmp_path, steps=(10, 20, 30))
    grids = grid_ids(bot_engine, job_id)
    emu.add_reaction(d.bob, grids[1], VOTE_EMOJI)
    await emu.wait_until(lambda: votes(bot_engine) == [(ckpts[1].id, d.bob.id)], 5)
    start = len(emu.calls)
    emu.remove_reaction(d.bob, grids[1], VOTE_EMOJI)
    await emu.wait_until(lambda: votes(bot_engine) == [], 5)
    fetched = {p for m, p in emu.calls[start:] if m == "GET" and "/messages/" in p}
    assert not any(p.endswith(f"/{grids[0]}") or p.endswith(f"/{grids[2]}") for p in fetched)


async def test_compare_tally_is_shown(emu, atelier, bot_engine, dataset_zip, tmp_path) -> None:
    d = emu.default
    other_bot = emu.create_user("otherbot", bot=True)
    emu.add_member(d.guild, other_bot)
    jobs = []
    for name in ("left", "right"):
        job_id, _ = await train(emu, d.alice, dataset_zip, name=name)
        folder = tmp_path / name
        folder.mkdir()
        train_to_vote(bot_engine, folder, job_id)
        await command(emu, d.alice, "job finalize", {"job": job_id})
        jobs.append(job_id)
    reply = await command(emu, d.bob, "compare", {"a": jobs[0], "b": jobs[1]})
    assert "queued" in reply.content, reply.content
    request = comparisons.claim_comparison(bot_engine, "w")  # the worker's side
    comparisons.complete_comparison(bot_engine, request.id, str(png(tmp_path / "cmp.png", 9)))
    grid = await emu.wait_for_message(d.channel, f"Comparison #{request.id}", timeout=10)
    await emu.wait_until(lambda: len(emu.reactions(grid)) == 2, 10)
    emu.add_reaction(other_bot, grid, "🅰️")
    emu.add_reaction(d.carol, grid, "🅱️")
    await emu.wait_until(lambda: "🅰️ 0 · 🅱️ 1 (🅱️ leads)" in emu.message(grid.id).content, 5)
    assert len(texts(emu, d.channel, f"Comparison #{request.id}")) == 1
