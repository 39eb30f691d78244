"""End to end on the emulator: /iterate → curation by two members' votes → dataset v2 →
/train lora from: with one change → /compare grid → lineage in /job status and /models list.

Training is written through `storage.jobs` with a real (untrained, randomised) tiny-model LoRA
file; the worker really renders the candidates and the comparison grid (64 px, 4 steps)."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from storage import jobs
from storage.db import session_scope
from storage.models import (
    Candidate,
    Checkpoint,
    ComparisonVote,
    Dataset,
    DatasetLineage,
    GuildSettings,
    Iteration,
    Job,
    JobChange,
    utcnow,
)
from tests.bot.e2e_jobs import WORKER, command, job_row, png, train
from tests.drawing_spy import drawn_text, problems, words_drawn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["drawn_text"]

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from trainer.adapters import inject_adapter
    from trainer.base_models import load_base_model
    from trainer.config import TrainConfig
    from trainer.export import export_checkpoint

    torch.set_num_threads(1)
    cfg = TrainConfig(
        rank=4, alpha=4.0, steps=20, checkpoint_every=20, trigger="ohwx", resolution=64
    )
    model = load_base_model("builtin:tiny", "sd1", cache_dir=tmp_path_factory.mktemp("cache"))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in inject_adapter(model, cfg):
            param.add_(torch.randn_like(param) * 0.2)
    return export_checkpoint(model, cfg, tmp_path_factory.mktemp("lora"), 20, "it").primary


def finish_job(engine, tmp: Path, job_id: int, lora: Path) -> None:
    """The worker's side of a training, with a real model file as its checkpoint."""
    assert jobs.claim(engine, WORKER).id == job_id
    jobs.start_training(engine, job_id, WORKER, total_steps=20)
    jobs.add_checkpoint(
        engine,
        job_id,
        WORKER,
        Checkpoint(
            job_id=job_id,
            step=20,
            path=str(lora),
            grid_path=str(png(tmp / f"g{job_id}.png", 9)),
            loss=0.1,
        ),
    )
    jobs.finish_training(
        engine,
        job_id,
        WORKER,
        utcnow() + timedelta(hours=1),
        comparison_grid=str(png(tmp / f"c{job_id}.png", 3)),
    )


async def work_once(settings, engine) -> None:
    import torch

    from trainer.worker import Worker

    torch.set_num_threads(1)
    assert await asyncio.to_thread(Worker(settings, engine, "test-worker").run_once)


async def test_iterate_curate_retrain_compare(
    emu, atelier, settings, bot_engine, dataset_zip, tmp_path, lora_file, drawn_text
) -> None:
    d = emu.default
    job_id, _ = await train(emu, d.alice, dataset_zip, name="hero")
    finish_job(bot_engine, tmp_path, job_id, lora_file)
    await command(emu, d.alice, "job finalize", {"job": job_id})
    parent = job_row(bot_engine, job_id)
    assert parent.state == "finalized"

    # 1. candidates rendered by the worker, posted in a new thread, one page of 4; the vote
    #    stays open for the guild's own window
    with session_scope(bot_engine) as session:
        session.add(GuildSettings(guild_id=d.guild.id, vote_window_hours=3.0))
    reply = await command(
        emu,
        d.alice,
        "iterate start",
        {"model": job_id, "count": 4, "contexts": "at a café, in space"},
    )
    assert "Iteration #1 queued" in reply.content, reply.content
    await work_once(settings, bot_engine)
    await emu.wait_for_message(d.channel, "Iteration #1", timeout=15)
    await emu.wait_until(
        lambda: any(t.name.startswith("iterate-1") for t in emu.threads_of(d.channel)), 15
    )
    thread = next(t for t in emu.threads_of(d.channel) if t.name.startswith("iterate-1"))
    page = await emu.wait_for_message(thread, "Page 1/1", timeout=15)
    discard = await emu.wait_for_message(thread, "Page 1: ❌", timeout=15)
    assert len(page.attachments) == 4
    with session_scope(bot_engine) as session:
        deadline = session.exec(select(Iteration)).one().deadline
    assert timedelta(hours=2.9) < deadline - utcnow() <= timedelta(hours=3)
    with session_scope(bot_engine) as session:
        cands = session.exec(select(Candidate).order_by(Candidate.position)).all()
    assert [c.context for c in cands[:2]] == ["at a café", "in space"]
    assert all(c.prompt.startswith("ohwx, ") for c in cands)
    await emu.wait_until(lambda: len(emu.reactions(discard)) == 4, 15)

    # 2. two members vote: net keep for images 1 and 2 only
    for user, emoji, message in (
        (d.alice, "1️⃣", page),
        (d.alice, "2️⃣", page),
        (d.alice, "4️⃣", page),
        (d.bob, "2️⃣", page),
        (d.bob, "4️⃣", discard),
        (d.bob, "3️⃣", discard),
    ):
        emu.add_reaction(user, message, emoji)
    refused = await command(emu, d.bob, "iterate finish", {"iteration": 1})
    assert "owner" in refused.content
    done = await command(emu, d.alice, "iterate finish", {"iteration": 1})
    assert "finished: dataset" in done.content, done.content
    report = await emu.wait_for_message(thread, "Iteration #1 closed", timeout=15)
    assert "2 image(s) kept" in report.content and "**v2**" in report.content
    assert any("at a café" in str(e) for e in report.embeds)
    judged = {f["name"]: f["value"] for f in report.embeds[0].get("fields", [])}
    assert "px, as stored" in judged["Judged at"]  # the version's own size, said so

    with session_scope(bot_engine) as session:
        lineage = session.exec(select(DatasetLineage)).one()
        v2 = session.get(Dataset, lineage.dataset_id)
        assert lineage.parent_id == parent.dataset_id and lineage.version == 2
        original = session.get(Dataset, parent.dataset_id).images
    rows = [
        json.loads(line) for line in (Path(v2.path) / "captions.jsonl").read_text().splitlines()
    ]
    assert v2.images == len(rows) == original + 2
    assert [r["text"] for r in rows[original:]] == [cands[0].prompt, cands[1].prompt]

    # 3. the next version: newest dataset, one setting changed; two changes refused
    two = await command(emu, d.alice, "train lora", {"from": job_id, "change": "rank=8,steps=30"})
    assert "exactly one setting" in two.content
    child_reply = await command(emu, d.alice, "train lora", {"from": job_id, "change": "rank=8"})
    assert "changed rank 4 → 8" in child_reply.content, child_reply.content
    with session_scope(bot_engine) as session:
        child = session.exec(select(Job).where(Job.parent_job_id == job_id)).one()
        change = session.get(JobChange, child.id)
    assert (child.dataset_id, child.config["rank"], change.setting) == (v2.id, 8, "rank")
    assert child.config["steps"] == parent.config["steps"]
    finish_job(bot_engine, tmp_path, child.id, lora_file)
    await command(emu, d.alice, "job finalize", {"job": child.id})

    # 4. side by side, labelled with the setting that differs; 🅰️/🅱️ votes recorded
    reply = await command(emu, d.bob, "compare", {"a": job_id, "b": child.id})
    assert "Comparison #1 queued" in reply.content, reply.content
    drawn_text.clear()
    await work_once(settings, bot_engine)
    assert drawn_text and problems(drawn_text) == []  # every label whole, inside, readable
    assert "rank=8" in words_drawn(drawn_text) and "dataset=v2" in words_drawn(drawn_text)
    grid = await emu.wait_for_message(d.channel, "Comparison #1", timeout=15)
    assert "**rank** 4 vs 8" in grid.content and "dataset" in grid.content
    assert f"#{job_id} hero" in grid.content and f"#{child.id} " in grid.content
    assert len(grid.attachments) == 1
    await emu.wait_until(lambda: len(emu.reactions(grid)) == 2, 10)
    emu.add_reaction(d.carol, grid, "🅱️")

    def voted() -> bool:
        with session_scope(bot_engine) as session:
            return [(v.user_id, v.choice) for v in session.exec(select(ComparisonVote))] == [
                (d.carol.id, "b")
            ]

    await emu.wait_until(voted, 10)

    # 5. lineage
    status = await command(emu, d.bob, "job status", {"job": child.id})
    assert f"from #{job_id}" in status.content and "dataset v2" in status.content
    assert "changed rank 4 → 8" in status.content
    listing = await command(emu, d.bob, "models list")
    assert "dataset v2" in listing.content and "dataset v1" in listing.content
