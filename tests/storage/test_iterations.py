"""Iterations: curation by net vote into a new dataset version, lineage, config diffs."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from storage import comparisons, lineage
from storage import iterations as it
from storage.datasets import record_dataset
from storage.db import session_scope
from storage.ingest import IngestOptions, ingest_zip
from storage.models import Checkpoint, Dataset, Job, utcnow
from storage.settings import Limits
from tests.bot.conftest import make_zip


def test_config_diff_and_lineage_text() -> None:
    a = {"rank": 4, "steps": 60, "dataset": "/a", "validation": {"steps": 4, "seeds": [1]}}
    b = {"rank": 16, "steps": 60, "dataset": "/b", "validation": {"steps": 8, "seeds": [1]}}
    assert comparisons.config_diff(a, b) == {"rank": [4, 16], "validation.steps": [4, 8]}
    text = lineage.lineage_text(
        {
            "parents": [3, 1],
            "dataset_id": "abcdef123456",
            "dataset_version": 2,
            "setting": "rank",
            "old": 4,
            "new": 16,
        }
    )
    assert text == "from #3 ← #1 · dataset v2 `abcdef12` · changed rank 4 → 16"


def test_curation_builds_the_next_version(tmp_path: Path, sqlite_url: str) -> None:
    from storage.db import make_engine
    from storage.migrate import upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    datasets = tmp_path / "datasets"
    (tmp_path / "set.zip").write_bytes(make_zip(4))
    result = ingest_zip(
        tmp_path / "set.zip", datasets, IngestOptions(trigger="ohwx", resolution=256), Limits()
    )
    with session_scope(engine) as session:
        dataset = record_dataset(session, result)
        job = Job(
            owner_id=1,
            name="m",
            method="lora",
            base_model="tiny",
            dataset_id=dataset.id,
            config={"trigger": "ohwx", "rank": 4},
            state="finalized",
        )
        session.add(job)
        session.flush()
        ckpt = Checkpoint(job_id=job.id, step=10, path="/x.safetensors")
        session.add(ckpt)
        session.flush()
        job.winner_checkpoint_id = ckpt.id
        job_id = job.id
    with session_scope(engine) as session, pytest.raises(it.IterationRefused):
        it.request_iteration(
            session, guild_id=None, channel_id=1, user_id=1, job_id=job_id, count=41
        )
    with session_scope(engine) as session:
        iteration_id = it.request_iteration(
            session, guild_id=None, channel_id=1, user_id=1, job_id=job_id, count=3
        ).id
    rows = []
    for index in range(3):
        path = tmp_path / f"c{index}.png"
        Image.new("RGB", (64, 64), (50 * index, 200, 30)).save(path)
        rows.append(
            {
                "prompt": f"ohwx, ctx{index}, photo",
                "context": f"ctx{index}",
                "style": "photo",
                "seed": index,
                "image_path": str(path),
            }
        )
    it.complete_iteration(engine, iteration_id, rows, utcnow() + timedelta(hours=1))
    cands = it.candidates(engine, iteration_id)
    for cand, votes in zip(cands, [(1, 1), (1, -1), (-1,)], strict=True):
        for user, value in enumerate(votes):
            it.record_candidate_vote(engine, cand.id, user, value, True)
    new = it.finish_iteration(engine, iteration_id, datasets, Limits(), by_user=1)
    assert new is not None and new.images == 5
    captions = [
        json.loads(line)["text"]
        for line in (Path(new.path) / "captions.jsonl").read_text().splitlines()
    ]
    assert captions[4:] == ["ohwx, ctx0, photo"]
    with pytest.raises(it.NothingToFinish):
        it.finish_iteration(engine, iteration_id, datasets, Limits())
    with session_scope(engine) as session:
        assert lineage.newest_dataset(session, dataset.id).id == new.id
        assert lineage.dataset_version(session, new.id) == 2
        assert lineage.context_spread(session, new.id) == {"original": 4, "ctx0": 1}
        assert session.get(Dataset, new.id) is not None


def test_next_version_keeps_each_images_concept_and_repeats(tmp_path: Path) -> None:
    import io
    import zipfile

    from storage.models import Candidate

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder, count in (("2_mira", 3), ("1_zed", 2)):
            for index in range(count):
                png = io.BytesIO()
                Image.new("RGB", (64, 64), (40 * index, 90, len(folder) * 20)).save(png, "PNG")
                archive.writestr(f"{folder}/img{index}.png", png.getvalue())
    (tmp_path / "set.zip").write_bytes(buffer.getvalue())
    datasets = tmp_path / "datasets"
    parent = ingest_zip(
        tmp_path / "set.zip", datasets, IngestOptions(trigger="ohwx", resolution=256), Limits()
    )
    kept_image = tmp_path / "kept.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(kept_image)
    kept = [
        Candidate(
            iteration_id=1,
            index=0,
            prompt="mira, on a beach, photo",
            context="beach",
            style="photo",
            seed=1,
            image_path=str(kept_image),
        )
    ]
    version = it.build_version(parent.path, kept, datasets, Limits(), "ohwx", "lora")

    def concepts(folder: Path) -> list[tuple[str, int]]:
        rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
        return sorted((row.get("concept"), row.get("repeats", 1)) for row in rows)

    assert concepts(version.path) == sorted([*concepts(parent.path), ("ohwx", 1)])
    assert version.dataset_id != parent.dataset_id
