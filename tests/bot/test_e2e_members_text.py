"""Members' text never pings a role or @everyone; only Manage Server edits Atelier's settings
and every role setting can be cleared; logs never hold an interaction token."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from bot import queries
from storage import jobs
from storage.logs import configure_logging
from tests.bot.e2e_jobs import command, job_row, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
ROOT = Path(__file__).resolve().parents[2]


async def test_echoed_text_pings_only_the_member_addressed(
    emu, atelier, bot_engine, dataset_zip
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip, name="pings")
    jobs.fail(bot_engine, job_id, None, f"caption said <@&{d.manager.id}> @everyone <@{d.bob.id}>")
    thread = job_row(bot_engine, job_id).thread_id
    said = await emu.wait_for_message(thread, "caption said", timeout=10)
    assert said.mention_roles == [] and said.mention_everyone is False
    assert [u["id"] for u in said.mention_users] == [str(d.alice.id)]  # the owner, not bob


async def test_settings_need_manage_server_and_roles_can_be_cleared(
    emu, atelier, bot_engine
) -> None:
    d = emu.default
    helpers = emu.create_role(d.guild, "job-helpers")  # no permissions of its own
    trainers = emu.create_role(d.guild, "trainers")
    emu.set_member_roles(d.guild, d.bob, [helpers])
    set_up = await command(
        emu, d.carol, "atelier settings", {"manager_role": helpers.id, "trainer_role": trainers.id}
    )
    assert "Manager role" in set_up.content, set_up.content
    refused = await command(emu, d.bob, "atelier settings", {"manager_role": d.guild.id})
    assert "Manage Server" in refused.content  # the manager role cannot re-point itself
    row = queries.guild_settings(bot_engine, d.guild.id)
    assert row.manager_role_id == helpers.id
    await command(
        emu,
        d.carol,
        "atelier settings",
        {"clear_manager_role": True, "remove_trainer_role": trainers.id},
    )
    row = queries.guild_settings(bot_engine, d.guild.id)
    assert row.manager_role_id is None and row.trainer_role_ids == []


async def test_debug_logs_hold_no_interaction_token(emu, atelier, bot_engine, dataset_zip) -> None:
    buffer = io.StringIO()
    level = logging.getLogger().level
    handler = configure_logging("DEBUG", stream=buffer)
    try:
        d = emu.default
        handle = await emu.run_slash_command(d.alice, d.channel, "jobs", {})
        await handle.wait_followup(1, 15)
        logging.getLogger("discord.webhook.async_").debug("POST /webhooks/1/%s", handle.token)
        logging.getLogger("atelier.test").debug("payload {'token': '%s'}", handle.token)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    text = buffer.getvalue()
    assert "atelier.test" in text  # DEBUG was on
    assert handle.token not in text and "<token>" in text


def test_every_entry_point_uses_the_one_logging_set_up() -> None:
    sources = [p for d in ("atelier", "bot", "trainer") for p in (ROOT / d).rglob("*.py")]
    assert not [p for p in sources if "basicConfig" in p.read_text()]
    for entry in ("bot/run.py", "trainer/worker.py", "atelier/serve.py", "trainer/train_cli.py"):
        assert "storage.logs import configure_logging" in (ROOT / entry).read_text()
