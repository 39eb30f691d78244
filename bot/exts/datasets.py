"""`/dataset add|list|show|remove`: named datasets a guild trains on again and again
(`/train … dataset_name:`)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from sqlalchemy.engine import Engine

from bot import queries, render
from bot.db import run_db
from bot.errors import BadInput, NotAllowed, NotFound
from bot.exts._common import atelier
from bot.permissions import member_is_manager, require_worker_time
from bot.uploads import discard_new, ingest_upload, require_one_source
from storage import datasets as store
from storage.db import session_scope
from storage.ingest import IngestOptions
from storage.models import Dataset

SHEET_NAME = "contact-sheet.png"


class DatasetProblem(BadInput):
    """A refusal from `storage.datasets` (name taken, in use, …), said to the member."""


@dataclass(frozen=True)
class StoredDataset:
    """A stored dataset in the shape `/train` expects of an ingest result."""

    dataset_id: str
    path: Path
    report: dict[str, Any]

    def to_json(self) -> dict[str, Any]:  # only called when the row vanished meanwhile
        raise NotFound("That dataset was removed meanwhile; pick another one.")


# --- database calls (run through run_db) ----------------------------------------------------


def _add(engine: Engine, result: Any, **fields: Any) -> Dataset:
    with session_scope(engine) as session:
        try:
            return store.add_named_dataset(session, result, **fields)
        except store.DatasetRefused as error:
            raise DatasetProblem(str(error)) from None


def _list(engine: Engine, guild_id: int | None) -> list[Dataset]:
    with session_scope(engine) as session:
        return store.list_datasets(session, guild_id)


def _names(engine: Engine, guild_id: int | None, current: str) -> list[str]:
    with session_scope(engine) as session:
        return store.names_matching(session, guild_id, current)


def _name_taken(engine: Engine, guild_id: int | None, name: str) -> bool:
    with session_scope(engine) as session:
        return store.find_dataset(session, guild_id, name) is not None


def _find(engine: Engine, guild_id: int | None, name: str) -> Dataset:
    with session_scope(engine) as session:
        dataset = store.find_dataset(session, guild_id, " ".join(name.split()))
    if dataset is None:
        raise NotFound(f"There is no dataset named `{name}` in this server; see `/dataset list`.")
    return dataset


def _remove(engine: Engine, dataset_id: str, name: str) -> Path | None:
    with session_scope(engine) as session:
        row = session.get(Dataset, dataset_id)
        if row is None or row.name != name:
            raise NotFound(f"There is no dataset named `{name}` in this server.")
        try:
            return store.remove_dataset(session, row)
        except store.DatasetRefused as error:
            raise DatasetProblem(str(error)) from None


def _show_parts(folder: Path) -> tuple[bytes, int, list[dict[str, Any]]]:
    sheet, count = store.contact_sheet(folder)
    return sheet, count, store.caption_samples(folder)


# --- helpers /train uses ----------------------------------------------------------------------


async def dataset_choices(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    """Autocomplete: the guild's dataset names (at most 25)."""
    names = await run_db(_names, atelier(interaction).engine, interaction.guild_id, current)
    return [app_commands.Choice(name=n[:100], value=n[:100]) for n in names][:25]


async def stored_dataset(bot: Any, guild_id: int | None, name: str, config: Any) -> StoredDataset:
    """The guild's dataset `name`, checked against the job's trigger."""
    dataset = await run_db(_find, bot.engine, guild_id, name)
    if not await run_db(Path(dataset.path).is_dir):
        raise NotFound(f"Dataset `{dataset.name}`'s images are missing; add it again.")
    report = dict(dataset.report or {})
    stored = " ".join(str(report.get("trigger") or "").split())
    wanted = " ".join(str(getattr(config, "trigger", "") or "").split())
    if stored and not report.get("concepts") and wanted != stored:
        raise BadInput(
            f"Dataset `{dataset.name}` was stored with the trigger `{stored}`; "
            "train with that trigger (its captions contain it)."
        )
    return StoredDataset(dataset.id, Path(dataset.path), report)


# --- the commands -----------------------------------------------------------------------------


class Datasets(commands.Cog):
    dataset = app_commands.Group(
        name="dataset", description="Named datasets to train on", guild_only=True
    )

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @dataset.command(name="add", description="Store a zip of images as a named dataset")
    @app_commands.describe(
        name="A name, unique in this server",
        dataset="A zip of images (and .txt captions)",
        dataset_url="Or an https link to the zip",
        description="What the dataset is",
        trigger="The trigger word put in every caption",
        caption_prefix="Text put in front of every caption",
    )
    async def add(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 100],
        dataset: discord.Attachment | None = None,
        dataset_url: app_commands.Range[str, 8, 1000] | None = None,
        description: app_commands.Range[str, 1, 500] | None = None,
        trigger: app_commands.Range[str, 1, 100] | None = None,
        caption_prefix: app_commands.Range[str, 0, 200] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)
        require_one_source(dataset, dataset_url)
        try:
            cleaned = store.clean_name(name)
        except store.DatasetRefused as error:
            raise DatasetProblem(str(error)) from None
        if await run_db(_name_taken, bot.engine, interaction.guild_id, cleaned):
            raise DatasetProblem(
                f"There is already a dataset named `{cleaned}`; pick another name."
            )
        options = IngestOptions(trigger=trigger or "", caption_prefix=caption_prefix or "")
        result = await ingest_upload(
            bot.settings, dataset, dataset_url, options, interaction=interaction
        )
        try:
            row = await run_db(
                _add,
                bot.engine,
                result,
                guild_id=interaction.guild_id,
                name=cleaned,
                created_by=interaction.user.id,
                description=description,
            )
        except DatasetProblem:
            await discard_new(bot.engine, result)  # a refused upload leaves nothing behind
            raise
        embed = render.dataset_embed(
            row.name or cleaned, row.description, row.report, row.created_by
        )
        await interaction.followup.send(
            f"Stored dataset `{row.name}` ({row.images} images). Train on it with "
            f"`/train lora dataset_name:{row.name}`.",
            embed=embed,
            ephemeral=True,
        )

    @dataset.command(name="list", description="This server's datasets")
    async def list_(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        rows = await run_db(_list, atelier(interaction).engine, interaction.guild_id)
        await interaction.followup.send(
            render.dataset_list_text(
                [
                    {
                        "name": d.name,
                        "images": d.images,
                        "created_by": d.created_by,
                        "description": d.description,
                    }
                    for d in rows
                ]
            ),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @dataset.command(name="show", description="A dataset's report, thumbnails and captions")
    @app_commands.describe(name="The dataset")
    async def show(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]
    ) -> None:
        await interaction.response.defer(thinking=True)
        bot = atelier(interaction)
        row = await run_db(_find, bot.engine, interaction.guild_id, name)
        folder = Path(row.path)
        if not await run_db(folder.is_dir):
            raise NotFound(f"Dataset `{row.name}`'s images are missing; add it again.")
        sheet, count, samples = await run_db(_show_parts, folder)
        embed = render.dataset_embed(
            row.name or name,
            row.description,
            row.report,
            row.created_by,
            samples=samples,
            thumbnails=(count, row.images),
        )
        embed.set_image(url=f"attachment://{SHEET_NAME}")
        await interaction.followup.send(
            embed=embed,
            file=discord.File(io.BytesIO(sheet), filename=SHEET_NAME),
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @dataset.command(name="remove", description="Delete a dataset (its creator or a manager)")
    @app_commands.describe(name="The dataset")
    async def remove(
        self, interaction: discord.Interaction, name: app_commands.Range[str, 1, 100]
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = atelier(interaction)
        row = await run_db(_find, bot.engine, interaction.guild_id, name)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        if row.created_by != interaction.user.id and not member_is_manager(interaction.user, guild):
            who = f"its creator (<@{row.created_by}>)" if row.created_by else "its creator"
            raise NotAllowed(f"Only {who} or a manager may remove dataset `{row.name}`.")
        folder = await run_db(_remove, bot.engine, row.id, row.name or name)
        await run_db(store.delete_folder, folder, bot.settings.datasets_dir)
        await interaction.followup.send(
            f"Removed dataset `{row.name}` and its images.", ephemeral=True
        )

    @show.autocomplete("name")
    @remove.autocomplete("name")
    async def _name_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await dataset_choices(interaction, current)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Datasets(bot))
