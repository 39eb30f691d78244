"""Login, caches, messages, threads, reactions, permissions, limits, unknown routes."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import discord
import pytest

from discord_emulator import DiscordEmulator

pytestmark = pytest.mark.timeout(15)


def png(w: int = 4, h: int = 3) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 90)).save(buf, "PNG")
    return buf.getvalue()


def training(client: discord.Client, emu: DiscordEmulator) -> discord.TextChannel:
    assert emu.default is not None
    channel = client.get_channel(emu.default.channel.id)
    assert isinstance(channel, discord.TextChannel)
    return channel


async def test_login_ready_fills_caches(emu: DiscordEmulator, client: discord.Client) -> None:
    d = emu.default
    assert d is not None
    assert client.user is not None and client.user.id == emu.world.bot.id
    assert client.application_id == emu.world.application_id
    guild = client.get_guild(d.guild.id)
    assert guild is not None and guild.name == "Atelier Test"
    assert [c.name for c in guild.text_channels] == ["training"]
    assert {m.name for m in guild.members} >= {"alice", "bob", "carol", "Atelier"}
    carol = guild.get_member(d.carol.id)
    assert carol is not None and carol.guild_permissions.manage_guild
    alice = guild.get_member(d.alice.id)
    assert alice is not None and not alice.guild_permissions.manage_guild
    me = training(client, emu).permissions_for(guild.me)
    assert me.send_messages and me.attach_files
    assert emu.gateway.identifies == 1
    assert emu.unknown_calls == []


async def test_messages_history_edit_delete(emu: DiscordEmulator, client: discord.Client) -> None:
    channel = training(client, emu)
    sent = [await channel.send(f"m{i}") for i in range(5)]
    history = [m.content async for m in channel.history(limit=3)]
    assert history == ["m4", "m3", "m2"]
    after = [m.content async for m in channel.history(after=sent[1], oldest_first=True)]
    assert after == ["m2", "m3", "m4"]
    edited = await sent[0].edit(
        content="changed", attachments=[discord.File(io.BytesIO(b"x"), "a.txt")]
    )
    assert edited.content == "changed" and edited.attachments[0].filename == "a.txt"
    edited = await edited.edit(attachments=[])
    assert edited.attachments == []
    await sent[1].delete()
    with pytest.raises(discord.NotFound) as exc:
        await channel.fetch_message(sent[1].id)
    assert exc.value.code == 10008
    assert [m.content for m in emu.timeline(channel.id)] == ["changed", "m2", "m3", "m4"]
    # a member posts; the bot sees it through the gateway
    seen: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def on_message(message: discord.Message) -> None:
        await seen.put(message)

    client.event(on_message)
    assert emu.default is not None
    emu.post_message(emu.default.alice, channel.id, "hello bot")
    msg = await asyncio.wait_for(seen.get(), 3)
    while msg.author.id != emu.default.alice.id:
        msg = await asyncio.wait_for(seen.get(), 3)
    # no Message Content intent: Discord (and the emulator) blank other users' messages
    assert msg.content == "" and isinstance(msg.author, discord.Member)
    assert emu.timeline(channel.id)[-1].content == "hello bot"


async def test_thread_from_message(emu: DiscordEmulator, client: discord.Client) -> None:
    channel = training(client, emu)
    starter = await channel.send("Job #1 queued")
    thread = await channel.create_thread(name="job-1", message=starter, auto_archive_duration=1440)
    assert thread.id == starter.id and thread.parent_id == channel.id
    await thread.send("step 10/100")
    assert [t.name for t in emu.threads_of(channel.id)] == ["job-1"]
    assert [m.content for m in emu.timeline(thread.id)] == ["step 10/100"]
    found = await emu.wait_for_message(thread.id, r"step \d+/100")
    assert found.channel_id == thread.id
    with pytest.raises(discord.HTTPException) as exc:
        await channel.create_thread(name="again", message=starter)
    assert exc.value.code == 160004
    assert client.get_channel(thread.id) is not None


async def test_rate_limit_is_retried(emu: DiscordEmulator, client: discord.Client) -> None:
    channel = training(client, emu)
    fault = emu.rate_limit(r"POST /channels/\d+/messages$", count=2, retry_after=0.05)
    msg = await channel.send("after 429s")
    assert msg.content == "after 429s" and fault.remaining == 0
    posts = [c for c in emu.calls if c[0] == "POST" and c[1].endswith("/messages")]
    assert len(posts) == 3


async def test_reactions_and_resume_after_drop(
    emu: DiscordEmulator, client: discord.Client
) -> None:
    d = emu.default
    assert d is not None
    channel = training(client, emu)
    msg = await channel.send("vote")
    await msg.add_reaction("👍")
    await msg.add_reaction(discord.PartialEmoji(name="custom", id=123456789012345678))
    events: asyncio.Queue[discord.RawReactionActionEvent] = asyncio.Queue()

    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        await events.put(payload)

    client.event(on_raw_reaction_add)
    await emu.drop_gateway(hold=True)
    emu.add_reaction(d.alice, msg.id, "👍")  # happens while the bot is disconnected
    emu.release_gateway()
    got = await asyncio.wait_for(events.get(), 5)
    while got.user_id != d.alice.id:  # the bot's own reactions come first
        got = await asyncio.wait_for(events.get(), 5)
    assert got.user_id == d.alice.id and str(got.emoji) == "👍" and got.message_id == msg.id
    assert emu.gateway.resumes == 1 and emu.gateway.identifies == 1 and emu.gateway.replayed >= 1
    fetched = await channel.fetch_message(msg.id)
    counts = {str(r.emoji): r.count for r in fetched.reactions}
    assert counts == {"👍": 2, "<:custom:123456789012345678>": 1}
    users = [u.id async for u in fetched.reactions[0].users()]
    assert sorted(users) == sorted([emu.world.bot.id, d.alice.id])
    with pytest.raises(discord.Forbidden):  # needs Manage Messages
        await msg.remove_reaction("👍", discord.Object(d.alice.id))
    await msg.remove_reaction("👍", client.user)  # type: ignore[arg-type]
    emu.remove_reaction(d.alice, msg.id, "👍")
    assert "👍" not in emu.reactions(msg.id)


async def test_op7_reconnect_resumes(emu: DiscordEmulator, client: discord.Client) -> None:
    d = emu.default
    assert d is not None
    seen: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def on_message(message: discord.Message) -> None:
        await seen.put(message)

    client.event(on_message)
    await emu.send_reconnect()
    await emu.wait_until(lambda: emu.gateway.resumes == 1, 5)
    emu.post_message(d.bob, d.channel, "still there?")
    got = await asyncio.wait_for(seen.get(), 5)
    assert got.author.id == d.bob.id
    await emu.invalidate_session(resumable=True)
    await emu.wait_until(lambda: emu.gateway.resumes == 2, 5)
    assert emu.gateway.identifies == 1


async def test_missing_permission_is_403(emu: DiscordEmulator, client: discord.Client) -> None:
    channel = training(client, emu)
    emu.set_permissions(channel.id, emu.world.bot, deny=["attach_files"])
    await asyncio.sleep(0.05)  # CHANNEL_UPDATE reaches the cache
    assert not channel.permissions_for(channel.guild.me).attach_files
    with pytest.raises(discord.Forbidden) as exc:
        await channel.send("grid", file=discord.File(io.BytesIO(png()), "grid.png"))
    assert exc.value.code == 50013 and exc.value.status == 403
    await channel.send("text still works")
    emu.set_permissions(channel.id, emu.world.bot, deny=["send_messages_in_threads"])
    thread = await channel.create_thread(name="t", message=await channel.send("s"))
    with pytest.raises(discord.Forbidden):
        await thread.send("no")


async def test_limits(emu: DiscordEmulator, client: discord.Client) -> None:
    channel = training(client, emu)
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send("x" * 2001)
    assert exc.value.status == 400 and exc.value.code == 50035
    assert "content" in exc.value.text or exc.value.code == 50035
    big = b"\0" * (10 * 1024 * 1024 + 1)
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send(file=discord.File(io.BytesIO(big), "big.bin"))
    assert exc.value.status == 413 and exc.value.code == 40005
    # 11 files: discord.py refuses client-side, so send the raw request
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", '{"content": "many"}', content_type="application/json")
    for i in range(11):
        form.add_field(f"files[{i}]", b"x", filename=f"f{i}.txt")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emu.api_base}/channels/{channel.id}/messages",
            data=form,
            headers={"Authorization": f"Bot {emu.token}"},
        ) as resp,
    ):
        assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
        assert body["code"] == 50035 and "errors" in body


async def test_unknown_route_recorded(emu: DiscordEmulator, client: discord.Client) -> None:
    with pytest.raises(discord.NotFound) as exc:
        await client.http.request(discord.http.Route("GET", "/nowhere/{x}", x=1))
    assert exc.value.code == 0
    assert emu.unknown_calls == [("GET", "/nowhere/1")]
    with pytest.raises(discord.NotFound) as exc:
        await client.http.get_message(1, 2)
    assert exc.value.code == 10003


async def test_transcript(emu: DiscordEmulator, client: discord.Client, tmp_path) -> None:
    d = emu.default
    assert d is not None
    channel = training(client, emu)
    starter = await channel.send(f"Job **42** by <@{d.alice.id}> in <#{channel.id}>")
    thread = await channel.create_thread(name="job-42", message=starter)
    grid = await thread.send(
        "checkpoint 1",
        file=discord.File(io.BytesIO(png()), "grid.png"),
        embed=discord.Embed(title="Step 500", description="loss 0.1"),
    )
    emu.add_reaction(d.alice, grid.id, "1️⃣")
    emu.add_reaction(d.bob, grid.id, "1️⃣")
    assert emu.attachment_bytes(grid.id) == png()
    path = emu.render_transcript(channel.id, tmp_path / "t.html")
    html = path.read_text()
    assert "data:image/png;base64," in html
    assert "1️⃣ 2" in html and "Step 500" in html and "job-42" in html
    assert "@alice" in html.lower() and "#training" in html, "mentions shown by name"
    assert html.index("Job <b>42</b>") < html.index("checkpoint 1"), "markdown rendered, in order"


async def test_server_errors_and_slow_responses(
    emu: DiscordEmulator, client: discord.Client
) -> None:
    channel = training(client, emu)
    emu.server_error(r"POST /channels/\d+/messages$", count=1, status=502)
    emu.slow(r"GET /channels/\d+$", delay=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    msg = await channel.send("after a 502")  # discord.py sleeps 1 s and retries
    assert msg.content == "after a 502" and loop.time() - start >= 1.0
    start = loop.time()
    await client.fetch_channel(channel.id)
    assert loop.time() - start >= 0.2


async def _raw_post(
    emu: DiscordEmulator, channel_id: int, body: dict[str, object]
) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emu.api_base}/channels/{channel_id}/messages",
            json=body,
            headers={"Authorization": f"Bot {emu.token}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_enforced_nonce_returns_the_existing_message(
    emu: DiscordEmulator, client: discord.Client
) -> None:
    channel = training(client, emu)
    creates = len([e for e, _ in emu.events if e == "MESSAGE_CREATE"])
    first = await channel.send("once", nonce="job-1-report")
    again = await channel.send("once (retry)", nonce="job-1-report")
    assert again.id == first.id and again.content == "once"
    status, body = await _raw_post(
        emu, channel.id, {"content": "raw", "nonce": "job-1-report", "enforce_nonce": True}
    )
    assert status == 200 and body["id"] == str(first.id) and body["nonce"] == "job-1-report"
    assert [m.content for m in emu.timeline(channel.id)][-1:] == ["once"]
    assert len([e for e, _ in emu.events if e == "MESSAGE_CREATE"]) == creates + 1
    # not enforced, another nonce, or the nonce has expired: a new message each time
    _, plain = await _raw_post(emu, channel.id, {"content": "plain", "nonce": "job-1-report"})
    other = await channel.send("other", nonce="job-1-announce")
    emu.advance_time(301)
    late = await channel.send("late", nonce="job-1-report")
    assert len({first.id, int(plain["id"]), other.id, late.id}) == 4
    assert len([e for e, _ in emu.events if e == "MESSAGE_CREATE"]) == creates + 4
    status, body = await _raw_post(
        emu, channel.id, {"content": "x", "nonce": "n" * 26, "enforce_nonce": True}
    )
    assert status == 400 and body["code"] == 50035
