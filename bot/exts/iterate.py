"""`/iterate start|finish`, `/compare`, and `/train lora from:` (the next version of a model).

Voting on candidates: one message per page of up to 10 images (Discord allows 10 attachments
per message), with number reactions 1️⃣…🔟 meaning "keep image n", followed by a second message
for the same page whose number reactions mean "discard image n". A candidate is kept when its
keeps outnumber its discards. Why not one message per image with ✅/❌: 40 images would be 40
messages plus 80 bot reactions, which runs into Discord's per-channel message and reaction
rate limits for minutes; why not 20 reactions (keep + discard) on one message: 20 is Discord's
cap of distinct reactions per message, so there would be no room left for anything else and
the two sets of letters are easy to confuse. Two messages per page stay well inside both caps.

At the deadline (or on `/iterate finish`) the votes are recounted from the messages themselves
(so reactions made while the bot was away count), then `storage.iterations.finish_iteration`
builds the next dataset version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from pydantic import ValidationError

from bot import delivery, queries, render
from bot.db import run_db
from bot.errors import BadInput, LimitReached, NotFound
from bot.exts._common import atelier, job_choices
from bot.exts.models import model_choices
from bot.permissions import member_is_manager, require_worker_time
from bot.render import NUMBER_EMOJI
from bot.retries import deliver_loose
from bot.visibility import require_visible
from bot.voting import CountUnreadable, plain
from storage import comparisons, lineage
from storage import iterations as it
from storage.db import session_scope
from storage.events import event_nonce, pending
from storage.models import Event, Job
from storage.requests import RenderQuotaReached, check_render_quota
from trainer.config import TrainConfig, TrainOverrides
from trainer.presets import explain_validation_error

log = logging.getLogger(__name__)

KEEP_HINT = "React with an image's number to **keep** it"
DISCARD_HINT = "React with an image's number to **discard** it"
A_EMOJI, B_EMOJI = "🅰️", "🅱️"
CHANGEABLE = frozenset({"steps", "rank", "learning_rate", "resolution", "base_model"})
"""What `change:` may set: the settings `/train` offers members, checked by the same limits
(`TrainOverrides`) and, for `base_model`, the operator's catalogue."""


# --- /train lora from: ----------------------------------------------------------------------


def parse_change(
    change: str | None, config: dict[str, Any], catalogue: Collection[str] = ("tiny",)
) -> tuple[str | None, Any, Any, dict[str, Any]]:
    """`rank=16` → (key, old, new, new config): one allowed key, within the member limits of
    `/train` and the base-model catalogue, then validated against TrainConfig."""
    if not change or not change.strip():
        return None, None, None, dict(config)
    parts = [p for p in change.replace(",", " ").split() if p]
    if len(parts) != 1 or parts[0].count("=") != 1:
        raise BadInput("Change exactly one setting, as `key=value` (e.g. `rank=16`).")
    key, raw = (s.strip() for s in parts[0].split("="))
    if key not in CHANGEABLE or not raw:
        allowed = ", ".join(sorted(CHANGEABLE))
        raise BadInput(f"`{key}` is not a setting that can be changed (only {allowed}).")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    _check_member_limits(key, value, catalogue)
    updated = json.loads(json.dumps(config))
    target = updated
    *path, leaf = key.split(".")
    for part in path:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise BadInput(f"`{key}` is not a setting that can be changed.")
    old = target.get(leaf)
    target[leaf] = value
    try:
        validated = TrainConfig.model_validate(updated).model_dump(mode="json")
    except ValidationError as error:
        raise BadInput(explain_validation_error(error)) from None
    new = validated
    for part in key.split("."):
        new = new[part]
    if new == old:
        raise BadInput(f"`{key}` is already {old}; that changes nothing.")
    return key, old, new, validated


def _check_member_limits(key: str, value: Any, catalogue: Collection[str]) -> None:
    """The same bounds `/train`'s options have; a base model from the catalogue only."""
    if key == "base_model":
        if value not in catalogue:
            raise BadInput(f"Unknown base model `{value}`; pick one from the catalogue.")
        return
    try:
        TrainOverrides.model_validate({key: value})
    except ValidationError as error:
        raise BadInput(explain_validation_error(error)) from None


def _child_job(
    engine: Any,
    parent_id: int,
    guild_id: int | None,
    channel_id: int | None,
    owner_id: int,
    name: str | None,
    change: str | None,
    limit: int,
    catalogue: Collection[str],
) -> Job:
    from storage import jobs

    with session_scope(engine) as session:
        parent = session.get(Job, parent_id)
        if parent is None or (guild_id is not None and parent.guild_id not in (None, guild_id)):
            raise NotFound(f"There is no job #{parent_id}.")
        if parent.state == "cancelled":
            raise BadInput(f"Job #{parent_id} was cancelled; retrain from a job that finished.")
        if jobs.active_jobs_of(session, guild_id, owner_id) >= limit:
            raise BadInput(
                f"You already have {limit} job(s) queued or running; wait for one to finish."
            )
        dataset = lineage.newest_dataset(session, parent.dataset_id)
        key, old, new, config = parse_change(
            change, {**parent.config, "dataset": dataset.path}, catalogue
        )
        version = lineage.dataset_version(session, dataset.id)
        child = Job(
            guild_id=guild_id,
            channel_id=channel_id,
            owner_id=owner_id,
            name=name or f"{parent.name}-v{version}"[:100],
            method=parent.method,
            base_model=config.get("base_model") or parent.base_model,
            dataset_id=dataset.id,
            config=config,
        )
        return lineage.enqueue_child(session, parent, child, key, old, new)


async def train_from(
    interaction: discord.Interaction, parent_id: int, change: str | None, name: str | None
) -> None:
    """`/train lora from:<job> [change:key=value]`: the next version of a model."""
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = atelier(interaction)
    guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
    require_worker_time(interaction.user, guild)
    limit = (
        guild.jobs_per_member
        if guild and guild.jobs_per_member
        else bot.settings.limits.jobs_per_member
    )
    child = await run_db(
        _child_job,
        bot.engine,
        parent_id,
        interaction.guild_id,
        interaction.channel_id,
        interaction.user.id,
        name,
        change,
        limit,
        list(bot.settings.base_models),
    )
    await bot.notifier.process_job(child.id)  # type: ignore[arg-type]
    info = await run_db(lineage.lineage, bot.engine, child.id)
    current = await run_db(queries.get_job, bot.engine, child.id)  # type: ignore[arg-type]
    where = f"<#{current.thread_id}>" if current.thread_id else "the channel"
    await interaction.followup.send(
        f"Job #{child.id} is queued ({lineage.lineage_text(info)}); follow it in {where}.",
        ephemeral=True,
    )


# --- posting (called by the notifier) --------------------------------------------------------


def is_iteration_event(event: Event) -> bool:
    return event.kind in it.ITERATION_KINDS


async def deliver(notifier: Any, events: Sequence[Event]) -> None:
    """Say iteration and comparison events (each once; a lock keeps the loop and a command
    from posting the same event together)."""
    lock = notifier.__dict__.setdefault("_iterate_lock", asyncio.Lock())
    async with lock:
        fresh = {e.id: e for e in await run_db(pending, notifier.engine, 500)}
        for event in events:
            if event.id not in fresh:
                continue
            await deliver_loose(
                notifier, fresh[event.id], lambda e: _say(notifier.bot, e), "an update", event.kind
            )


async def deliver_pending(bot: Any) -> None:
    events = await run_db(pending, bot.engine, 500)
    await deliver(bot.notifier, [e for e in events if is_iteration_event(e)])


async def _say(bot: Any, event: Event) -> int | None:
    p = event.payload
    user = int(p.get("user_id") or 0)
    mentions = discord.AllowedMentions(users=[discord.Object(user)])
    if event.kind == it.ITERATION_RENDERED:
        return await _post_pages(bot, event)
    if event.kind == it.ITERATION_FINISHED:
        return await _post_finished(bot, event)
    if event.kind == it.COMPARISON_RENDERED:
        return await _post_comparison(bot, event)
    channel = await delivery.resolve_channel(bot, int(p["channel_id"]))
    what = "iteration" if event.kind == it.ITERATION_FAILED else "comparison"
    message = await delivery.send(
        channel,
        event_nonce(event),
        render.truncate(f"<@{user}> the {what} could not be rendered: {p.get('reason', '')}"),
        recheck=event.attempted_at is not None,
        allowed_mentions=mentions,
    )
    return message.id


async def _post_pages(bot: Any, event: Event) -> int:
    p = event.payload
    iteration = await run_db(it.get_iteration, bot.engine, int(p["iteration_id"]))
    assert iteration is not None and iteration.channel_id is not None
    job = await run_db(queries.get_job, bot.engine, iteration.job_id)
    cands = await run_db(it.candidates, bot.engine, iteration.id)  # type: ignore[arg-type]
    channel = await delivery.resolve_channel(bot, iteration.channel_id)
    deadline = render.timestamp(iteration.deadline) if iteration.deadline else "soon"
    again = event.attempted_at is not None
    head = await delivery.send(
        channel,
        event_nonce(event),
        f"🔁 Iteration #{iteration.id} of **{job.name}** (#{job.id}): {len(cands)} candidates "
        f"by <@{iteration.user_id}>. On each page, {KEEP_HINT.lower()}; on the message below "
        f"it, {DISCARD_HINT.lower()}. Kept images join the next dataset version when the vote "
        f"closes {deadline} (or `/iterate finish`).",
        recheck=again,
        allowed_mentions=discord.AllowedMentions.none(),
    )
    thread_id = iteration.thread_id
    if thread_id is None and isinstance(channel, discord.Thread):
        thread_id = channel.id  # asked in a thread: threads hold no threads
        await run_db(it.set_iteration_thread, bot.engine, iteration.id, thread_id)  # type: ignore[arg-type]
    if thread_id is None:
        try:
            thread = await channel.create_thread(  # type: ignore[attr-defined]
                name=f"iterate-{iteration.id}-{job.name}"[:100],
                message=head,
                auto_archive_duration=1440,
            )
            thread_id = thread.id
        except discord.HTTPException as error:
            if error.code != 160004:
                raise
            thread_id = head.id
        await run_db(it.set_iteration_thread, bot.engine, iteration.id, thread_id)  # type: ignore[arg-type]
    thread = await delivery.resolve_channel(bot, thread_id)  # type: ignore[arg-type]
    pages = [cands[i : i + it.PAGE_SIZE] for i in range(0, len(cands), it.PAGE_SIZE)]
    for number, page in enumerate(pages, start=1):
        if page[0].page_message_id:
            continue  # posted before a retry
        lines = [f"{NUMBER_EMOJI[i]} {c.prompt}" for i, c in enumerate(page)]
        files = await delivery.read_files([c.image_path for c in page])
        keep = await delivery.send(
            thread,
            f"{event_nonce(event)}-p{number}",
            render.truncate(f"**Page {number}/{len(pages)}** — {KEEP_HINT}.\n" + "\n".join(lines)),
            recheck=again,
            files=files,
        )
        discard = await delivery.send(
            thread,
            f"{event_nonce(event)}-d{number}",
            f"Page {number}: ❌ {DISCARD_HINT}.",
            recheck=again,
        )
        await run_db(it.set_page_messages, bot.engine, [c.id for c in page], keep.id, discard.id)  # type: ignore[misc]
        numbers = list(NUMBER_EMOJI[: len(page)])
        await delivery.add_reactions(keep, numbers)
        await delivery.add_reactions(discard, numbers)
    return head.id


def _spread_text(spread: dict[str, int]) -> str:
    return " · ".join(f"{context} {count}" for context, count in spread.items()) or "—"


async def _post_finished(bot: Any, event: Event) -> int:
    p = event.payload
    target = await delivery.resolve_channel(bot, int(p.get("thread_id") or p["channel_id"]))
    added = p.get("added") or []
    if p.get("dataset_id"):
        text = (
            f"✅ Iteration #{p['iteration_id']} closed: {len(added)} image(s) kept → "
            f"dataset **v{p.get('version')}** `{str(p['dataset_id'])[:12]}` with "
            f"{p.get('images')} images. Train it with `/train lora from:`."
        )
    else:
        text = f"Iteration #{p['iteration_id']} closed: no image had a net keep vote."
    embed = discord.Embed(title=f"Dataset v{p.get('version') or '—'} report", colour=render.COLOUR)
    report = p.get("report") or {}
    embed.description = f"**{p.get('images', 0)}** images"
    embed.add_field(
        name="Added",
        value=render.truncate("\n".join(f"• {a['prompt']}" for a in added[:10]) or "nothing", 1000),
        inline=False,
    )
    embed.add_field(
        name="Contexts",
        value=render.truncate(_spread_text(p.get("spread") or {}), 1000),
        inline=False,
    )
    if report:
        embed.add_field(name="Judged at", value=render.judged_at_text(report), inline=False)
    warnings = list(report.get("warnings") or [])[:3]
    if warnings:
        embed.add_field(name="Warnings", value=render.truncate("\n".join(warnings), 1000))
    message = await delivery.send(
        target, event_nonce(event), text, recheck=event.attempted_at is not None, embed=embed
    )
    return message.id


async def _post_comparison(bot: Any, event: Event) -> int:
    p = event.payload
    channel = await delivery.resolve_channel(bot, int(p["channel_id"]))
    text = await _comparison_text(bot, int(p["comparison_id"]))
    files = await delivery.read_files([p.get("grid_path")])
    message = await delivery.send(
        channel,
        event_nonce(event),
        text,
        recheck=event.attempted_at is not None,
        files=files,
    )
    await run_db(
        comparisons.set_comparison_message, bot.engine, int(p["comparison_id"]), message.id
    )
    await delivery.add_reactions(message, [A_EMOJI, B_EMOJI])
    return message.id


async def _comparison_text(bot: Any, comparison_id: int) -> str:
    """The comparison grid's caption, with the members' 🅰️/🅱️ tally once anyone voted."""
    row = await run_db(comparisons.get_comparison, bot.engine, comparison_id)
    a = await run_db(queries.get_job, bot.engine, row.job_a)
    b = await run_db(queries.get_job, bot.engine, row.job_b)
    differs = ", ".join(f"**{k}** {v[0]} vs {v[1]}" for k, v in row.diff.items()) or "nothing"
    text = (
        f"🆚 Comparison #{comparison_id}: {A_EMOJI} #{a.id} {a.name} (left) vs {B_EMOJI} "
        f"#{b.id} {b.name} (right); same prompts and seeds. Differs in: {differs}. React "
        f"{A_EMOJI} or {B_EMOJI} for the better one."
    )
    tally = await run_db(comparisons.comparison_tally, bot.engine, comparison_id)
    if tally["a"] or tally["b"]:
        lead = (
            "tied"
            if tally["a"] == tally["b"]
            else (f"{A_EMOJI} leads" if tally["a"] > tally["b"] else f"{B_EMOJI} leads")
        )
        text += f"\n**Votes:** {A_EMOJI} {tally['a']} · {B_EMOJI} {tally['b']} ({lead})"
    return render.truncate(text)


async def show_comparison_tally(
    bot: Any, comparison_id: int, channel_id: int, message_id: int
) -> None:
    """Edit the comparison message so it shows the current tally (keeping its marker)."""
    channel = await delivery.resolve_channel(bot, channel_id)
    message = channel.get_partial_message(message_id)  # type: ignore[attr-defined]
    text = await _comparison_text(bot, comparison_id)
    nonce = await run_db(comparisons.comparison_nonce, bot.engine, comparison_id)
    try:
        await message.edit(content=delivery.with_marker(text, nonce) if nonce else text)
    except discord.HTTPException as error:
        log.warning("comparison %s: tally not shown (%s)", comparison_id, error.status)


# --- votes -----------------------------------------------------------------------------------


async def recount(bot: Any, iteration_id: int) -> None:
    """Make the stored candidate votes what the page messages show."""
    iteration = await run_db(it.get_iteration, bot.engine, iteration_id)
    if iteration is None or iteration.thread_id is None:
        return
    thread = await delivery.resolve_channel(bot, iteration.thread_id)
    cands = await run_db(it.candidates, bot.engine, iteration_id)
    bot_id = bot.user.id if bot.user else 0
    votes: dict[tuple[int, int], set[int]] = {}
    cache: dict[int, Any] = {}
    for index, cand in enumerate(cands):
        for value, message_id in (
            (it.KEEP, cand.page_message_id),
            (it.DISCARD, cand.discard_message_id),
        ):
            if not message_id:
                continue
            if message_id not in cache:
                try:
                    cache[message_id] = await thread.fetch_message(message_id)  # type: ignore[attr-defined]
                except discord.NotFound:
                    cache[message_id] = None
                except discord.HTTPException as error:  # stored votes stay; close later
                    raise CountUnreadable(f"page {message_id}: {error.status}") from error
            message = cache[message_id]
            emoji = plain(NUMBER_EMOJI[index % it.PAGE_SIZE])
            users: set[int] = set()
            for reaction in message.reactions if message else []:
                if plain(str(reaction.emoji)) == emoji:
                    users = {u.id async for u in reaction.users() if u.id != bot_id and not u.bot}
            votes[(cand.id, value)] = users  # type: ignore[index]
    await run_db(_store_recount, bot.engine, votes)


def _store_recount(engine: Any, votes: dict[tuple[int, int], set[int]]) -> None:
    from sqlmodel import select

    from storage.models import CandidateVote

    with session_scope(engine) as session:
        for (candidate_id, value), users in votes.items():
            rows = session.exec(
                select(CandidateVote).where(
                    CandidateVote.candidate_id == candidate_id, CandidateVote.value == value
                )
            ).all()
            for row in rows:
                if row.user_id not in users:
                    session.delete(row)
            for user in users - {row.user_id for row in rows}:
                session.add(CandidateVote(candidate_id=candidate_id, user_id=user, value=value))


async def close_iteration(bot: Any, iteration_id: int, by_user: int | None) -> Any:
    await recount(bot, iteration_id)
    dataset = await run_db(
        it.finish_iteration,
        bot.engine,
        iteration_id,
        bot.settings.datasets_dir,
        bot.settings.limits,
        by_user,
    )
    await deliver_pending(bot)
    return dataset


# --- the cog ---------------------------------------------------------------------------------


class Iterate(commands.Cog):
    iterate = app_commands.Group(
        name="iterate",
        guild_only=True,
        description="Grow a model's dataset from its own best images",
    )
    check_seconds = 15.0

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self._task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        if getattr(self.bot, "start_tasks", False):
            self._task = asyncio.create_task(self._deadlines())

    async def cog_unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _deadlines(self) -> None:
        await self.bot.wait_until_ready()
        while True:
            try:
                for iteration_id in await run_db(it.due_iterations, self.bot.engine):  # type: ignore[attr-defined]
                    with contextlib.suppress(it.NothingToFinish):
                        await close_iteration(self.bot, iteration_id, None)
                await deliver_pending(self.bot)  # a safety net for the notifier's routing
            except Exception:
                log.exception("iteration deadline check failed")
            await asyncio.sleep(getattr(self.bot.voting, "check_seconds", self.check_seconds))  # type: ignore[attr-defined]

    @iterate.command(name="start", description="Render candidates with a model to curate")
    @app_commands.describe(
        model="A finalized model",
        count="How many candidates (≤ 40)",
        contexts="Extra contexts, comma separated (e.g. at a café, in space)",
    )
    @app_commands.autocomplete(model=model_choices)
    async def start(
        self,
        interaction: discord.Interaction,
        model: int,
        count: app_commands.Range[int, 1, it.MAX_CANDIDATES] = 20,
        contexts: app_commands.Range[str, 1, 1000] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)
        job = await run_db(queries.get_job, bot.engine, model, interaction.guild_id)
        require_visible(interaction, job)  # a model of a channel they cannot see is not theirs
        try:
            iteration_id = await run_db(
                _request_iteration,
                bot.engine,
                bot.settings.limits.renders_per_member,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                job_id=model,
                count=count,
                contexts=(contexts or "").split(","),
            )
        except it.IterationRefused as error:
            raise BadInput(f"Cannot iterate: {error}.") from None
        await interaction.followup.send(
            f"Iteration #{iteration_id} queued: {count} candidates; a thread opens here when a "
            "worker has rendered them.",
            ephemeral=True,
        )

    @iterate.command(name="finish", description="Close an iteration's vote now (its owner)")
    @app_commands.describe(iteration="The iteration id")
    async def finish(self, interaction: discord.Interaction, iteration: int) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        found = await run_db(it.get_iteration, bot.engine, iteration)
        if found is None or found.guild_id not in (None, interaction.guild_id):
            raise NotFound(f"There is no iteration #{iteration}.")
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        if found.user_id != interaction.user.id and not member_is_manager(interaction.user, guild):
            raise BadInput("Only the iteration's owner or a manager can finish it.")
        try:
            dataset = await close_iteration(bot, iteration, interaction.user.id)
        except it.NothingToFinish:
            raise BadInput(
                f"Iteration #{iteration} is {found.state}, not waiting for votes."
            ) from None
        except CountUnreadable:
            raise BadInput(
                "Discord did not give me the votes just now; nothing was closed. Try again soon."
            ) from None
        text = (
            f"Iteration #{iteration} finished: dataset `{dataset.id[:12]}` "
            f"({dataset.images} images)."
            if dataset
            else f"Iteration #{iteration} finished; nothing was kept."
        )
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(name="compare", description="Render two models side by side")
    @app_commands.guild_only()
    @app_commands.describe(a="The first model (left)", b="The second model (right)")
    @app_commands.autocomplete(a=model_choices, b=model_choices)
    async def compare(self, interaction: discord.Interaction, a: int, b: int) -> None:
        await interaction.response.defer(ephemeral=True)
        bot = atelier(interaction)
        guild = await run_db(queries.guild_settings, bot.engine, interaction.guild_id)
        require_worker_time(interaction.user, guild)  # it costs worker time, like /train
        for job_id in (a, b):
            job = await run_db(queries.get_job, bot.engine, job_id, interaction.guild_id)
            require_visible(interaction, job)
        try:
            comparison = await run_db(
                _request_comparison,
                bot.engine,
                bot.settings.limits.renders_per_member,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
                user_id=interaction.user.id,
                job_a=a,
                job_b=b,
            )
        except it.IterationRefused as error:
            raise BadInput(f"Cannot compare: {error}.") from None
        await interaction.followup.send(
            f"Comparison #{comparison} queued; the grid appears here when a worker renders it.",
            ephemeral=True,
        )

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, True)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self._reaction(payload, False)

    async def _reaction(self, payload: discord.RawReactionActionEvent, on: bool) -> None:
        bot: Any = self.bot
        if bot.user is not None and payload.user_id == bot.user.id:
            return
        if payload.member is not None and payload.member.bot:
            return  # only members vote
        emoji = plain(str(payload.emoji))
        comparison = await run_db(comparisons.comparison_of_message, bot.engine, payload.message_id)
        if comparison is not None:
            choice = {plain(A_EMOJI): "a", plain(B_EMOJI): "b"}.get(emoji)
            if choice:
                await run_db(
                    comparisons.record_comparison_vote,
                    bot.engine,
                    comparison,
                    payload.user_id,
                    choice,
                    on,
                )
                await show_comparison_tally(bot, comparison, payload.channel_id, payload.message_id)
            return
        page = await run_db(it.page_of_message, bot.engine, payload.message_id)
        numbers = [plain(n) for n in NUMBER_EMOJI]
        if page is None or emoji not in numbers:
            return
        value, cands = page
        index = numbers.index(emoji)
        if index < len(cands):
            await run_db(
                it.record_candidate_vote,
                bot.engine,
                cands[index].id,
                payload.user_id,  # type: ignore[arg-type]
                value,
                on,
            )


def _within_render_quota(session: Any, limit: int, fields: dict[str, Any]) -> None:
    try:
        check_render_quota(session, fields["guild_id"], fields["user_id"], 1, limit)
    except RenderQuotaReached as error:
        raise LimitReached(str(error)) from None


def _request_iteration(engine: Any, limit: int, **fields: Any) -> int:
    with session_scope(engine) as session:
        _within_render_quota(session, limit, fields)
        return it.request_iteration(session, **fields).id  # type: ignore[return-value]


def _request_comparison(engine: Any, limit: int, **fields: Any) -> int:
    with session_scope(engine) as session:
        _within_render_quota(session, limit, fields)
        return comparisons.request_comparison(session, **fields).id  # type: ignore[return-value]


async def from_choices(
    interaction: discord.Interaction, current: str
) -> list[app_commands.Choice[int]]:
    return await job_choices(interaction, current, own_only=False)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Iterate(bot))
