"""Domain exceptions, and the one handler that turns any of them into an ephemeral reply.

Commands raise; they never format their own error messages.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

log = logging.getLogger(__name__)


class AtelierError(Exception):
    """An error the member should read; `str(error)` is one plain sentence."""


class NotAllowed(AtelierError):
    """The member may not do this (roles, ownership, guild not allowed)."""


class LimitReached(AtelierError):
    """A per-member or size limit was reached."""


class BadInput(AtelierError):
    """An option value the bot refuses (URL, preset, config)."""


class NotFound(AtelierError):
    """No such job, model or checkpoint."""


class DatasetRefused(AtelierError):
    """Ingest refused the upload; the message comes from `IngestError`."""


async def reply_error(interaction: discord.Interaction, message: str) -> None:
    """Say `message` to the member only, whatever state the interaction is in."""
    text = message[:1900]
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not tell member %s: %s", interaction.user.id, text)


async def on_app_command_error(
    interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """The tree's error handler: domain errors become a reply; anything else is logged."""
    original = getattr(error, "original", error)
    if isinstance(original, AtelierError):
        await reply_error(interaction, str(original))
    elif isinstance(error, app_commands.NoPrivateMessage):
        await reply_error(interaction, "This command works only in a server.")
    elif isinstance(error, app_commands.CheckFailure):
        await reply_error(interaction, str(error) or "You may not use this command here.")
    else:
        log.error("command %s failed", _name(interaction), exc_info=original)
        await reply_error(interaction, "Something went wrong on my side; see the bot's log.")


def _name(interaction: discord.Interaction) -> str:
    return interaction.command.qualified_name if interaction.command else "?"
