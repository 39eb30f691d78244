"""What the job-less events look like in Discord: `/generate` images, `/iterate` candidate pages
and their result, `/compare` grids (each with its 🅰️/🅱️ tally), and why a render failed.

The notifier's table of event kinds points at `HANDLERS`; voting on candidates is explained in
`bot/exts/iterate/__init__.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from bot import delivery, queries, render
from bot.db import run_db
from bot.render import NUMBER_EMOJI
from storage import comparisons
from storage import iterations as it
from storage.events import EventKind, event_nonce
from storage.models import Event

log = logging.getLogger(__name__)

KEEP_HINT = "React with an image's number to **keep** it"
DISCARD_HINT = "React with an image's number to **discard** it"
A_EMOJI, B_EMOJI = "🅰️", "🅱️"
GENERATION_FAILED = "generation_failed"

Say = Callable[[Any, Event], Awaitable[int | None]]


async def generation(bot: Any, event: Event) -> int:
    """`/generate`: the image (or why there is none) in the member's channel."""
    p = event.payload
    user_id = int(p.get("user_id") or 0)
    channel = await delivery.resolve_channel(bot, int(p["channel_id"]))
    mentions = discord.AllowedMentions(users=[discord.Object(user_id)])
    if event.kind == EventKind.GENERATED:
        files = await delivery.read_files([p.get("image_path")])
        text = render.generated_text(
            user_id, str(p.get("prompt", "")), p.get("weight"), p.get("seed")
        )
    else:
        files, text = [], render.generation_failed_text(user_id, str(p.get("reason", "")))
    message = await delivery.send(
        channel,
        event_nonce(event),
        text,
        recheck=event.attempted_at is not None,
        files=files,
        allowed_mentions=mentions,
    )
    return message.id


async def render_failed(bot: Any, event: Event) -> int:
    """An iteration's or comparison's renders failed: tell the member who asked."""
    p = event.payload
    user = int(p.get("user_id") or 0)
    channel = await delivery.resolve_channel(bot, int(p["channel_id"]))
    what = "iteration" if event.kind == it.ITERATION_FAILED else "comparison"
    message = await delivery.send(
        channel,
        event_nonce(event),
        render.truncate(f"<@{user}> the {what} could not be rendered: {p.get('reason', '')}"),
        recheck=event.attempted_at is not None,
        allowed_mentions=discord.AllowedMentions(users=[discord.Object(user)]),
    )
    return message.id


async def iteration_pages(bot: Any, event: Event) -> int:
    """The candidates, a page of up to 10 at a time in a thread, with keep/discard messages."""
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


async def iteration_finished(bot: Any, event: Event) -> int:
    """The vote closed: what was kept, and the new dataset version's report."""
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


async def comparison(bot: Any, event: Event) -> int:
    """The side-by-side grid, with 🅰️/🅱️ reactions to vote for the better model."""
    p = event.payload
    channel = await delivery.resolve_channel(bot, int(p["channel_id"]))
    text = await comparison_text(bot, int(p["comparison_id"]))
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


async def comparison_text(bot: Any, comparison_id: int) -> str:
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
    text = await comparison_text(bot, comparison_id)
    nonce = await run_db(comparisons.comparison_nonce, bot.engine, comparison_id)
    try:
        await message.edit(content=delivery.with_marker(text, nonce) if nonce else text)
    except discord.HTTPException as error:
        log.warning("comparison %s: tally not shown (%s)", comparison_id, error.status)


HANDLERS: dict[str, tuple[Say, str, str | None]] = {
    EventKind.GENERATED: (generation, "an image", "/generate"),
    GENERATION_FAILED: (generation, "an image", "/generate"),
    it.ITERATION_RENDERED: (iteration_pages, "an update", None),
    it.ITERATION_FINISHED: (iteration_finished, "an update", None),
    it.ITERATION_FAILED: (render_failed, "an update", None),
    it.COMPARISON_RENDERED: (comparison, "an update", None),
    it.COMPARISON_FAILED: (render_failed, "an update", None),
}
"""Event kind → (how to say it, what a give-up notice calls it, its source; None: the kind)."""
