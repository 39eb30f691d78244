"""Posting to Discord from the outbox: where a job's messages go, idempotent sends, files that
fit or links that expire, and what to tell the owner when Discord refuses."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from storage.model_files import model_files

if TYPE_CHECKING:
    from bot.client import AtelierBot

log = logging.getLogger(__name__)

REACTION_SPACING = 0.3
"""Seconds between the bot's own reactions (Discord allows about one per 250 ms per channel)."""

TOO_LARGE = 40005


async def resolve_channel(bot: AtelierBot, channel_id: int) -> discord.abc.Messageable:
    channel = bot.get_channel(channel_id)
    if channel is None:
        channel = await bot.fetch_channel(channel_id)
    return channel  # type: ignore[return-value]


HISTORY_SCAN = 100
"""How many recent messages of a channel to look through for an earlier copy of a post."""


async def send(
    channel: discord.abc.Messageable,
    nonce: str,
    content: str | None = None,
    *,
    recheck: bool = False,
    **kwargs: Any,
) -> discord.Message:
    """Post once. The content ends with a small marker line naming `nonce`. With `recheck`
    (an earlier try may have posted before a crash) the channel's recent history is searched
    for the bot's own message with that marker first: Discord's enforced nonce returns the
    earlier message only for a few minutes, so a bot that comes back later needs the marker."""
    if recheck:
        found = await find_posted(channel, nonce)
        if found is not None:
            return found
    return await channel.send(with_marker(content, nonce), nonce=nonce, **kwargs)


def marker(nonce: str) -> str:
    return f"-# {nonce}"


def with_marker(content: str | None, nonce: str) -> str:
    """`content` (trimmed to leave room) and the marker line (Discord's small subtext)."""
    line = marker(nonce)
    if not content:
        return line
    return f"{render.truncate(content, render.CONTENT_LIMIT - len(line) - 1)}\n{line}"


def carries_marker(message: discord.Message, nonce: str) -> bool:
    line = marker(nonce)
    return message.content == line or message.content.endswith(f"\n{line}")


async def find_posted(channel: Any, nonce: str) -> discord.Message | None:
    """The bot's own message with `nonce`'s marker among the channel's recent messages."""
    guild = getattr(channel, "guild", None)
    me = guild.me.id if guild is not None and guild.me is not None else None
    try:
        async for message in channel.history(limit=HISTORY_SCAN):
            if (me is None or message.author.id == me) and carries_marker(message, nonce):
                return message
    except discord.Forbidden:  # no Read Message History: post; the nonce still helps
        log.warning("cannot read the history of channel %s to avoid a repost", channel.id)
    return None


def file_of(path: str | Path, name: str | None = None) -> discord.File:
    """Read a (small) image into memory so the upload does not hold a file handle open."""
    data = Path(path).read_bytes()
    return discord.File(io.BytesIO(data), filename=name or Path(path).name)


async def read_files(paths: list[str | None]) -> list[discord.File]:
    existing = [p for p in paths if p and Path(p).is_file()]
    return await asyncio.to_thread(lambda: [file_of(p) for p in existing])  # type: ignore[arg-type]


async def add_reactions(message: discord.Message, emojis: list[str]) -> None:
    """The bot's own reactions, spaced to stay under the reaction rate limit."""
    have = {str(r.emoji) for r in message.reactions if r.me}
    for emoji in emojis:
        if emoji in have:
            continue
        await message.add_reaction(emoji)
        await asyncio.sleep(REACTION_SPACING)


def upload_limit(bot: AtelierBot, guild: discord.Guild | None) -> int:
    """The smaller of the guild's tier limit and the last limit an interaction reported."""
    tier = guild.filesize_limit if guild else discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
    seen = bot.upload_limits.get(guild.id) if guild else None
    return min(tier, seen) if seen else tier


REQUEST_LIMIT = 25 * 1024 * 1024
"""Discord caps one request, all its attachments together, at 25 MiB."""


@dataclass
class ModelDelivery:
    """A checkpoint's files as attachments, or as signed links when they do not fit."""

    names: list[str]
    files: list[discord.File] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    expires: Any = None


async def model_delivery(
    bot: AtelierBot, path: Path, limit: int, *, links: bool = False
) -> ModelDelivery:
    """The model file (with a pivotal LoRA, also the trigger's embedding beside it) attached
    when every file fits `limit` and all fit one request, else signed, expiring links."""
    paths = await asyncio.to_thread(model_files, path)
    sizes = [(await asyncio.to_thread(p.stat)).st_size for p in paths]
    names = [p.name for p in paths]
    if not links and max(sizes) <= limit and sum(sizes) <= REQUEST_LIMIT:
        files = await asyncio.to_thread(lambda: [file_of(p) for p in paths])
        return ModelDelivery(names, files=files)
    signed = [bot.signer.link(p) for p in paths]
    return ModelDelivery(names, links=[url for url, _ in signed], expires=signed[0][1])


def missing_permission(channel: Any, with_files: bool) -> str:
    """Name the permission Discord most likely refused, in its UI wording."""
    guild = getattr(channel, "guild", None)
    if guild is None or not hasattr(channel, "permissions_for"):
        return "Send Messages"
    perms = channel.permissions_for(guild.me)
    in_thread = isinstance(channel, discord.Thread)
    checks = [
        (perms.view_channel, "View Channel"),
        (
            perms.send_messages_in_threads if in_thread else perms.send_messages,
            "Send Messages in Threads" if in_thread else "Send Messages",
        ),
        (perms.attach_files or not with_files, "Attach Files"),
        (perms.embed_links, "Embed Links"),
        (perms.add_reactions, "Add Reactions"),
        (perms.create_public_threads, "Create Public Threads"),
        (perms.read_message_history, "Read Message History"),
    ]
    return next((name for ok, name in checks if not ok), "Send Messages")


async def explain_refusal(
    bot: AtelierBot,
    channel: Any,
    fallback_id: int | None,
    owner_id: int,
    what: str,
    missing: str,
    nonce: str | None = None,
) -> None:
    """Tell the job's owner, in the thread or else its parent channel, what Discord refused."""
    text = render.permission_problem(owner_id, what, missing)
    mentions = discord.AllowedMentions(users=[discord.Object(owner_id)])
    for target in (channel, await _maybe_channel(bot, fallback_id)):
        if target is None:
            continue
        try:
            await target.send(text, allowed_mentions=mentions, nonce=nonce)
            return
        except discord.HTTPException:
            continue
    log.error("could not tell <@%s> that %s failed (missing %s)", owner_id, what, missing)


async def _maybe_channel(bot: AtelierBot, channel_id: int | None) -> Any:
    if channel_id is None:
        return None
    try:
        return await resolve_channel(bot, channel_id)
    except discord.HTTPException:
        return None


async def tell_somewhere(
    bot: AtelierBot, channel_ids: list[int | None], text: str, nonce: str
) -> bool:
    """Post `text` in the first of the channels that takes it (no pings); False when none did
    (the caller has logged it for the operator)."""
    for channel_id in dict.fromkeys(c for c in channel_ids if c):
        channel = await _maybe_channel(bot, int(channel_id))
        if channel is None:
            continue
        try:
            await send(
                channel,
                nonce,
                text,
                recheck=True,
                allowed_mentions=discord.AllowedMentions.none(),
            )
            return True
        except discord.HTTPException:
            continue
    return False


def link_if_possible(bot: AtelierBot, path: Path) -> str | None:
    """A signed link to a kept file, or None (no file, no link secret, outside the data)."""
    try:
        return bot.signer.link(path)[0] if path.is_file() else None
    except (ValueError, RuntimeError, TypeError):
        return None
