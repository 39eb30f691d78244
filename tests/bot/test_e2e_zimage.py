"""End to end on Z-Image: `/train lora base_model:tiny-zimage` through the real bot and emulator,
a real worker training the tiny Z-Image model, grids in the thread, votes, the file delivered in
the layout ComfyUI and diffusers read; and what Z-Image cannot do is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from bot.render import VOTE_EMOJI
from storage.db import session_scope
from storage.models import Checkpoint, Job
from tests.bot.conftest import WorkerThread
from tests.bot.e2e_jobs import job_row, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_base_model_choice_names_z_image(emu, atelier) -> None:
    d = emu.default
    handle = await emu.run_autocomplete(d.alice, d.channel, "train lora", "base_model", "zimage")
    choices = await handle.wait_choices()
    assert [c["value"] for c in choices] == ["tiny-zimage"]
    assert "Z-Image" in choices[0]["name"]


async def test_zimage_refuses_an_embedding_in_one_line(
    emu, atelier, bot_engine, dataset_zip
) -> None:
    d = emu.default
    handle = await emu.run_slash_command(
        d.alice,
        d.channel,
        "train embedding",
        {"trigger": "ohwx", "base_model": "tiny-zimage", "preset": "quick-test"},
        attachments={"dataset": ("set.zip", dataset_zip, "application/zip")},
    )
    reply = await handle.wait_followup(1, 20)
    assert reply.ephemeral and "\n" not in reply.content.strip()
    assert "Z-Image models cannot train embeddings" in reply.content
    with session_scope(bot_engine) as session:
        assert session.query(Job).count() == 0  # nothing was queued


async def test_zimage_lora_trains_votes_and_delivers(
    emu, atelier, settings, bot_engine, dataset_zip
) -> None:
    d = emu.default
    job_id, reply = await train(
        emu, d.alice, dataset_zip, base_model="tiny-zimage", steps=20, resolution=64, name="zfig"
    )
    assert job_id, reply.content
    job = job_row(bot_engine, job_id)
    assert job.config["min_snr_gamma"] is None  # the Z-Image side of the preset
    assert job.config["validation"]["scheduler"] == "euler"
    assert job.config["validation"]["guidance"] == 0.0  # Turbo: no CFG
    with WorkerThread(settings, bot_engine):
        await emu.wait_until(lambda: job_row(bot_engine, job_id).state == "awaiting_vote", 240)
        done = await emu.wait_for_message(job.thread_id, "Training done", timeout=20)
    with session_scope(bot_engine) as session:
        ckpts = session.query(Checkpoint).filter_by(job_id=job_id).order_by(Checkpoint.step).all()
    assert len(ckpts) >= 2 and all(c.grid_message_id for c in ckpts)
    grid = emu.message(ckpts[0].grid_message_id)
    assert grid.attachments and VOTE_EMOJI in emu.reactions(grid.id)
    assert done.attachments

    emu.add_reaction(d.alice, ckpts[-1].grid_message_id, VOTE_EMOJI)
    emu.add_reaction(d.bob, ckpts[-1].grid_message_id, VOTE_EMOJI)
    closing = await emu.run_slash_command(d.alice, d.channel, "job finalize", {"job": job_id})
    msg = await closing.wait_followup(1, 30)
    assert f"step {ckpts[-1].step} kept" in msg.content
    final = await emu.wait_for_message(job.thread_id, "The team chose", timeout=20)
    delivered = emu.attachment_bytes(final.id)
    assert delivered == Path(ckpts[-1].path).read_bytes()
    with safe_open(str(ckpts[-1].path), framework="pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    assert meta["modelspec.architecture"] == "Z-Image/lora"
    assert "diffusion_model.layers.0.attention.to_q.lora_down.weight" in keys
    assert "diffusion_model.noise_refiner.0.feed_forward.w1.alpha" in keys
