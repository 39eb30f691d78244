"""`atelier bot`: build the client and run it; one clear line and exit code 2 on a start-up error
(the token never appears in a log or a message).

The settings come from the entry point (`atelier.cli`), which builds the composed settings the
bot's code types against as `BotSettings`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

import discord

from bot.settings import BotSettings
from storage.db import make_engine
from storage.logs import configure_logging
from storage.migrate import SchemaMismatch
from storage.settings import SettingsError

log = logging.getLogger("bot")


class StartupError(RuntimeError):
    """A problem the operator fixes in the configuration."""


async def _main(load_settings: Callable[[], BotSettings]) -> None:
    from bot.client import AtelierBot

    settings = load_settings()
    configure_logging(settings.log_level, settings=settings)
    if settings.discord_token is None or not settings.discord_token.get_secret_value():
        raise StartupError("DISCORD_TOKEN is not set; put the bot token in the environment")
    engine = make_engine(settings.db_url)
    async with AtelierBot(settings, engine) as bot:
        # SIGTERM (atelier serve, docker stop): close the gateway and the link server cleanly;
        # undelivered events stay in the outbox for the next start.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(bot.close()))
        await bot.start(settings.discord_token.get_secret_value())


def bot_cli(argv: list[str], load_settings: Callable[[], BotSettings]) -> int:
    """Run the bot until stopped; 2 on a start-up error."""
    parser = argparse.ArgumentParser(prog="atelier bot", description="Run the Discord bot.")
    parser.parse_args(argv)
    try:
        asyncio.run(_main(load_settings))
    except (StartupError, SettingsError, SchemaMismatch) as error:
        print(f"atelier bot: {error}", file=sys.stderr)
        return 2
    except discord.LoginFailure:
        print(
            "atelier bot: Discord refused the token (DISCORD_TOKEN is wrong or revoked)",
            file=sys.stderr,
        )
        return 2
    except discord.PrivilegedIntentsRequired:
        print(
            "atelier bot: a privileged intent is not enabled for this application", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
