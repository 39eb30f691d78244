"""`atelier ingest`: exit codes, one `error:` line, JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from atelier.dataset_cli import ingest_cli
from atelier.settings import get_settings
from tests.storage.ingest_support import make_zip, png


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data = tmp_path / "data"
    monkeypatch.setenv("ATELIER_DATA_DIR", str(data))
    monkeypatch.setenv("ATELIER_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def test_refused_zip_exits_2_with_one_error_line(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zip_path = make_zip(tmp_path / "bad.zip", [("../evil.png", png(1))])
    assert ingest_cli([str(zip_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: the zip holds a path that climbs out of its folder ('../evil.png')\n"
    assert list((data_dir / "datasets").iterdir()) == []


def test_missing_file_and_bad_usage(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ingest_cli([str(tmp_path / "nope.zip")]) == 2
    assert capsys.readouterr().err.startswith("error: no such file: ")
    assert ingest_cli(["x.zip", "--method", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --method: invalid choice")
    assert err.count("\n") == 1


def test_json_output(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zip_path = make_zip(tmp_path / "ok.zip", [("a.png", png(1)), ("a.txt", b"a cat")])
    argv = [str(zip_path), "--trigger", "ohwx", "--method", "dora", "--json"]
    assert ingest_cli(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert {"dataset_id", "images", "skipped", "warnings", "captions", "reused"} <= set(summary)
    assert summary["images"] == 1 and summary["skipped"] == []
    assert set(summary["captions"]) >= {"sidecar", "metadata", "prefix_only"}
    assert Path(summary["path"]).parent == data_dir / "datasets"
    assert ingest_cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True


def test_text_output(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zip_path = make_zip(tmp_path / "ok.zip", [("a.png", png(1))])
    assert ingest_cli([str(zip_path), "--method", "embedding"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dataset ") and "1 images accepted" in out
