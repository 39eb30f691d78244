"""End to end: `/dataset add|list|show|remove`, `/train … dataset_name:`, and the held-out /
overfitting lines in the job's thread. The worker's side is written straight through
`storage.jobs` (no training)."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from storage import jobs
from storage.datasets import sheet_layout
from storage.db import session_scope
from storage.models import Checkpoint, Dataset, utcnow
from tests.bot.e2e_jobs import WORKER, command, job_row, png, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


async def add_dataset(emu, user, name: str, zip_bytes: bytes, **options) -> object:
    handle = await emu.run_slash_command(
        user,
        emu.default.channel,
        "dataset add",
        {"name": name, **options},
        attachments={"dataset": ("set.zip", zip_bytes, "application/zip")},
    )
    return await handle.wait_followup(1, 30)


def dataset_rows(engine) -> list[Dataset]:
    with session_scope(engine) as session:
        return list(session.query(Dataset).all())


async def test_dataset_add_list_show_train_and_remove(
    emu, atelier, bot_engine, settings, dataset_zip
) -> None:
    d = emu.default
    reply = await add_dataset(
        emu, d.alice, "cats", dataset_zip, trigger="ohwx", description="six red figures"
    )
    assert "Stored dataset `cats` (6 images)" in reply.content, reply.content
    assert reply.ephemeral and reply.embeds[0]["title"] == "Dataset cats"
    (row,) = dataset_rows(bot_engine)
    assert (row.name, row.guild_id, row.created_by, row.description) == (
        "cats",
        d.guild.id,
        d.alice.id,
        "six red figures",
    )
    taken = await add_dataset(emu, d.bob, "cats", dataset_zip)
    assert "already a dataset named `cats`" in taken.content

    listing = await command(emu, d.bob, "dataset list")
    assert "**cats** — 6 images" in listing.content and "six red figures" in listing.content

    shown = await command(emu, d.bob, "dataset show", {"name": "cats"})
    assert not shown.ephemeral and len(shown.attachments) == 1
    sheet = Image.open(io.BytesIO(shown.attachments[0].data))
    assert sheet.format == "PNG" and sheet.size == sheet_layout(6).size
    embed = shown.embeds[0]
    assert embed["title"] == "Dataset cats" and "six red figures" in embed["description"]
    fields = {f["name"]: f["value"] for f in embed.get("fields", [])}
    assert "a red figure number 0" in fields["Caption samples"]
    assert "Held out" in fields
    # a stored dataset says which size it was judged at (the default: nobody asked for one)
    assert "512 px" in fields["Judged at"] and "each job" in fields["Judged at"]
    assert "512x512 (6)" in fields["Buckets"]

    choices = await (
        await emu.run_autocomplete(d.alice, d.channel, "train lora", "dataset_name", "ca")
    ).wait_choices()
    assert [c["value"] for c in choices] == ["cats"]
    mismatch = await command(
        emu,
        d.alice,
        "train lora",
        {"dataset_name": "cats", "trigger": "zzz", "preset": "quick-test", "steps": 20},
    )
    assert "stored with the trigger `ohwx`" in mismatch.content
    reply = await command(
        emu,
        d.alice,
        "train lora",
        {"dataset_name": "cats", "trigger": "ohwx", "preset": "quick-test", "steps": 20},
    )
    match = re.search(r"Job #(\d+)", reply.content)
    assert match, reply.content
    job = job_row(bot_engine, int(match.group(1)))
    assert job.dataset_id == row.id and job.config["dataset"] == row.path
    # the job's thread judges the 96-px images at the job's 64 px on `tiny`, not at 512
    report = emu.timeline(job.thread_id)[0].embeds[0]
    assert report["title"] == "Dataset report"
    judged = {f["name"]: f["value"] for f in report.get("fields", [])}
    assert "64 px" in judged["Judged at"] and "`tiny`" in judged["Judged at"]
    assert "64x64 (6)" in judged["Buckets"] and "512" not in str(report)
    assert len(dataset_rows(bot_engine)) == 1  # no new dataset row

    refused = await command(emu, d.bob, "dataset remove", {"name": "cats"})
    assert "Only its creator" in refused.content
    in_use = await command(emu, d.alice, "dataset remove", {"name": "cats"})
    assert f"in use by job(s) #{job.id}" in in_use.content
    assert Path(row.path).is_dir() and dataset_rows(bot_engine)[0].name == "cats"

    jobs.request_cancel(bot_engine, job.id, d.alice.id)  # type: ignore[arg-type]
    done = await command(emu, d.carol, "dataset remove", {"name": "cats"})  # a manager
    assert "Removed dataset `cats`" in done.content
    assert not Path(row.path).exists()
    assert [r.name for r in dataset_rows(bot_engine)] == [None]  # kept for the cancelled job
    empty = await command(emu, d.alice, "dataset list")
    assert "No datasets yet" in empty.content
    gone = await command(
        emu,
        d.alice,
        "train lora",
        {"dataset_name": "cats", "trigger": "ohwx", "preset": "quick-test", "steps": 20},
    )
    assert "no dataset named `cats`" in gone.content


async def test_heldout_loss_trend_and_overfit_notice_in_the_thread(
    emu, atelier, bot_engine, dataset_zip, tmp_path
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip, name="overfit")
    assert jobs.claim(bot_engine, WORKER) is not None
    jobs.start_training(bot_engine, job_id, WORKER, total_steps=30)
    for step, held in ((10, 0.20), (20, 0.25), (30, 0.15)):
        model = tmp_path / f"m{step}.safetensors"
        model.write_bytes(b"w")
        jobs.add_checkpoint(
            bot_engine,
            job_id,
            WORKER,
            Checkpoint(
                job_id=job_id,
                step=step,
                path=str(model),
                grid_path=str(png(tmp_path / f"g{step}.png", step)),
                loss=0.1,
            ),
            heldout_loss=held,
        )
    jobs.finish_training(
        bot_engine,
        job_id,
        WORKER,
        utcnow() + timedelta(hours=1),
        comparison_grid=str(png(tmp_path / "cmp.png", 7)),
        overfit_after=10,
    )
    thread = job_row(bot_engine, job_id).thread_id
    done = await emu.wait_for_message(thread, "Training done", timeout=10)
    assert (
        "Checkpoints after step 10 may be overfitting: held-out loss rose twice while "
        "training loss fell."
    ) in done.content
    captions = [m.content for m in emu.timeline(thread) if "Checkpoint at step" in m.content]
    assert len(captions) == 3
    assert "held-out loss 0.2000." in captions[0]  # the first: no trend
    assert "held-out loss 0.2500 ▲ +0.0500" in captions[1]
    assert "held-out loss 0.1500 ▼ -0.1000" in captions[2]
