"""What the bot says: message text and embeds, as pure functions of plain data."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import discord

CONTENT_LIMIT = 2000
VOTE_EMOJI = "👍"
NUMBER_EMOJI = ("1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣", "6️⃣", "7️⃣", "8️⃣", "9️⃣", "🔟")
STATE_LABEL = {
    "queued": "⏳ queued",
    "preparing": "⚙️ preparing (loading model, caching data)",
    "training": "🏋️ training",
    "awaiting_vote": "🗳️ done, waiting for votes",
    "finalized": "✅ finalized",
    "failed": "❌ failed",
    "cancelled": "🛑 cancelled",
}
COLOUR = discord.Colour.blurple()


def truncate(text: str, limit: int = CONTENT_LIMIT) -> str:
    """Fit Discord's content limit, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def progress_bar(step: int, total: int, width: int = 20) -> str:
    """`███████░░░░░░░░░░░░░ 35%` (clamped to 0–100 %)."""
    fraction = 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled) + f" {fraction:.0%}"


def duration(seconds: float | None) -> str:
    """`1h 02m`, `3m 20s`, `45s`; unknown → `?`."""
    if seconds is None or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def timestamp(moment: datetime | str, style: str = "R") -> str:
    """A Discord timestamp tag, e.g. `<t:1700000000:R>` ("in 3 hours")."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return f"<t:{int(moment.timestamp())}:{style}>"


def job_title(job_id: int | None, name: str) -> str:
    return f"Job #{job_id} · {name}"


def status_text(job_id: int | None, name: str, state: str, progress: dict[str, Any]) -> str:
    """The one progress message of a job, edited as training goes."""
    lines = [f"**{job_title(job_id, name)}** — {STATE_LABEL.get(state, state)}"]
    step, total = int(progress.get("step", 0)), int(progress.get("total", 0))
    if total:
        lines.append(f"`{progress_bar(step, total)}` step {step}/{total}")
        facts = []
        if progress.get("loss") is not None:
            facts.append(f"loss {float(progress['loss']):.4f}")
        if progress.get("steps_per_second"):
            facts.append(f"{float(progress['steps_per_second']):.2f} it/s")
        if state == "training" and progress.get("eta_seconds") is not None:
            facts.append(f"ETA {duration(float(progress['eta_seconds']))}")
        if facts:
            lines.append(" · ".join(facts))
    return truncate("\n".join(lines))


def job_card_text(job_id: int | None, name: str, owner_id: int, method: str, base: str) -> str:
    return truncate(
        f"🎨 **{job_title(job_id, name)}** by <@{owner_id}> — {method} on `{base}`.\n"
        "Follow it in the thread below: progress, a grid per checkpoint, then a vote."
    )


def qa_report_embed(
    report: dict[str, Any], position: int, eta_seconds: float | None, trigger: str
) -> discord.Embed:
    """The dataset's QA report, with the job's place in the queue."""
    embed = discord.Embed(title="Dataset report", colour=COLOUR)
    skipped = report.get("skipped") or []
    embed.description = f"**{report.get('images', 0)}** images accepted, {len(skipped)} skipped" + (
        " (same dataset as before, reused)" if report.get("reused") else ""
    )
    embed.add_field(name="Trigger", value=f"`{trigger}`" if trigger else "—")
    embed.add_field(name="Judged at", value=judged_at_text(report))
    buckets = report.get("buckets") or {}
    if buckets:
        text = ", ".join(f"{k} ({n})" for k, n in list(buckets.items())[:6])
        embed.add_field(name="Buckets", value=text)
    captions = ", ".join(f"{k} {n}" for k, n in (report.get("captions") or {}).items() if n)
    embed.add_field(name="Captions", value=captions or "none")
    _list_field(embed, "Skipped", [f"{s['file']}: {s['reason']}" for s in skipped])
    _list_field(embed, "Warnings", list(report.get("warnings") or []))
    _list_field(embed, "Advice", list(report.get("advice") or []))
    _concept_fields(embed, report)
    place = f"#{position} in the queue" if position else "starting now"
    embed.add_field(
        name="Queue", value=f"{place} · starts in about {duration(eta_seconds)}", inline=False
    )
    return embed


def judged_at_text(report: dict[str, Any]) -> str:
    """Which size (and base model) the report's buckets and size advice assume."""
    judged = report.get("judged_at") or {}
    if judged:
        base = f" on `{judged['base_model']}`" if judged.get("base_model") else ""
        return f"{judged['resolution']} px{base} (this job's size and base model)"
    size = report.get("resolution") or 512
    return f"{size} px, as stored; each job's report re-checks at its own size and base model"


def _list_field(embed: discord.Embed, name: str, items: Sequence[str], most: int = 5) -> None:
    if not items:
        return
    lines = [f"• {item}" for item in items[:most]]
    if len(items) > most:
        lines.append(f"… and {len(items) - most} more")
    embed.add_field(name=name, value=truncate("\n".join(lines), 1024), inline=False)


def checkpoint_caption(
    step: int,
    total: int,
    loss: float | None,
    number: int | None,
    heldout: float | None = None,
    previous_heldout: float | None = None,
    leakage: float | None = None,
) -> str:
    label = f" (#{number} on the final grid)" if number else ""
    loss_text = f", loss {loss:.4f}" if loss is not None else ""
    held_text = f", {heldout_text(heldout, previous_heldout)}" if heldout is not None else ""
    return (
        f"🖼️ Checkpoint at step **{step}/{total}**{loss_text}{held_text}{label}. "
        f"React {VOTE_EMOJI} if you like it.{leakage_text(leakage)}"
    )


def leakage_text(change: float | None) -> str:
    """The leakage number under a grid, in words (trainer.leakage documents the metric)."""
    if change is None:
        return ""
    return (
        f"\nOutside the trigger, images changed by **{change:.1f}/255** "
        "(mean pixel difference from the base model, same prompts and seeds; 0 = untouched)."
    )


def suggestion_text(steps: Sequence[int], suggested: int | None) -> str:
    """Which numbered checkpoint the trainer suggests; the vote still decides."""
    if suggested is None or suggested not in steps:
        return ""
    index = list(steps).index(suggested)
    return (
        f"⭐ Suggested: {NUMBER_EMOJI[index]} step {suggested}, the best balance of held-out "
        "loss and change outside the trigger. The team's votes decide."
    )


def heldout_text(heldout: float, previous: float | None) -> str:
    """`held-out loss 0.1234 ▲ +0.0100` (rose: worse) or `▼ -0.0100` (fell) vs the previous
    checkpoint; no arrow for the first one."""
    text = f"held-out loss {heldout:.4f}"
    if previous is None:
        return text
    delta = heldout - previous
    arrow = "▲" if delta > 0 else "▼" if delta < 0 else "="
    return f"{text} {arrow} {delta:+.4f}"


def overfit_notice(step: int | None) -> str:
    """Said next to the vote when the held-out loss turned up while training loss fell."""
    if step is None:
        return ""
    return (
        f"⚠️ Checkpoints after step {step} may be overfitting: held-out loss rose twice "
        "while training loss fell."
    )


def comparison_text(steps: Sequence[int], deadline: datetime | str) -> str:
    """Below the comparison grid: which number is which step, and when the vote ends."""
    keys = " · ".join(f"{NUMBER_EMOJI[i]} step {step}" for i, step in enumerate(steps))
    return truncate(
        f"🏁 Training done. Vote for the checkpoints you like: {keys}\n"
        f"The vote closes {timestamp(deadline)}; the owner or a manager can close it earlier "
        "with `/job finalize`."
    )


def failure_text(kind: str, payload: dict[str, Any], owner_id: int) -> str:
    """Plain words for failed / cancelled / requeued events."""
    step = payload.get("step")
    at = f" at step {step}" if step else ""
    if kind == "failed":
        return truncate(
            f"❌ <@{owner_id}> training stopped{at}: {payload.get('reason', '?')}. "
            "`/job retry` resumes from the newest checkpoint."
        )
    if kind == "cancelled":
        by = payload.get("by")
        who = f"<@{by}>" if by else "an operator"
        return f"🛑 Job cancelled{at} by {who}."
    if payload.get("lost_worker"):
        return (
            f"🔁 The worker training this job was lost (it stopped answering){at}; the job "
            "is back in the queue and will resume from its newest checkpoint."
        )
    if payload.get("by"):
        return f"🔁 <@{payload['by']}> queued the job again; it resumes from step {step or 0}."
    return f"🔁 The job went back to the queue{at} ({payload.get('reason', 'worker restart')})."


def resumed_text(step: int) -> str:
    return f"▶️ Training resumed from the checkpoint at step {step}."


def generated_text(
    user_id: int, prompt: str, weight: float | None = None, seed: int | None = None
) -> str:
    """A `/generate` result: who asked, the prompt, and what reproduces it."""
    settings = [
        f"weight {weight:g}" if weight is not None else "",
        f"seed {seed}" if seed is not None else "",
    ]
    shown = ", ".join(s for s in settings if s)
    return truncate(f"🖌️ <@{user_id}>: {prompt}" + (f" ({shown})" if shown else ""))


def generate_queued_text(numbers: list[int], weights: list[float], seed: int) -> str:
    """The reply to `/generate`: what was queued and the seed that reproduces it."""
    again = f"`seed:{seed}` with the same prompt and weight draws the same image again."
    if len(numbers) == 1:
        return (
            f"Queued image #{numbers[0]} (weight {weights[0]:g}, seed {seed}); it appears in "
            f"this channel when a worker renders it. {again}"
        )
    listed = ", ".join(f"{w:g}" for w in weights)
    return (
        f"Queued images #{numbers[0]}–#{numbers[-1]}: weights {listed}, all with seed {seed}, "
        f"so they differ only by the weight; they appear in this channel when a worker "
        f"renders them."
    )


def generation_failed_text(user_id: int, reason: str) -> str:
    return truncate(
        f"⚠️ <@{user_id}> I could not make your image: {reason or 'unknown error'}. "
        "Try `/generate` again; if it keeps failing, tell a server admin."
    )


def finalized_text(
    payload: dict[str, Any],
    links: Sequence[str] = (),
    expires: datetime | None = None,
    names: Sequence[str] = (),
) -> str:
    """The vote's outcome, and how to get and use the model's file(s): several when a pivotal
    LoRA brings the trigger's embedding (`names`: the files, model first)."""
    votes = payload.get("votes") or {}
    tally = ", ".join(f"step {s}: {n}" for s, n in votes.items()) or "none"
    by = payload.get("by")
    closer = f" (closed by <@{by}>)" if by else ""
    text = (
        f"🏆 The team chose step **{payload.get('step')}**{closer}: {payload.get('reason')}.\n"
        f"Votes: {tally}."
    )
    text += usage_line(names)
    if links:
        until = f", valid until {timestamp(expires, 'f')}" if expires else ""
        text += f"\nDownload (too large for Discord): {' · '.join(links)}{until}"
    return truncate(text)


def usage_line(names: Sequence[str]) -> str:
    """For a pivotal LoRA's two files (model first), a new line on how to use them; else ""."""
    return "\n" + pair_usage(names[0], names[1]) if len(names) > 1 else ""


def pair_usage(model: str, embedding: str) -> str:
    """How to use a pivotal LoRA: both files, the embedding named in the prompt."""
    word = embedding.removesuffix(".safetensors")
    return (
        f"Two files, use both: the LoRA `{model}` and the trigger's embedding `{embedding}` "
        f"(embeddings folder; write `{word}` in the prompt, ComfyUI `embedding:{word}`)."
    )


def announcement_text(
    name: str, owner_id: int, trigger: str, base_model: str, method: str, link: str | None
) -> str:
    text = (
        f"📦 New model **{name}** ({method}) by <@{owner_id}> — trigger `{trigger or '—'}`, "
        f"base model `{base_model}`."
    )
    if link:
        text += f"\nDownload: {link}"
    return truncate(text)


def undeliverable_text(
    job_id: int | None, what: str, reason: str, tries: int, kept_link: str | None = None
) -> str:
    """Said when the outbox gives up on a message: what, why, and where the file still is."""
    whose = f" of job #{job_id}" if job_id else ""
    text = f"⚠️ I could not post {what}{whose} after {tries} tries: {reason}."
    if kept_link:
        text += f" The model file is kept; download it here (the link expires): {kept_link}"
    elif what == "the model file":
        text += " The model file is kept on the server; ask an operator for it."
    return truncate(text)


def permission_problem(owner_id: int, what: str, missing: str) -> str:
    return truncate(
        f"⚠️ <@{owner_id}> I could not post {what} here: I am missing the **{missing}** "
        "permission in this channel. Ask a server admin to grant it; I will keep trying."
    )


def queue_lines(rows: Sequence[dict[str, Any]]) -> str:
    """`/jobs`: one line per job."""
    if not rows:
        return "The queue is empty."
    lines = []
    for row in rows:
        place = f"#{row['position']}" if row.get("position") else "▶"
        lines.append(
            f"{place} **{job_title(row['id'], row['name'])}** by <@{row['owner_id']}> — "
            f"{STATE_LABEL.get(row['state'], row['state'])}"
            + (f" · step {row['step']}/{row['total']}" if row.get("total") else "")
            + (f" · ETA {duration(row['eta'])}" if row.get("eta") is not None else "")
        )
    return truncate("\n".join(lines))


# --- datasets ---------------------------------------------------------------------------------


def _concept_fields(embed: discord.Embed, report: dict[str, Any]) -> None:
    """Images and captions per concept, and the held-out split (multi-concept datasets)."""
    lines = []
    for concept in (report.get("concepts") or [])[:10]:
        caps = concept.get("captions") or {}
        captioned = int(caps.get("sidecar", 0)) + int(caps.get("metadata", 0))
        line = (
            f"`{concept.get('trigger') or '—'}`: {concept.get('images', 0)} images × "
            f"{concept.get('repeats', 1)}, {captioned} captioned"
        )
        if concept.get("missing_trigger"):
            line += f", trigger added to {concept['missing_trigger']}"
        if concept.get("held_out"):
            line += f", {concept['held_out']} held out"
        lines.append(f"• {line}")
    if lines:
        embed.add_field(name="Concepts", value=truncate("\n".join(lines), 1024), inline=False)
    held = report.get("held_out") or []
    if held:
        embed.add_field(
            name="Held out",
            value=f"{len(held)} images kept out of training to "
            "measure the held-out loss (overfitting)",
            inline=False,
        )
    elif report.get("held_out_note"):
        embed.add_field(
            name="Held out", value=truncate(str(report["held_out_note"]), 1024), inline=False
        )


def dataset_embed(
    name: str,
    description: str | None,
    report: dict[str, Any],
    created_by: int | None,
    samples: Sequence[dict[str, Any]] = (),
    thumbnails: tuple[int, int] | None = None,
) -> discord.Embed:
    """`/dataset add` and `/dataset show`: the QA report of a named dataset, caption samples."""
    embed = discord.Embed(title=f"Dataset {name}"[:256], colour=COLOUR)
    skipped = report.get("skipped") or []
    lines = [description] if description else []
    lines.append(
        f"**{report.get('images', 0)}** images, {len(skipped)} skipped"
        + (f" · added by <@{created_by}>" if created_by else "")
    )
    if thumbnails and thumbnails[0] < thumbnails[1]:
        lines.append(f"Thumbnails: the first {thumbnails[0]} of {thumbnails[1]}.")
    embed.description = truncate("\n".join(lines), 4000)
    trigger = str(report.get("trigger") or "")
    embed.add_field(name="Trigger", value=f"`{trigger}`" if trigger else "—")
    embed.add_field(name="Judged at", value=judged_at_text(report))
    buckets = report.get("buckets") or {}
    if buckets:
        embed.add_field(
            name="Buckets", value=", ".join(f"{k} ({n})" for k, n in list(buckets.items())[:6])
        )
    captions = ", ".join(f"{k} {n}" for k, n in (report.get("captions") or {}).items() if n)
    embed.add_field(name="Captions", value=captions or "none")
    _concept_fields(embed, report)
    _list_field(embed, "Skipped", [f"{s['file']}: {s['reason']}" for s in skipped])
    _list_field(embed, "Warnings", list(report.get("warnings") or []))
    _list_field(embed, "Advice", list(report.get("advice") or []))
    sample_lines = []
    for row in samples:
        index = str(row.get("file", "")).rsplit("/", 1)[-1].rsplit(".", 1)[0]
        concept = f"[{row['concept']}] " if row.get("concept") else ""
        sample_lines.append(f"`{index}` {concept}{row.get('text') or '(no caption)'}"[:200])
    if sample_lines:
        embed.add_field(
            name="Caption samples", value=truncate("\n".join(sample_lines), 1024), inline=False
        )
    return embed


def dataset_list_text(rows: Sequence[dict[str, Any]]) -> str:
    """`/dataset list`: one line per dataset."""
    if not rows:
        return "No datasets yet; store one with `/dataset add`."
    lines = []
    for row in rows:
        line = f"• **{row['name']}** — {row['images']} images"
        if row.get("created_by"):
            line += f", by <@{row['created_by']}>"
        if row.get("description"):
            line += f": {row['description'][:100]}"
        lines.append(line)
    return truncate("\n".join(lines))
