"""End to end, the commands besides the happy path: settings, /generate, /job retry, /jobs,
the allowed-guilds check and the vote deadline. The worker's side is written straight through
`storage` (no training), so each case takes seconds."""

from __future__ import annotations

import re

import pytest
from sqlmodel import select

from storage import jobs
from storage.db import session_scope
from storage.generations import complete_generation, fail_generation
from storage.models import Generation, GuildSettings
from tests.bot.conftest import start_bot, stop_bot
from tests.bot.e2e_jobs import (
    WORKER,
    command,
    job_row,
    png,
    texts,
    train,
    train_to_vote,
    undelivered,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def guild_row(engine, guild_id: int) -> GuildSettings | None:
    with session_scope(engine) as session:
        return session.get(GuildSettings, guild_id)


async def test_settings_by_managers_only_and_they_take_effect(
    emu, atelier, bot_engine, dataset_zip
) -> None:
    d = emu.default
    results = emu.create_channel(d.guild, "results")
    trainers = emu.create_role(d.guild, "Trainers")
    refused = await command(emu, d.alice, "atelier settings", {"keep": 2})
    assert "Manage Server" in refused.content and refused.ephemeral
    assert guild_row(bot_engine, d.guild.id) is None
    reply = await command(
        emu,
        d.carol,
        "atelier settings",
        {
            "results_channel": results,
            "vote_window_hours": 2.5,
            "keep": 2,
            "jobs_per_member": 2,
            "trainer_role": trainers,
        },
    )
    assert f"<#{results.id}>" in reply.content and "2.5 h" in reply.content
    assert f"<@&{trainers.id}>" in reply.content and reply.ephemeral
    row = guild_row(bot_engine, d.guild.id)
    assert (
        row.results_channel_id,
        row.vote_window_hours,
        row.keep_checkpoints,
        row.jobs_per_member,
        row.trainer_role_ids,
    ) == (results.id, 2.5, 2, 2, [trainers.id])

    job_id, reply = await train(emu, d.alice, dataset_zip)
    assert job_id == 0 and "trainer roles" in reply.content
    compare = await command(emu, d.bob, "compare", {"a": 1, "b": 2})
    assert "trainer roles" in compare.content, "rendering costs worker time, as training does"
    emu.set_member_roles(d.guild, d.alice, [trainers])
    first, _ = await train(emu, d.alice, dataset_zip)
    second, _ = await train(emu, d.alice, dataset_zip)
    third, reply = await train(emu, d.alice, dataset_zip)
    assert first and second and third == 0
    assert "already have 2 job(s)" in reply.content

    cleared = await command(emu, d.carol, "atelier settings", {"clear_trainer_roles": True})
    assert "Trainer roles: everyone" in cleared.content
    assert guild_row(bot_engine, d.guild.id).trainer_role_ids == []


async def test_generate_posts_the_image_or_says_why_not(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip)
    train_to_vote(bot_engine, tmp_path, job_id)
    await command(emu, d.alice, "job finalize", {"job": job_id})
    reply = await command(emu, d.bob, "generate", {"prompt": "ohwx on a beach", "model": job_id})
    queued = re.search(r"Queued image #(\d+)", reply.content)
    assert queued and reply.ephemeral, reply.content
    with session_scope(bot_engine) as session:
        request = session.exec(select(Generation)).one()
        assert (request.user_id, request.prompt, request.state) == (
            d.bob.id,
            "ohwx on a beach",
            "queued",
        )
    image = png(tmp_path / "out.png", 99)
    complete_generation(bot_engine, request.id, str(image))
    posted = await emu.wait_for_message(d.channel, "ohwx on a beach", timeout=10)
    assert f"<@{d.bob.id}>" in posted.content
    assert emu.attachment_bytes(posted.id) == image.read_bytes()

    await command(emu, d.bob, "generate", {"prompt": "again", "model": job_id})
    with session_scope(bot_engine) as session:
        second = session.exec(select(Generation).where(Generation.prompt == "again")).one()
    fail_generation(bot_engine, second.id, "the worker ran out of GPU memory")
    said = await emu.wait_for_message(d.channel, "could not make your image", timeout=10)
    assert f"<@{d.bob.id}>" in said.content and "ran out of GPU memory" in said.content
    refused = await command(emu, d.bob, "generate", {"prompt": "x", "model": 999})
    assert "no job #999" in refused.content


async def test_generate_seed_is_shown_and_shared_by_compared_weights(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip)
    train_to_vote(bot_engine, tmp_path, job_id)
    await command(emu, d.alice, "job finalize", {"job": job_id})
    given = await command(
        emu, d.bob, "generate", {"prompt": "ohwx, red", "model": job_id, "seed": 1234}
    )
    assert "seed 1234" in given.content, given.content
    drawn = await command(emu, d.bob, "generate", {"prompt": "ohwx, blue", "model": job_id})
    shown = re.search(r"seed (\d+)", drawn.content)
    assert shown, drawn.content
    compared = await command(
        emu,
        d.bob,
        "generate",
        {"prompt": "ohwx, green", "model": job_id, "weights": "0.5, 1, 1.5"},
    )
    with session_scope(bot_engine) as session:
        rows = session.exec(select(Generation).order_by(Generation.id)).all()
    by_prompt = {}
    for row in rows:
        by_prompt.setdefault(row.prompt, []).append((row.weight, row.seed))
    assert by_prompt["ohwx, red"] == [(1.0, 1234)]
    assert by_prompt["ohwx, blue"] == [(1.0, int(shown.group(1)))]
    green = by_prompt["ohwx, green"]
    assert [w for w, _ in green] == [0.5, 1.0, 1.5] and len({s for _, s in green}) == 1
    assert f"seed {green[0][1]}" in compared.content and "0.5, 1, 1.5" in compared.content
    first = next(r for r in rows if r.prompt == "ohwx, green")
    complete_generation(bot_engine, first.id, str(png(tmp_path / "g.png", 5)))
    posted = await emu.wait_for_message(d.channel, "ohwx, green", timeout=10)
    assert f"seed {green[0][1]}" in posted.content and "weight 0.5" in posted.content
    bad = await command(
        emu, d.bob, "generate", {"prompt": "x", "model": job_id, "weights": "0.5, lots"}
    )
    assert "weights" in bad.content and "lots" in bad.content, bad.content


async def test_jobs_lists_queue_and_retry_requeues_failed_job(
    emu, atelier, bot_engine, dataset_zip
) -> None:
    d = emu.default
    first, _ = await train(emu, d.alice, dataset_zip, name="first")
    second, _ = await train(emu, d.bob, dataset_zip, name="second")
    listing = await command(emu, d.carol, "jobs")
    lines = listing.content.splitlines()
    assert lines[0].startswith("#1") and f"Job #{first}" in lines[0]
    assert f"<@{d.alice.id}>" in lines[0]
    assert lines[1].startswith("#2") and f"Job #{second}" in lines[1]
    assert f"<@{d.bob.id}>" in lines[1]

    jobs.claim(bot_engine, WORKER)
    jobs.start_training(bot_engine, first, WORKER, total_steps=20)
    jobs.fail(bot_engine, first, WORKER, "the GPU ran out of memory")
    thread = job_row(bot_engine, first).thread_id
    await emu.wait_for_message(thread, "training stopped", timeout=10)
    refused = await command(emu, d.bob, "job retry", {"job": first})
    assert "Only the job's owner" in refused.content
    assert job_row(bot_engine, first).state == "failed"
    reply = await command(emu, d.alice, "job retry", {"job": first})
    assert "back in the queue" in reply.content
    said = await emu.wait_for_message(thread, "queued the job again", timeout=10)
    assert f"<@{d.alice.id}>" in said.content
    assert job_row(bot_engine, first).state == "queued"
    again = await command(emu, d.alice, "job retry", {"job": first})
    assert "Only failed jobs" in again.content


async def test_guild_not_allowed_is_refused(emu, settings, bot_engine) -> None:
    d = emu.default
    other = settings.discord.model_copy(update={"allowed_guilds": [d.guild.id + 1]})
    bot = await start_bot(emu, settings.model_copy(update={"discord": other}), bot_engine)
    try:
        handle = await emu.run_slash_command(d.alice, d.channel, "jobs", {})
        response = await handle.wait_response(3)
        assert response["type"] == 4  # answered at once (not deferred), to the member only
        assert "not enabled in this server" in response["data"]["content"]
        assert response["data"]["flags"] & 64
        assert not [m for m in emu.timeline(d.channel) if m.author.id == emu.world.bot.id]
    finally:
        await stop_bot(bot)


async def test_vote_closes_at_the_deadline(emu, atelier, bot_engine, dataset_zip, tmp_path) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip, name="deadline")
    ckpts = train_to_vote(bot_engine, tmp_path, job_id, deadline_in=1.5)
    thread = job_row(bot_engine, job_id).thread_id
    await emu.wait_for_message(thread, "Training done", timeout=10)
    assert job_row(bot_engine, job_id).state == "awaiting_vote"
    final = await emu.wait_for_message(thread, "The team chose", timeout=15)
    assert "no votes were cast, so the last checkpoint was kept" in final.content
    assert f"step **{ckpts[-1].step}**" in final.content and "closed by" not in final.content
    assert job_row(bot_engine, job_id).state == "finalized"
    assert job_row(bot_engine, job_id).winner_checkpoint_id == ckpts[-1].id
    await emu.wait_until(lambda: not undelivered(bot_engine, job_id), 10)
    assert len(texts(emu, d.channel, "New model")) == 1
