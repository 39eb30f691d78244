"""End to end on the emulator with a real worker: `/train lora pivotal:True` trains the LoRA
and the trigger's embedding together, the thread delivers both files with how to use them,
`/models get` links both when they are over the limit, and `change:pivotal=false` is a run
that differs in that one setting."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from storage.db import session_scope
from storage.model_files import EMBEDDING_KEY, model_files
from storage.models import Checkpoint
from tests.bot.conftest import make_zip
from tests.bot.e2e_jobs import command, job_row, train, train_vote_and_deliver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_pivotal_lora_is_delivered_as_two_files(emu, atelier, settings, bot_engine) -> None:
    job, keys, metadata = await train_vote_and_deliver(
        emu, settings, bot_engine, make_zip(count=4), pivotal=True
    )
    assert job.config["pivotal"] is True
    assert metadata[EMBEDDING_KEY] == "ohwx.safetensors"
    assert not any(key in keys for key in ("emb_params", "clip_l"))  # the LoRA file is plain
    with session_scope(bot_engine) as session:
        winner = session.get(Checkpoint, job_row(bot_engine, job.id).winner_checkpoint_id)
    lora, embedding = model_files(Path(winner.path))
    final = next(m for m in emu.timeline(job.thread_id) if "The team chose" in m.content)
    assert [a.filename for a in final.attachments] == [lora.name, "ohwx.safetensors"]
    assert emu.attachment_bytes(final.id, 1) == embedding.read_bytes()
    assert "Two files" in final.content and "`ohwx`" in final.content

    # over the upload limit: one signed link per file, each serving its own bytes
    emu.update_guild(emu.default.guild, attachment_size_limit=16)
    reply = await command(emu, emu.default.bob, "models get", {"model": job.id})
    urls = re.findall(r"(http://\S+)", reply.content)
    assert len(urls) == 2 and "Two files" in reply.content
    async with aiohttp.ClientSession() as http:
        for url, path in zip(urls, (lora, embedding), strict=True):
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == path.read_bytes()

    # the next version without the embedding: one setting changed
    child = await command(
        emu, emu.default.alice, "train lora", {"from": job.id, "change": "pivotal=false"}
    )
    assert "changed pivotal True → False" in child.content, child.content
    child_id = int(child.content.split("Job #")[1].split()[0])
    assert job_row(bot_engine, child_id).config["pivotal"] is False


async def test_pivotal_on_the_character_preset_stores_its_settings(
    emu, atelier, bot_engine
) -> None:
    """`/train lora preset:character pivotal:True` queues a job with the preset's pivotal
    settings (LoRA lr 5e-5, keep weight 8); a `learning_rate` the member gives wins."""
    zip_bytes = make_zip(count=4)
    job_id, reply = await train(emu, emu.default.alice, zip_bytes, preset="character", pivotal=True)
    assert job_id, reply.content
    config = job_row(bot_engine, job_id).config
    assert config["pivotal"] is True and config["learning_rate"] == 5e-5
    assert config["preservation"]["enabled"] and config["preservation"]["weight"] == 8.0

    own_id, own = await train(
        emu, emu.default.alice, zip_bytes, preset="character", pivotal=True, learning_rate=2e-4
    )
    assert own_id, own.content
    own_config = job_row(bot_engine, own_id).config
    assert own_config["learning_rate"] == 2e-4 and own_config["preservation"]["weight"] == 8.0
