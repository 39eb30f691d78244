"""`/models list`, `/models get` and `/generate`: the guild's finalized models."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import delivery, queries, render
from bot.db import run_db
from bot.errors import BadInput, LimitReached, NotFound
from bot.exts._common import atelier
from bot.permissions import require_worker_time
from bot.visibility import member_can_view, require_visible
from storage.db import session_scope
from storage.generations import UnknownModel, request_generation
from storage.requests import RenderQuotaReached, check_render_quota


async def model_choices(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    rows = await run_db(
        queries.finalized_models, atelier(interaction).engine, interaction.guild_id or 0
    )
    rows = visible_rows(interaction, rows)
    return [
        app_commands.Choice(
            name=f"{job.name} (#{job.id}, {job.base_model})"[:100], value=job.id or 0
        )
        for job, _ in rows
        if current.lower() in job.name.lower()
    ][:25]


MAX_SEED = 2**31 - 1
MAX_COMPARED_WEIGHTS = 4


def parse_weights(text: str) -> list[float]:
    """`0.5, 1 1.5` → [0.5, 1.0, 1.5]: 1–4 weights from 0 to 2, or one clear `BadInput`."""
    parts = text.replace(",", " ").split()
    try:
        values = [float(part) for part in parts]
    except ValueError:
        bad = next(p for p in parts if not _is_number(p))
        raise BadInput(f"`weights`: `{bad}` is not a number; give e.g. `0.5, 1, 1.5`.") from None
    if not 1 <= len(values) <= MAX_COMPARED_WEIGHTS or not all(0 <= v <= 2 for v in values):
        raise BadInput(
            f"`weights`: give 1 to {MAX_COMPARED_WEIGHTS} weights from 0 to 2, e.g. `0.5, 1, 1.5`."
        )
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def visible_rows(interaction: discord.Interaction, rows: list[Any]) -> list[Any]:
    """Only the models whose job channel the member can see."""
    return [
        row
        for row in rows
        if member_can_view(interaction.guild, interaction.user, row[0].channel_id)
    ]


def _request(engine: object, weights: list[float], limit: int, **fields: object) -> list[int]:
    """One request per weight, all in one transaction (all queued or none), within the
    member's render quota."""
    with session_scope(engine) as session:  # type: ignore[arg-type]
        try:
            check_render_quota(
                session,
                fields["guild_id"],  # type: ignore[arg-type]
                fields["user_id"],  # type: ignore[arg-type]
                len(weights),
                limit,
            )
        except RenderQuotaReached as error:
            raise LimitReached(str(error)) from None
        return [
            request_generation(session, weight=weight, **fields).id  # type: ignore[arg-type,misc]
            for weight in weights
        ]


class Models(commands.Cog):
    models = app_commands.Group(
        name="models", description="The server's trained models", guild_only=True
    )

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @models.command(name="list", description="Finalized models of this server")
    async def list_models(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        rows = await run_db(
            queries.finalized_models, atelier(interaction).engine, interaction.guild_id or 0
        )
        rows = visible_rows(interaction, rows)
        if not rows:
            await interaction.followup.send("No finalized models yet.", ephemeral=True)
            return
        lines = [
            f"**{job.name}** (#{job.id}) — trigger `{job.config.get('trigger', '')}`, "
            f"`{job.base_model}`, {job.method}, by <@{job.owner_id}>"
            + (f", step {ck.step}" if ck else "")
            for job, ck in rows
        ]
        from storage.lineage import lineage, lineage_text

        for index, (job, _) in enumerate(rows):  # parents, dataset version, what changed
            info = await run_db(lineage, atelier(interaction).engine, job.id)
            lines[index] += f"\n  ↳ {lineage_text(info)}"
        await interaction.followup.send(
            render.truncate("\n".join(lines)),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @models.command(name="get", description="Download a finalized model")
    @app_commands.describe(model="The model")
    @app_commands.autocomplete(model=model_choices)
    async def get(self, interaction: discord.Interaction, model: int) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        job = await run_db(queries.get_job, bot.engine, model, interaction.guild_id)
        require_visible(interaction, job)
        ckpt = await run_db(queries.get_checkpoint, bot.engine, job.winner_checkpoint_id or 0)
        if ckpt is None or not Path(ckpt.path).is_file():
            raise NotFound(f"Job #{model} has no model file to deliver.")
        limit = min(delivery.upload_limit(bot, interaction.guild), interaction.filesize_limit)
        model_files = await delivery.model_delivery(bot, Path(ckpt.path), limit)
        usage = render.usage_line(model_files.names)
        if model_files.files:
            await interaction.followup.send(
                f"**{job.name}**{usage}", files=model_files.files, ephemeral=True
            )
            return
        until = render.timestamp(model_files.expires, "f")
        links = " · ".join(model_files.links)
        await interaction.followup.send(
            f"**{job.name}**: {links} (valid until {until}){usage}", ephemeral=True
        )

    @app_commands.command(name="generate", description="Render a prompt with a trained model")
    @app_commands.guild_only()
    @app_commands.describe(
        prompt="What to draw",
        model="The model",
        weight="How strongly the model applies",
        seed="The same seed, prompt and weight give the same image (random when left out)",
        weights="Or several weights to compare, e.g. 0.5, 1, 1.5 (one image each, same seed)",
    )
    @app_commands.autocomplete(model=model_choices)
    async def generate(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        model: int,
        weight: app_commands.Range[float, 0.0, 2.0] = 1.0,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        weights: app_commands.Range[str, 1, 100] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        chosen = parse_weights(weights) if weights else [weight]
        seed = random.randrange(MAX_SEED + 1) if seed is None else seed
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)  # rendering costs worker time, like /train
        job = await run_db(queries.get_job, bot.engine, model, interaction.guild_id)
        require_visible(interaction, job)
        try:
            numbers = await run_db(
                _request,
                bot.engine,
                chosen,
                bot.settings.limits.renders_per_member,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                checkpoint_id=job.winner_checkpoint_id or 0,
                prompt=prompt,
                seed=seed,
            )
        except UnknownModel:
            raise BadInput(f"Model #{model} is not finalized or its file is gone.") from None
        await interaction.followup.send(
            render.generate_queued_text(numbers, chosen, seed), ephemeral=True
        )


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Models(bot))
