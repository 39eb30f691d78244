"""`atelier dataset add|list|show|remove`: a round trip in-process, and the refusals (exit 2,
one `error:` line)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from atelier.cli import main
from atelier.settings import get_settings
from storage import jobs
from storage.datasets import find_dataset
from storage.db import make_engine, session_scope
from storage.models import Job
from tests.datasets import write_dataset_zip


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for key in [k for k in os.environ if k.startswith("ATELIER_")]:
        monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("ATELIER_DATA_DIR", str(data))
    monkeypatch.setenv("ATELIER_CONFIG", str(tmp_path / "none.toml"))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["dataset", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_and_refusals(data_dir: Path, tmp_path: Path, capsys) -> None:
    zip_path = write_dataset_zip(tmp_path / "set.zip", count=6)
    code, out, err = run(
        capsys,
        "add",
        str(zip_path),
        "--name",
        "shapes",
        "--trigger",
        "ohwx",
        "--description",
        "six shapes",
        "--json",
    )
    assert code == 0, err
    added = json.loads(out)
    assert (added["name"], added["images"], added["description"]) == ("shapes", 6, "six shapes")
    assert Path(added["path"]).is_dir()

    code, _, err = run(capsys, "add", str(zip_path), "--name", "shapes")
    assert code == 2 and err.strip() == "error: there is already a dataset named 'shapes'"
    code, _, err = run(capsys, "add", str(tmp_path / "nope.zip"), "--name", "x")
    assert code == 2 and err.startswith("error: no such file") and err.count("\n") == 1

    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["shapes"]
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.startswith("shapes\t6 images")

    code, out, _ = run(capsys, "show", "shapes", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["id"] == added["id"] and shown["report"]["trigger"] == "ohwx"
    assert len(shown["caption_samples"]) == 2
    code, out, _ = run(capsys, "show", "shapes")
    assert code == 0 and "6 images, 0 skipped" in out and "six shapes" in out
    code, _, err = run(capsys, "show", "missing")
    assert code == 2 and err.strip() == "error: no dataset named 'missing'"

    engine = make_engine(get_settings().db_url)
    with session_scope(engine) as session:
        job = jobs.enqueue(
            session,
            Job(owner_id=1, name="j", method="lora", base_model="tiny", dataset_id=added["id"]),
        )
    code, _, err = run(capsys, "remove", "shapes")
    assert code == 2 and "in use by job(s) #" in err and err.count("\n") == 1
    jobs.request_cancel(engine, job.id, 1)  # type: ignore[arg-type]
    code, out, _ = run(capsys, "remove", "shapes")
    assert code == 0 and "removed dataset shapes" in out
    assert not Path(added["path"]).exists()
    with session_scope(engine) as session:
        assert find_dataset(session, None, "shapes") is None
    engine.dispose()
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.strip() == "no datasets"


def test_usage_error_is_one_line(data_dir: Path, capsys) -> None:
    code, _, err = run(capsys, "add")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
