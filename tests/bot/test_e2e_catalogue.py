"""End to end on the emulator: what the operator's catalogue decides for a member's job (a
quantised FLUX.1 model), and `/train lora from: change:keep_weight=…`."""

from __future__ import annotations

import pytest

from storage.settings import BaseModelEntry
from tests.bot.conftest import make_zip
from tests.bot.e2e_jobs import command, job_row, train

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings):
    """The test settings with a FLUX.1 model the operator quantised for a small GPU."""
    quantised = BaseModelEntry(path="builtin:tiny-flux", architecture="flux1", quantize="nf4")
    return settings.model_copy(
        update={"base_models": {**settings.base_models, "flux-small": quantised}}
    )


async def test_quantised_model_and_keep_weight_change_through_the_bot(
    emu, atelier, bot_engine
) -> None:
    d = emu.default
    # a DoRA on the quantised model: one ephemeral line, nothing stored
    refused_id, refused = await train(
        emu, d.alice, make_zip(count=4), base_model="flux-small", dora=True
    )
    assert refused_id == 0 and refused.ephemeral and "\n" not in refused.content
    assert "quantised (nf4)" in refused.content and "train a LoRA" in refused.content

    # a LoRA on it trains over the quantised transformer
    job_id, reply = await train(emu, d.alice, make_zip(count=4), base_model="flux-small")
    assert job_id, reply.content
    assert job_row(bot_engine, job_id).config["quantize_base"] == "nf4"

    # its next version with preservation's weight changed (quick-test does not preserve)
    child_reply = await command(
        emu, d.alice, "train lora", {"from": job_id, "change": "keep_weight=8"}
    )
    assert "changed keep_weight 0 → 8" in child_reply.content, child_reply.content
    child_id = int(child_reply.content.split("Job #")[1].split()[0])
    child = job_row(bot_engine, child_id).config
    assert child["preservation"]["enabled"] and child["preservation"]["weight"] == 8.0
    assert child["quantize_base"] == "nf4"
