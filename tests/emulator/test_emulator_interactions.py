"""Application commands through discord.py's CommandTree against the emulator."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from discord_emulator import MIB, DiscordEmulator

pytestmark = pytest.mark.timeout(15)


def build_tree(client: discord.Client, log: dict[str, Any]) -> app_commands.CommandTree:
    tree = app_commands.CommandTree(client)
    train = app_commands.Group(name="train", description="Train a model")

    @train.command(name="lora", description="Train a LoRA from a zip")
    async def lora(
        interaction: discord.Interaction,
        dataset: discord.Attachment,
        steps: int = 100,
        preset: str = "character",
    ) -> None:
        await interaction.response.defer()
        data = await dataset.read()
        log["bytes"] = data
        log["args"] = (steps, preset, interaction.filesize_limit)
        await interaction.followup.send(
            f"queued {dataset.filename} ({len(data)} bytes, {steps} steps)",
            file=discord.File(io.BytesIO(data), "echo.zip"),
        )

    @lora.autocomplete("preset")
    async def preset_ac(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["character", "style", "fast test"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    tree.add_command(train)

    @tree.command(name="slow", description="Answers too late")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as exc:
            log["late"] = exc

    @tree.command(name="vote", description="Buttons")
    async def vote(interaction: discord.Interaction) -> None:
        view = discord.ui.View()
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            label="pick", custom_id="pick:1"
        )

        async def picked(click: discord.Interaction) -> None:
            await click.response.edit_message(content=f"picked by {click.user.name}", view=None)

        button.callback = picked  # type: ignore[method-assign]
        view.add_item(button)
        await interaction.response.send_message("choose", view=view)

    return tree


async def test_slash_command_with_attachment(emu: DiscordEmulator, client: discord.Client) -> None:
    d = emu.default
    assert d is not None
    log: dict[str, Any] = {}
    tree = build_tree(client, log)
    guild = discord.Object(d.guild.id)
    tree.copy_global_to(guild=guild)
    synced = await tree.sync(guild=guild)
    assert {c.name for c in synced} == {"train", "slow", "vote"}
    assert emu.command_syncs == {d.guild.id: 1}
    payload = b"PK\x03\x04" + bytes(range(256)) * 40
    handle = await emu.run_slash_command(
        d.alice,
        d.channel,
        "train lora",
        options={"steps": 250},
        attachments={"dataset": ("data.zip", payload)},
    )
    first = await handle.wait_response()
    assert first["type"] == 5
    reply = await handle.wait_followup()
    assert log["bytes"] == payload
    assert log["args"] == (250, "character", 10 * MIB)
    assert reply.content.startswith("queued data.zip") and reply.id == handle.original_id
    assert reply.attachments[0].data == payload
    assert emu.timeline(d.channel.id)[-1].id == reply.id
    # the bot reads the attachment back from the CDN too
    async with aiohttp.ClientSession() as http, http.get(reply.attachments[0].url) as resp:
        assert await resp.read() == payload
    # autocomplete
    ac = await emu.run_autocomplete(d.bob, d.channel, "train lora", focused="preset", value="s")
    assert [c["value"] for c in await ac.wait_choices()] == ["style"]
    # re-syncing the same commands creates nothing new
    await tree.sync(guild=guild)
    assert emu.command_syncs[d.guild.id] == 2
    assert len(emu.command_creates[d.guild.id]) == 3
    assert emu.unknown_calls == []


async def test_late_response_and_token_expiry(emu: DiscordEmulator, client: discord.Client) -> None:
    d = emu.default
    assert d is not None
    log: dict[str, Any] = {}
    tree = build_tree(client, log)
    await tree.sync()
    assert emu.command_syncs == {None: 1}
    emu.interaction_deadline = 0.1
    handle = await emu.run_slash_command(d.alice, d.channel, "slow")
    await emu.wait_until(lambda: "late" in log, 5)
    assert isinstance(log["late"], discord.NotFound) and log["late"].code == 10062
    assert handle.response_type is None and handle.rejected[0].code == 10062
    with pytest.raises(Exception, match="10062"):
        await handle.wait_response(1)
    # a component click, then the token expires after 15 minutes
    emu.interaction_deadline = 3.0
    h = await emu.run_slash_command(d.alice, d.channel, "vote")
    msg = await h.wait_original()
    assert msg.components and msg.content == "choose"
    click = await emu.click_component(d.bob, msg.id, "pick:1")
    await click.wait_response()
    assert click.response_type == 7 and msg.content == "picked by bob" and msg.components == []
    emu.advance_time(15 * 60 + 1)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emu.api_base}/webhooks/{emu.world.application_id}/{h.token}?wait=true",
            json={"content": "too late"},
        ) as resp,
    ):
        assert resp.status == 401 and (await resp.json())["code"] == 50027


async def test_command_creation_limit(emu: DiscordEmulator, client: discord.Client) -> None:
    d = emu.default
    assert d is not None
    route = f"{emu.api_base}/applications/{emu.world.application_id}/guilds/{d.guild.id}/commands"
    headers = {"Authorization": f"Bot {emu.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for batch in range(8):  # 8 × 25 new names = 200 creations
            cmds = [{"name": f"c{batch}-{i}", "description": "x"} for i in range(25)]
            async with http.put(route, json=cmds) as resp:
                assert resp.status == 200
        async with http.put(route, json=[{"name": "one-more", "description": "x"}]) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 30034
        emu.advance_time(86401)
        async with http.put(route, json=[{"name": "one-more", "description": "x"}]) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"


async def test_followups_edits_and_upload_limit(
    emu: DiscordEmulator, client: discord.Client
) -> None:
    d = emu.default
    assert d is not None
    tree = app_commands.CommandTree(client)
    log: dict[str, Any] = {}

    @tree.command(name="report", description="Several replies")
    async def report(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("working", ephemeral=False)
        original = await interaction.original_response()
        log["original"] = original.content
        await interaction.edit_original_response(content="done")
        log["limit"] = interaction.filesize_limit
        try:
            await interaction.followup.send(
                file=discord.File(io.BytesIO(b"\0" * (interaction.filesize_limit + 1)), "x.bin")
            )
        except discord.HTTPException as exc:
            log["too_big"] = exc
        extra = await interaction.followup.send("extra", ephemeral=True, wait=True)
        await extra.delete()
        log["done"] = True

    await tree.sync()
    emu.update_guild(d.guild, attachment_size_limit=2 * MIB)
    handle = await emu.run_slash_command(d.alice, d.channel, "report")
    await emu.wait_until(lambda: "done" in log, 5)
    assert log["original"] == "working" and log["limit"] == 2 * MIB
    assert log["too_big"].status == 413 and log["too_big"].code == 40005
    assert handle.original is not None and handle.original.content == "done"
    assert [m.content for m in emu.timeline(d.channel.id)] == ["done"]  # ephemeral hidden
