"""A stored report judged again at a job's size: the same numbers ingest gives at that size."""

from __future__ import annotations

from pathlib import Path

from storage.ingest import IngestOptions
from storage.ingest.judged import judge_at, judge_folder, stored_sizes
from tests.storage.ingest_support import ingest, png


def _ingest(tmp_path: Path, resolution: int, side: int = 96) -> object:
    entries = [(f"{i}.png", png(i, size=(side, side))) for i in range(12)]
    options = IngestOptions(trigger="ohwx", resolution=resolution)
    return ingest(tmp_path, entries, options, name=f"up{resolution}.zip")


def test_report_at_the_jobs_size_matches_an_ingest_at_that_size(tmp_path: Path) -> None:
    at_512 = _ingest(tmp_path, 512).to_json()  # type: ignore[attr-defined]
    assert at_512["buckets"] == {"512x512": 12}
    assert any("smaller than the 512-px" in a for a in at_512["advice"])

    at_64 = _ingest(tmp_path, 64).to_json()  # type: ignore[attr-defined]
    judged = judge_folder(at_512, Path(at_512["path"]), 64, "toy")
    assert judged["judged_at"] == {"resolution": 64, "base_model": "toy"}
    for key in ("buckets", "advice", "resolution"):
        assert judged[key] == at_64[key], key
    assert judged["upscaled"] == [] and not any("512" in a for a in judged["advice"])
    # and back: judged at 512 again, the stored report's own numbers
    again = judge_at(at_64, stored_sizes(Path(at_64["path"])), 512, "tiny")
    assert again["buckets"] == at_512["buckets"] and again["advice"] == at_512["advice"]
    assert again["upscaled"] == [f"{i:04d}" for i in range(1, 13)]


def test_missing_folder_keeps_the_stored_report(tmp_path: Path) -> None:
    report = {"images": 3, "resolution": 512, "buckets": {"512x512": 3}}
    assert judge_folder(report, tmp_path / "gone", 64, "toy") == report
