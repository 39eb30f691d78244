"""Sync application commands only when their definitions changed (Discord allows 200 command
creations per guild per day): the payloads' hash is kept in the data folder."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import discord
from discord import app_commands

from bot.db import run_db

log = logging.getLogger(__name__)


def commands_hash(payloads: list[dict[str, Any]], scope: str) -> str:
    text = json.dumps({"scope": scope, "commands": payloads}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _write(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


async def sync_if_changed(
    tree: app_commands.CommandTree,
    data_dir: Path,
    application_id: int | None,
    guild_id: int | None,
) -> bool:
    """Sync (globally, or to `guild_id` in development) when the hash differs; True if synced."""
    guild = discord.Object(guild_id) if guild_id else None
    if guild is not None:
        tree.copy_global_to(guild=guild)
    payloads = [command.to_dict(tree) for command in tree.get_commands(guild=guild)]
    scope = f"{application_id}:{guild_id or 'global'}"
    digest = commands_hash(payloads, scope)
    path = data_dir / f"commands-{application_id}-{guild_id or 'global'}.sha256"
    if await run_db(_read, path) == digest:
        log.info("application commands unchanged; not syncing")
        return False
    await tree.sync(guild=guild)
    await run_db(_write, path, digest)
    log.info("synced %d application commands (%s)", len(payloads), scope)
    return True
