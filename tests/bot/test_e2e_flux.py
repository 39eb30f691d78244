"""End to end on FLUX.1: `/train lora base_model:tiny-flux` through the real bot and emulator,
a real worker training the tiny FLUX.1 model, grids in the thread, votes, the file delivered in
the layout ComfyUI / InvokeAI / diffusers read; and what FLUX.1 cannot do is refused in one line.
The steps both transformers share are in `tests.bot.e2e_jobs`."""

from __future__ import annotations

import pytest

from tests.bot.e2e_jobs import base_model_choices, refuse_embedding, train_vote_and_deliver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_base_model_choices_name_the_architecture(emu, atelier) -> None:
    choices = await base_model_choices(emu, "flux")
    assert [c["value"] for c in choices] == ["tiny-flux"]
    assert "FLUX.1" in choices[0]["name"]
    names = {c["value"]: c["name"] for c in await base_model_choices(emu, "tiny")}
    assert "SDXL" in names["tiny-sdxl"] and "SD 1.x" in names["tiny"]


async def test_flux_refuses_an_embedding_in_one_line(emu, atelier, bot_engine, dataset_zip) -> None:
    reply = await refuse_embedding(emu, bot_engine, dataset_zip, "tiny-flux")
    assert "FLUX.1 models cannot train embeddings" in reply.content


async def test_flux_lora_trains_votes_and_delivers(
    emu, atelier, settings, bot_engine, dataset_zip
) -> None:
    job, keys, meta = await train_vote_and_deliver(
        emu, settings, bot_engine, dataset_zip, base_model="tiny-flux", name="fluxfig"
    )
    assert job.config["min_snr_gamma"] is None  # the FLUX.1 side of the preset
    assert job.config["validation"]["scheduler"] == "euler"
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
    assert "lora_unet_single_blocks_0_linear1.alpha" in keys
