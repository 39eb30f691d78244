"""Datasets between servers: the same images share one folder, never a row or a name; a
server's `/dataset add` neither takes over nor reveals another server's dataset, and its
`/dataset remove` never deletes a folder another server still uses."""

from __future__ import annotations

from pathlib import Path

from storage import jobs
from storage.datasets import (
    add_named_dataset,
    delete_folder,
    find_dataset,
    list_datasets,
    record_dataset,
    remove_dataset,
)
from storage.db import session_scope
from storage.ingest import IngestOptions
from storage.models import Dataset, Job
from tests.storage.ingest_support import ingest, png

A, B = 11, 22


def _result(tmp_path: Path) -> object:
    entries = [(f"{i}.png", png(i)) for i in range(3)]
    entries += [(f"{i}.txt", f"caption {i}".encode()) for i in range(3)]
    return ingest(tmp_path, entries, IngestOptions(trigger="ohwx"))


def _job(session, guild_id: int, dataset_id: str) -> int:
    job = Job(owner_id=1, guild_id=guild_id, name="j", method="lora", base_model="tiny",
              dataset_id=dataset_id)  # fmt: skip
    return jobs.enqueue(session, job).id  # type: ignore[return-value]


def test_another_servers_unnamed_dataset_is_not_taken_over(engine, tmp_path: Path) -> None:
    result = _result(tmp_path)
    with session_scope(engine) as session:
        a_row = record_dataset(session, result, guild_id=A, created_by=1)  # A's /train zip
        _job(session, A, a_row.id)
    with session_scope(engine) as session:
        b_row = add_named_dataset(session, result, guild_id=B, name="cats", created_by=2)
        assert b_row.id != a_row.id and b_row.guild_id == B
        assert b_row.path == a_row.path  # the bytes are shared
    with session_scope(engine) as session:
        a_again = session.get(Dataset, a_row.id)
        assert a_again.guild_id == A and a_again.name is None and a_again.created_by == 1
        assert [d.name for d in list_datasets(session, B)] == ["cats"]
        assert list_datasets(session, A) == []


def test_a_dataset_named_in_another_server_is_not_mentioned(engine, tmp_path: Path) -> None:
    result = _result(tmp_path)
    with session_scope(engine) as session:
        add_named_dataset(session, result, guild_id=A, name="secret project")
    with session_scope(engine) as session:
        row = add_named_dataset(session, result, guild_id=B, name="dogs")  # no "elsewhere"
        assert row.name == "dogs"
    with session_scope(engine) as session:
        assert find_dataset(session, A, "secret project") is not None
        assert find_dataset(session, B, "secret project") is None


def test_removal_keeps_a_folder_another_server_uses(engine, tmp_path: Path) -> None:
    result = _result(tmp_path)
    datasets_dir = Path(result.path).parent  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        a_row = add_named_dataset(session, result, guild_id=A, name="cats")
        a_job = _job(session, A, a_row.id)
        b_row = add_named_dataset(session, result, guild_id=B, name="cats")
    with session_scope(engine) as session:
        folder = remove_dataset(session, session.get(Dataset, b_row.id))
    assert folder is None and not delete_folder(folder, datasets_dir)
    assert Path(result.path).is_dir()  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        job = jobs.get_job(session, a_job)
        assert Path(session.get(Dataset, job.dataset_id).path).is_dir()
        jobs.transition(session, job, "cancelled")  # type: ignore[arg-type]
    with session_scope(engine) as session:  # the last user of the folder: now it goes
        folder = remove_dataset(session, session.get(Dataset, a_row.id))
    assert delete_folder(folder, datasets_dir) and not Path(result.path).exists()  # type: ignore[attr-defined]
