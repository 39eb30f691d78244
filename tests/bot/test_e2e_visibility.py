"""A model trained in a channel a member cannot see is not theirs: `/models get`, `/generate`,
`/models list`, `/compare` treat it as absent, and it is announced in its own channel rather
than re-posted to the server-wide results channel."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.bot.e2e_jobs import command, train_to_vote

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


async def _train_in(emu, user, channel, zip_bytes: bytes) -> int:
    opts = {"trigger": "ohwx", "preset": "quick-test", "steps": 20}
    handle = await emu.run_slash_command(
        user, channel, "train lora", opts,
        attachments={"dataset": ("set.zip", zip_bytes, "application/zip")},
    )  # fmt: skip
    reply = await handle.wait_followup(1, 30)
    match = re.search(r"Job #(\d+)", reply.content)
    assert match, reply.content
    return int(match.group(1))


async def test_private_channel_models_stay_private(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    results = emu.create_channel(d.guild, "results")
    secret = emu.create_channel(d.guild, "secret")
    emu.set_permissions(secret, d.guild, deny=["view_channel"])
    for member in (d.alice, d.bot):
        emu.set_permissions(secret, member, allow=["view_channel"])
    await command(emu, d.carol, "atelier settings", {"results_channel": results})
    await asyncio.sleep(0.3)  # the bot has seen the overwrites (CHANNEL_UPDATE)

    job_id = await _train_in(emu, d.alice, secret, dataset_zip)
    train_to_vote(bot_engine, tmp_path, job_id)
    await command(emu, d.alice, "job finalize", {"job": job_id}, channel=secret)
    await emu.wait_for_message(secret, "New model", timeout=15)  # announced where it was made
    assert not [m for m in emu.timeline(results) if "New model" in m.content]

    absent = f"There is no job #{job_id}"
    for name, options in (
        ("models get", {"model": job_id}),
        ("generate", {"prompt": "ohwx", "model": job_id}),
    ):
        refused = await command(emu, d.bob, name, options)
        assert absent in refused.content, (name, refused.content)
    listing = await command(emu, d.bob, "models list")
    assert f"#{job_id}" not in listing.content

    own = await command(emu, d.alice, "models get", {"model": job_id}, channel=secret)
    assert absent not in own.content and (own.attachments or "http" in own.content)
    manager = await command(emu, d.carol, "models list")
    assert f"#{job_id}" in manager.content  # Manage Server sees every model
