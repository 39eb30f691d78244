"""`/jobs` (the queue) and `/job status|cancel|finalize|retry`."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import queries, render
from bot.db import run_db
from bot.errors import BadInput
from bot.exts._common import atelier, job_choices
from bot.permissions import require_job_manager
from bot.voting import CountUnreadable
from storage import jobs as job_ops
from storage.finalize import NothingToFinalize
from storage.models import Job
from storage.states import IllegalTransition, JobState


class Jobs(commands.Cog):
    job = app_commands.Group(name="job", description="One training job", guild_only=True)

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot

    @app_commands.command(name="jobs", description="The training queue")
    @app_commands.guild_only()
    async def jobs(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        rows = await run_db(
            queries.queue_rows, atelier(interaction).engine, interaction.guild_id or 0
        )
        await interaction.followup.send(
            render.queue_lines(rows),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @job.command(name="status", description="Where a job stands")
    @app_commands.describe(job="The job")
    async def status(self, interaction: discord.Interaction, job: int) -> None:
        await interaction.response.defer(ephemeral=True)
        found = await self._job(interaction, job)
        progress = {"step": found.step, "total": found.total_steps}
        text = render.status_text(found.id, found.name, found.state, progress)
        if found.error:
            text += f"\nReason: {found.error}"
        from storage.lineage import lineage, lineage_text

        text += "\nLineage: " + lineage_text(
            await run_db(lineage, atelier(interaction).engine, found.id)
        )
        if found.thread_id:
            text += f"\nThread: <#{found.thread_id}>"
        await interaction.followup.send(text, ephemeral=True)

    @job.command(name="cancel", description="Stop a job (owner or manager)")
    @app_commands.describe(job="The job to cancel")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        await interaction.response.defer(ephemeral=True)
        found = await self._managed(interaction, job, "cancel")
        if JobState(found.state) not in (
            JobState.QUEUED,
            JobState.PREPARING,
            JobState.TRAINING,
            JobState.AWAITING_VOTE,
        ):
            raise BadInput(f"Job #{job} is already {found.state}.")
        try:
            await run_db(
                job_ops.request_cancel, atelier(interaction).engine, job, interaction.user.id
            )
        except IllegalTransition:
            raise BadInput(f"Job #{job} can no longer be cancelled.") from None
        await interaction.followup.send(f"Cancelling job #{job}.", ephemeral=True)

    @job.command(name="finalize", description="Close the vote now (owner or manager)")
    @app_commands.describe(job="The job whose vote to close")
    async def finalize(self, interaction: discord.Interaction, job: int) -> None:
        await interaction.response.defer(ephemeral=True)
        found = await self._managed(interaction, job, "finalize")
        try:
            outcome = await atelier(interaction).voting.close(found, interaction.user.id)
        except NothingToFinalize:
            raise BadInput(f"Job #{job} is {found.state}, not waiting for a vote.") from None
        except CountUnreadable:
            raise BadInput(
                f"Discord did not give me job #{job}'s votes just now; nothing was closed or "
                "deleted. Try again in a minute."
            ) from None
        await interaction.followup.send(
            f"Job #{job} finalized: step {outcome.winner.step} kept ({outcome.reason}).",
            ephemeral=True,
        )

    @job.command(name="retry", description="Queue a failed job again (owner or manager)")
    @app_commands.describe(job="The failed job")
    async def retry(self, interaction: discord.Interaction, job: int) -> None:
        await interaction.response.defer(ephemeral=True)
        found = await self._managed(interaction, job, "retry")
        if found.state != JobState.FAILED:
            raise BadInput(f"Only failed jobs can be retried; job #{job} is {found.state}.")
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        limit = queries.member_limit(guild, bot.settings.limits.jobs_per_member)
        await run_db(queries.retry_job, bot.engine, job, interaction.user.id, limit)
        await interaction.followup.send(f"Job #{job} is back in the queue.", ephemeral=True)

    @status.autocomplete("job")
    async def _any_job(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[int]]:
        return await job_choices(interaction, current, own_only=False)

    @cancel.autocomplete("job")
    @finalize.autocomplete("job")
    @retry.autocomplete("job")
    async def _own_job(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[int]]:
        return await job_choices(interaction, current, own_only=True)

    async def _job(self, interaction: discord.Interaction, job_id: int) -> Job:
        return await run_db(
            queries.get_job, atelier(interaction).engine, job_id, interaction.guild_id
        )

    async def _managed(self, interaction: discord.Interaction, job_id: int, action: str) -> Job:
        found = await self._job(interaction, job_id)
        guild = await run_db(
            queries.guild_settings, atelier(interaction).engine, interaction.guild_id
        )
        require_job_manager(interaction.user, found, guild, action)
        return found


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Jobs(bot))
