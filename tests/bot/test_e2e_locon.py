"""End to end on the emulator with a real worker: `/train lora locon:True` adapts the UNet's
conv layers too and delivers them in kohya's LoCon layout (4-D conv downs, `conv_dim` in the
network args, as kohya's and LyCORIS' loaders read it); `change:locon=false` is a run that
differs in that one setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from storage.db import session_scope
from storage.models import Checkpoint
from tests.bot.conftest import make_zip
from tests.bot.e2e_jobs import command, job_row, train_vote_and_deliver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_locon_lora_delivers_its_conv_layers(emu, atelier, settings, bot_engine) -> None:
    job, keys, metadata = await train_vote_and_deliver(
        emu, settings, bot_engine, make_zip(count=4), locon=True
    )
    assert job.config["targets"] == "attention_conv"
    conv_downs = [k for k in keys if "_resnets_" in k and k.endswith("conv1.lora_down.weight")]
    assert conv_downs and all(k.startswith("lora_unet_") for k in conv_downs)
    assert any(k.endswith("attn2_to_k.lora_down.weight") for k in keys)  # attention as before
    assert json.loads(metadata["ss_network_args"])["conv_dim"] == str(job.config["rank"])
    with session_scope(bot_engine) as session:
        winner = session.get(Checkpoint, job_row(bot_engine, job.id).winner_checkpoint_id)
    with safe_open(str(Path(winner.path)), framework="pt") as handle:
        down = handle.get_tensor(conv_downs[0])
        up = handle.get_tensor(conv_downs[0].replace("lora_down", "lora_up"))
    assert down.ndim == 4 and down.shape[2:] == (3, 3) and up.shape[2:] == (1, 1)
    assert down.shape[0] == up.shape[1] == job.config["rank"]

    child = await command(
        emu, emu.default.alice, "train lora", {"from": job.id, "change": "locon=false"}
    )
    assert "changed locon True → False" in child.content, child.content
    child_id = int(child.content.split("Job #")[1].split()[0])
    assert job_row(bot_engine, child_id).config["targets"] == "attention"
