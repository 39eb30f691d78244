"""Named datasets: add (unique per guild), list, remove (refused while in use), the contact
sheet and caption samples."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from storage import jobs
from storage.datasets import (
    DatasetRefused,
    add_named_dataset,
    caption_samples,
    contact_sheet,
    delete_folder,
    find_dataset,
    list_datasets,
    record_dataset,
    remove_dataset,
    sheet_layout,
)
from storage.db import session_scope
from storage.ingest import IngestOptions
from storage.models import Dataset, Job
from storage.states import JobState
from tests.drawing_spy import drawn_text, problems, words_drawn
from tests.storage.ingest_support import ingest, png

__all__ = ["drawn_text"]

GUILD = 11


def _result(tmp_path: Path, count: int = 3, seed: int = 0, name: str = "up.zip") -> object:
    entries = [(f"{i}.png", png(seed + i)) for i in range(count)]
    entries += [(f"{i}.txt", f"caption {i}".encode()) for i in range(count)]
    return ingest(tmp_path, entries, IngestOptions(trigger="ohwx"), name=name)


def _job(session, dataset_id: str) -> Job:
    return jobs.enqueue(
        session,
        Job(
            owner_id=1,
            guild_id=GUILD,
            name="j",
            method="lora",
            base_model="tiny",
            dataset_id=dataset_id,
        ),
    )


def test_add_list_find_and_names_unique_per_guild(engine, tmp_path: Path) -> None:
    first, second = _result(tmp_path), _result(tmp_path, seed=50, name="b.zip")
    with session_scope(engine) as session:
        row = add_named_dataset(
            session, first, guild_id=GUILD, name="  cats  ", created_by=5, description="three cats"
        )
        assert (row.name, row.description, row.created_by, row.images) == (
            "cats",
            "three cats",
            5,
            3,
        )
    with session_scope(engine) as session, pytest.raises(DatasetRefused, match="already a"):
        add_named_dataset(session, second, guild_id=GUILD, name="cats")
    with session_scope(engine) as session, pytest.raises(DatasetRefused, match="as `cats`"):
        add_named_dataset(session, first, guild_id=GUILD, name="other")
    with session_scope(engine) as session:
        add_named_dataset(session, second, guild_id=None, name="cats")  # the CLI's namespace
        assert [d.name for d in list_datasets(session, GUILD)] == ["cats"]
        assert [d.name for d in list_datasets(session, None)] == ["cats"]
        assert find_dataset(session, GUILD, "cats").id == first.dataset_id  # type: ignore[union-attr]


def test_unnamed_dataset_from_train_takes_the_name(engine, tmp_path: Path) -> None:
    result = _result(tmp_path)
    with session_scope(engine) as session:
        record_dataset(session, result, guild_id=GUILD, created_by=1)
    with session_scope(engine) as session:
        row = add_named_dataset(session, result, guild_id=GUILD, name="cats", created_by=2)
        assert (row.id, row.name, row.created_by) == (result.dataset_id, "cats", 2)


def test_remove_refused_while_in_use_then_deletes_row_and_folder(engine, tmp_path: Path) -> None:
    result = _result(tmp_path)
    with session_scope(engine) as session:
        row = add_named_dataset(session, result, guild_id=GUILD, name="cats")
        job = _job(session, row.id)
    with session_scope(engine) as session, pytest.raises(DatasetRefused, match="in use"):
        remove_dataset(session, session.get(Dataset, result.dataset_id))  # type: ignore[arg-type]
    with session_scope(engine) as session:
        jobs.transition(session, jobs.get_job(session, job.id), JobState.CANCELLED)  # type: ignore[arg-type]
    with session_scope(engine) as session:
        folder = remove_dataset(session, session.get(Dataset, result.dataset_id))  # type: ignore[arg-type]
    assert delete_folder(folder, tmp_path / "datasets") and not folder.exists()
    with session_scope(engine) as session:
        kept = session.get(Dataset, result.dataset_id)  # a finished job still points to it
        assert kept is not None and kept.name is None
        assert list_datasets(session, GUILD) == []

    other = _result(tmp_path, seed=70, name="c.zip")
    with session_scope(engine) as session:
        row = add_named_dataset(session, other, guild_id=GUILD, name="dogs")
        remove_dataset(session, row)
    with session_scope(engine) as session:
        assert session.get(Dataset, other.dataset_id) is None  # no job: the row goes


def test_delete_folder_only_inside_datasets_dir(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert not delete_folder(outside, tmp_path / "datasets") and outside.exists()


def test_contact_sheet_size_follows_thumbnail_count(tmp_path: Path) -> None:
    result = _result(tmp_path, count=10)
    data, count = contact_sheet(result.path)  # type: ignore[attr-defined]
    assert count == 10
    layout = sheet_layout(10)
    assert (layout.columns, layout.rows) == (8, 2)
    assert Image.open(io.BytesIO(data)).size == layout.size
    small, count = contact_sheet(result.path, most=3, thumb=32)  # type: ignore[attr-defined]
    assert count == 3 and Image.open(io.BytesIO(small)).size == sheet_layout(3, 32).size


def test_contact_sheet_labels_fit_and_read_on_a_phone(tmp_path: Path, drawn_text) -> None:
    result = _result(tmp_path, count=12)
    data, _ = contact_sheet(result.path)  # type: ignore[attr-defined]
    size = Image.open(io.BytesIO(data)).size
    assert len(drawn_text) == 12 and {item.image_size for item in drawn_text} == {size}
    assert problems(drawn_text) == []
    assert words_drawn(drawn_text).split() == [f"{i:04d}" for i in range(1, 13)]


def test_caption_samples_spread_over_concepts(tmp_path: Path) -> None:
    entries = [("concepts.json", json.dumps({"a": "ohwx", "b": "tkxw"}).encode())]
    entries += [
        (f"{folder}/{i}.png", png(i + (20 if folder == "b" else 0)))
        for folder in "ab"
        for i in range(4)
    ]
    result = ingest(tmp_path, entries)
    samples = caption_samples(result.path, per_concept=2)
    assert [s["concept"] for s in samples] == ["ohwx", "ohwx", "tkxw", "tkxw"]
