"""The Atelier bot: loads one extension per feature, checks the schema, syncs commands when
they changed, serves download links, and runs the notifier and vote deadlines."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands
from sqlalchemy.engine import Engine

from bot.db import run_db
from bot.errors import on_app_command_error
from bot.ingesting import Ingests
from bot.links import LinkServer, LinkSigner, stored_link_secret
from bot.notifier import Notifier
from bot.permissions import guild_allowed
from bot.settings import BotSettings
from bot.sync import sync_if_changed
from bot.voting import Voting
from storage.migrate import ensure_schema

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.exts.train",
    "bot.exts.jobs",
    "bot.exts.models",
    "bot.exts.admin",
    "bot.exts.votes",
    "bot.exts.datasets",
    "bot.exts.iterate",
)


class AtelierTree(app_commands.CommandTree):
    """Refuses guilds outside the allow-list and remembers each guild's upload limit."""

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        bot: AtelierBot = interaction.client  # type: ignore[assignment]
        if interaction.guild_id is not None:
            bot.upload_limits[interaction.guild_id] = interaction.filesize_limit
        if not guild_allowed(interaction.guild_id, bot.settings.discord.allowed_guilds):
            raise app_commands.CheckFailure("Atelier is not enabled in this server.")
        return True


class AtelierBot(commands.Bot):
    def __init__(self, settings: BotSettings, engine: Engine, *, start_tasks: bool = True) -> None:
        intents = discord.Intents.default()  # guilds + guild_reactions; nothing privileged
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=AtelierTree,
            help_command=None,
            # members' text (prompts, names, reasons) is echoed: nothing pings unless a message
            # names the member it addresses (`AllowedMentions(users=[member])` merges into this)
            allowed_mentions=discord.AllowedMentions(
                everyone=False, users=False, roles=False, replied_user=False
            ),
        )
        self.settings = settings
        self.engine = engine
        self.start_tasks = start_tasks
        self.upload_limits: dict[int, int] = {}
        secret = (
            settings.link_secret.get_secret_value().encode()
            if settings.link_secret
            else stored_link_secret(settings.data_dir)
        )
        self.signer = LinkSigner(
            secret,
            settings.data_dir,
            settings.discord.public_url,
            settings.discord.link_ttl_hours * 3600,
        )
        self.links = LinkServer(self.signer, settings.discord.link_host, settings.discord.link_port)
        self.notifier = Notifier(self)
        self.voting = Voting(self)
        self.ingests = Ingests(settings)
        self.synced = False
        self._tasks: list[asyncio.Task[None]] = []

    async def setup_hook(self) -> None:
        await run_db(ensure_schema, self.engine)
        await run_db(self.settings.data_dir.mkdir, parents=True, exist_ok=True)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.tree.on_error = on_app_command_error  # type: ignore[method-assign]
        self.synced = await sync_if_changed(
            self.tree, self.settings.data_dir, self.application_id, self.settings.discord.sync_guild
        )
        await self.links.start()
        if self.settings.discord.link_port == 0:
            self.signer.public_url = f"http://{self.links.host}:{self.links.port}"
        if self.start_tasks:
            self._tasks = [
                asyncio.create_task(self._after_ready()),
                asyncio.create_task(self.notifier.run()),
                asyncio.create_task(self.voting.run_deadlines()),
                asyncio.create_task(self.ingests.sweep_forever(self.engine)),
            ]

    async def _after_ready(self) -> None:
        await self.wait_until_ready()
        await self.voting.recount_open()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.links.stop()
        self.ingests.close()
        await super().close()


async def run_bot(settings: BotSettings, engine: Engine) -> AtelierBot:
    """Start the bot in the running loop and return once it is connected and ready (for
    `atelier demo` and tests). Stop it with `await bot.close()`."""
    if settings.discord_token is None:
        raise RuntimeError("DISCORD_TOKEN is not set")
    bot = AtelierBot(settings, engine)
    await bot.login(settings.discord_token.get_secret_value())
    bot.runner = asyncio.create_task(bot.connect(reconnect=True))  # type: ignore[attr-defined]
    waiter = asyncio.create_task(bot.wait_until_ready())
    done, _ = await asyncio.wait(
        {waiter, bot.runner},
        timeout=60,  # type: ignore[attr-defined]
        return_when=asyncio.FIRST_COMPLETED,
    )
    if waiter not in done:
        waiter.cancel()
        await bot.close()
        failed = bot.runner.exception() if bot.runner.done() else None  # type: ignore[attr-defined]
        raise RuntimeError(f"the bot did not become ready ({failed or 'timeout'})")
    return bot
