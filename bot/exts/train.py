"""`/train lora` and `/train embedding`: dataset in, job queued, thread opened."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import ValidationError

from bot import queries
from bot.catalogue import quantize_base_for
from bot.db import run_db
from bot.errors import BadInput, LimitReached
from bot.exts._common import atelier
from bot.exts.datasets import dataset_choices
from bot.exts.iterate import from_choices, train_from
from bot.permissions import require_worker_time
from bot.uploads import discard_new, ingest_upload, require_disk_space, require_one_source
from storage.base_models import UnknownBaseModel
from storage.base_models import resolve as resolve_base_model
from storage.ingest import IngestOptions, IngestResult
from storage.models import Job
from trainer.config import ARCHITECTURES, TrainConfig, TrainOverrides
from trainer.presets import (
    DEFAULT_PRESET,
    PRESETS,
    PresetError,
    apply_preset,
    explain_validation_error,
)

MIN_INGEST_RESOLUTION = 64


def build_config(
    method: str, preset: str, base_model: str, known_models: dict[str, Any], **options: Any
) -> TrainConfig:
    """Preset + the member's overrides, validated once for the base model's architecture; a bad
    value or something the model cannot do → one clear `BadInput`."""
    if base_model not in known_models:
        raise BadInput(f"Unknown base model `{base_model}`; pick one from the list.")
    entry = known_models[base_model]
    architecture = entry.architecture
    trigger, prefix = options.pop("trigger"), options.pop("caption_prefix") or ""
    prompts = options.pop("validation_prompts", None)
    keep = options.pop("keep_prompts", None)
    try:
        overrides = TrainOverrides(
            validation_prompts=split_prompts(prompts),
            keep_prompts=split_prompts(keep),
            **{k: v for k, v in options.items() if v is not None},
        )
    except ValidationError as error:
        raise BadInput(explain_validation_error(error)) from None
    values = overrides.model_dump(exclude_none=True, exclude={"dora"})
    if (quantize := quantize_base_for(base_model, entry, method)) != "none":
        values["quantize_base"] = quantize
    try:
        return apply_preset(
            preset,
            method,
            architecture,
            base_model=base_model,
            trigger=trigger,  # type: ignore[arg-type]
            caption_prefix=prefix,
            **values,
        )
    except PresetError as error:
        raise BadInput(str(error)) from None


def split_prompts(text: str | None) -> list[str] | None:
    """A `|`-separated option as its prompts (None when not given)."""
    return [p.strip() for p in text.split("|") if p.strip()] if text else None


def model_label(name: str, entry: Any) -> str:
    """`name · FLUX.1 — description`: what a member sees in the base_model list."""
    label = str(ARCHITECTURES.get(entry.architecture, {}).get("label", entry.architecture))
    return f"{name} · {label}" + (f" — {entry.description}" if entry.description else "")


async def preset_choices(
    _interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    return [
        app_commands.Choice(name=f"{p.name} — {p.description}"[:100], value=p.name)
        for p in PRESETS.values()
        if current.lower() in p.name
    ][:25]


async def base_model_choices(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[str]]:
    models = atelier(interaction).settings.base_models
    return [
        app_commands.Choice(name=model_label(n, m)[:100], value=n)
        for n, m in models.items()
        if current.lower() in n.lower()
    ][:25]


SOURCE_CHOICES = {
    "preset": preset_choices,
    "base_model": base_model_choices,
    "dataset_name": dataset_choices,
}
"""Autocomplete of the options `/train lora` and `/train embedding` share."""


def ingest_resolution(resolution: int) -> int:
    """The dataset report's buckets and upscale advice are for the training resolution,
    rounded up to a multiple of 64."""
    return max(MIN_INGEST_RESOLUTION, -(-resolution // 64) * 64)


class Train(commands.Cog):
    train = app_commands.Group(
        name="train", description="Train a model on a zip of images", guild_only=True
    )

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @train.command(name="lora", description="Train a LoRA (or DoRA) on a zip of images")
    @app_commands.describe(
        dataset="A zip of images (and optional .txt captions)",
        dataset_url="Or an https link to the zip (for files over Discord's upload limit)",
        dataset_name="Or a dataset stored with /dataset add",
        trigger="The word that calls up your concept in prompts",
        caption_prefix="Text put in front of every caption",
        preset="Named defaults (character, style, …)",
        base_model="The model to train on",
        name="Job name (default: the trigger)",
        steps="Training steps",
        rank="LoRA rank",
        learning_rate="Learning rate",
        resolution="Training resolution (multiple of 64)",
        validation_prompts="Prompts for the grids, separated by |; {trigger} is replaced",
        keep_prompts="Prompts without the trigger that must not change, separated by |",
        keep_weight="How hard prompts without the trigger are kept as they were (0: off)",
        pivotal="Also learn the trigger as an embedding (two files to use together; "
        "default: the preset's)",
        locon="Also adapt the conv layers (LoCon): more capacity, more to hold back; SD 1.x/SDXL",
        dora="Train a DoRA instead of a plain LoRA",
        from_="Retrain this job/model on its newest dataset version, same settings",
        change="With `from`: exactly one setting changed, as key=value (e.g. rank=16)",
    )
    @app_commands.rename(from_="from")
    @app_commands.autocomplete(from_=from_choices, **SOURCE_CHOICES)
    async def lora(
        self,
        interaction: discord.Interaction,
        trigger: app_commands.Range[str, 1, 100] | None = None,
        dataset: discord.Attachment | None = None,
        dataset_url: app_commands.Range[str, 8, 1000] | None = None,
        dataset_name: app_commands.Range[str, 1, 100] | None = None,
        caption_prefix: app_commands.Range[str, 0, 200] | None = None,
        preset: str = DEFAULT_PRESET,
        base_model: str | None = None,
        name: app_commands.Range[str, 1, 60] | None = None,
        steps: app_commands.Range[int, 10, 20000] | None = None,
        rank: app_commands.Range[int, 1, 128] | None = None,
        learning_rate: app_commands.Range[float, 1e-7, 1.0] | None = None,
        resolution: app_commands.Range[int, 64, 1536] | None = None,
        validation_prompts: app_commands.Range[str, 1, 1000] | None = None,
        keep_prompts: app_commands.Range[str, 1, 1000] | None = None,
        keep_weight: app_commands.Range[float, 0.0, 10.0] | None = None,
        pivotal: bool | None = None,
        locon: bool | None = None,
        dora: bool = False,
        from_: int | None = None,
        change: app_commands.Range[str, 3, 200] | None = None,
    ) -> None:
        if from_ is not None:  # the next version of a model (bot/exts/iterate/)
            return await train_from(interaction, from_, change, name)
        if trigger is None:
            raise BadInput("Give a `trigger` (or `from` a job to retrain).")
        await self._start(
            interaction,
            "dora" if dora else "lora",
            dataset,
            dataset_url,
            name,
            preset=preset,
            base_model=base_model,
            trigger=trigger,
            caption_prefix=caption_prefix,
            steps=steps,
            rank=rank,
            learning_rate=learning_rate,
            resolution=resolution,
            validation_prompts=validation_prompts,
            keep_prompts=keep_prompts,
            keep_weight=keep_weight,
            pivotal=pivotal,
            locon=locon,
            dataset_name=dataset_name,
        )

    @train.command(name="embedding", description="Train a textual-inversion embedding")
    @app_commands.describe(
        dataset="A zip of images",
        dataset_url="Or an https link to the zip",
        dataset_name="Or a dataset stored with /dataset add",
        trigger="The token the embedding learns",
        caption_prefix="Text before every caption",
        preset="Named defaults",
        base_model="The model to train on",
        name="Job name",
        steps="Training steps",
        learning_rate="Learning rate",
        resolution="Resolution",
        validation_prompts="Prompts for the grids, separated by |",
    )
    @app_commands.autocomplete(**SOURCE_CHOICES)
    async def embedding(
        self,
        interaction: discord.Interaction,
        trigger: app_commands.Range[str, 1, 100],
        dataset: discord.Attachment | None = None,
        dataset_url: app_commands.Range[str, 8, 1000] | None = None,
        dataset_name: app_commands.Range[str, 1, 100] | None = None,
        caption_prefix: app_commands.Range[str, 0, 200] | None = None,
        preset: str = DEFAULT_PRESET,
        base_model: str | None = None,
        name: app_commands.Range[str, 1, 60] | None = None,
        steps: app_commands.Range[int, 10, 20000] | None = None,
        learning_rate: app_commands.Range[float, 1e-7, 1.0] | None = None,
        resolution: app_commands.Range[int, 64, 1536] | None = None,
        validation_prompts: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        await self._start(
            interaction,
            "embedding",
            dataset,
            dataset_url,
            name,
            preset=preset,
            base_model=base_model,
            trigger=trigger,
            caption_prefix=caption_prefix,
            steps=steps,
            learning_rate=learning_rate,
            resolution=resolution,
            validation_prompts=validation_prompts,
            dataset_name=dataset_name,
        )

    async def _start(
        self,
        interaction: discord.Interaction,
        method: str,
        dataset: discord.Attachment | None,
        dataset_url: str | None,
        name: str | None,
        **options: Any,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        bot = atelier(interaction)
        settings = bot.settings
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)
        limit = (
            guild.jobs_per_member
            if guild and guild.jobs_per_member
            else settings.limits.jobs_per_member
        )
        base_model = options.pop("base_model") or settings.default_base_model
        try:  # the resolver the worker trains with; members name catalogue entries only
            resolve_base_model(base_model, settings, allow_paths=False)
        except UnknownBaseModel:
            raise BadInput(f"Unknown base model `{base_model}`; pick one from the list.") from None
        dataset_name = options.pop("dataset_name", None)
        config = build_config(
            method, options.pop("preset"), base_model, settings.base_models, **options
        )
        if dataset_name is not None:  # a dataset stored with /dataset add
            if dataset is not None or dataset_url is not None:
                raise BadInput("Give one of `dataset`, `dataset_url` or `dataset_name`.")
            from bot.exts.datasets import stored_dataset

            await require_disk_space(settings)
            result = await stored_dataset(bot, interaction.guild_id, dataset_name, config)
        else:
            require_one_source(dataset, dataset_url)
            result = await self._ingest(bot, dataset, dataset_url, config, interaction, limit)
        job = Job(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            owner_id=interaction.user.id,
            name=name or config.trigger or "model",
            method=method,
            base_model=base_model,
            dataset_id=result.dataset_id,
            config=config.model_copy(update={"dataset": str(result.path)}).model_dump(mode="json"),
        )
        try:
            new = await run_db(queries.create_job, bot.engine, result, job, limit)
        except LimitReached:
            await discard_new(bot.engine, result)  # a refused upload leaves nothing behind
            raise
        await bot.notifier.process_job(new.job.id)  # type: ignore[arg-type]
        current = await run_db(queries.get_job, bot.engine, new.job.id)  # type: ignore[arg-type]
        where = f"<#{current.thread_id}>" if current.thread_id else "the channel"
        await interaction.followup.send(
            f"Job #{current.id} is queued (#{new.position} in line); follow it in {where}.",
            ephemeral=True,
        )

    async def _ingest(
        self,
        bot: Any,
        dataset: discord.Attachment | None,
        url: str | None,
        config: TrainConfig,
        interaction: discord.Interaction | None = None,
        job_limit: int | None = None,
    ) -> IngestResult:
        options = IngestOptions(
            trigger=config.trigger,
            caption_prefix=config.caption_prefix,
            method=config.method,
            resolution=ingest_resolution(config.side),
        )
        return await ingest_upload(
            bot.settings, dataset, url, options, interaction=interaction, job_limit=job_limit
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Train(bot))


__all__ = ["LimitReached", "Train", "build_config", "setup"]
