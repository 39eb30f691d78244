"""End to end on Z-Image: `/train lora base_model:tiny-zimage` through the real bot and emulator,
a real worker training the tiny Z-Image model, grids in the thread, votes, the file delivered in
the layout ComfyUI and diffusers read; and what Z-Image cannot do is refused in one line. The
steps both transformers share are in `tests.bot.e2e_jobs`."""

from __future__ import annotations

import pytest

from tests.bot.e2e_jobs import base_model_choices, refuse_embedding, train_vote_and_deliver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_base_model_choice_names_z_image(emu, atelier) -> None:
    choices = await base_model_choices(emu, "zimage")
    assert [c["value"] for c in choices] == ["tiny-zimage"]
    assert "Z-Image" in choices[0]["name"]


async def test_zimage_refuses_an_embedding_in_one_line(
    emu, atelier, bot_engine, dataset_zip
) -> None:
    reply = await refuse_embedding(emu, bot_engine, dataset_zip, "tiny-zimage")
    assert "Z-Image models cannot train embeddings" in reply.content


async def test_zimage_lora_trains_votes_and_delivers(
    emu, atelier, settings, bot_engine, dataset_zip
) -> None:
    job, keys, meta = await train_vote_and_deliver(
        emu, settings, bot_engine, dataset_zip, base_model="tiny-zimage", name="zfig"
    )
    assert job.config["min_snr_gamma"] is None  # the Z-Image side of the preset
    assert job.config["validation"]["scheduler"] == "euler"
    assert job.config["validation"]["guidance"] == 0.0  # Turbo: no CFG
    assert meta["modelspec.architecture"] == "Z-Image/lora"
    assert "diffusion_model.layers.0.attention.to_q.lora_down.weight" in keys
    assert "diffusion_model.noise_refiner.0.feed_forward.w1.alpha" in keys
