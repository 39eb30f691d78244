"""Several concepts in one zip (concepts.json/.toml, kohya `N_name` folders); held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.ingest import IngestError, IngestOptions, render_report_text
from storage.ingest.concepts import kohya_concept
from storage.ingest.split import heldout_files
from tests.storage.ingest_support import captions, ingest, png


def test_concepts_json_sets_trigger_repeats_and_prefix(tmp_path: Path) -> None:
    concepts = {
        "alice": {"trigger": "ohwx woman", "repeats": 3, "caption_prefix": "photo"},
        "bob": "tkxw man",
    }
    entries = [
        ("concepts.json", json.dumps(concepts).encode()),
        ("alice/1.png", png(1)),
        ("alice/1.txt", b"red dress"),
        ("alice/2.png", png(2)),
        ("bob/1.png", png(3)),
        ("bob/1.txt", b"tkxw man, smiling"),
        ("loose.png", png(4)),
    ]
    result = ingest(tmp_path, entries, IngestOptions(trigger="job"))
    rows = captions(result)
    assert [(r["concept"], r["repeats"], r["text"]) for r in rows] == [
        ("ohwx woman", 3, "ohwx woman, photo, red dress"),
        ("ohwx woman", 3, "ohwx woman, photo"),
        ("tkxw man", 1, "tkxw man, smiling"),  # trigger already there: not added twice
        ("job", 1, "job"),  # outside every concept folder: the job's trigger, as before
    ]
    report = result.report
    stats = {c.trigger: c for c in report.concepts}
    assert stats["ohwx woman"].images == 2 and stats["ohwx woman"].repeats == 3
    assert stats["ohwx woman"].per_epoch == 6
    assert stats["ohwx woman"].captions["sidecar"] == 1
    assert stats["ohwx woman"].captions["prefix_only"] == 1
    assert stats["ohwx woman"].missing_trigger == 1  # 'red dress' had no trigger
    assert stats["tkxw man"].missing_trigger == 0
    assert stats["job"].images == 1
    text = render_report_text(report)
    assert "concept 'ohwx woman': 2 images × 3 repeats" in text
    saved = json.loads((result.path / "report.json").read_text())
    assert {c["trigger"] for c in saved["concepts"]} == {"ohwx woman", "tkxw man", "job"}
    meta = json.loads((result.path / "dataset.json").read_text())
    assert meta["concepts"] == ["job", "ohwx woman", "tkxw man"]


def test_kohya_folder_names(tmp_path: Path) -> None:
    entries = [
        ("set/2_tkxw/a.png", png(1)),
        ("set/2_tkxw/a.txt", b"a cat"),
        ("set/10_sks dog/b.png", png(2)),
        ("set/10_sks dog/c.png", png(3)),
    ]
    result = ingest(tmp_path, entries)
    rows = captions(result)
    assert [(r["concept"], r["repeats"], r["text"]) for r in rows] == [
        ("sks dog", 10, "sks dog"),
        ("sks dog", 10, "sks dog"),
        ("tkxw", 2, "tkxw, a cat"),
    ]
    assert kohya_concept("3_a_b") is not None and kohya_concept("3_a_b").trigger == "a_b"
    assert kohya_concept("cats") is None and kohya_concept("_x") is None


def test_concepts_toml_wins_over_the_folder_name(tmp_path: Path) -> None:
    toml = b'[2_tkxw]\ntrigger = "zzq"\nrepeats = 5\n'
    result = ingest(tmp_path, [("concepts.toml", toml), ("2_tkxw/a.png", png(1))])
    assert [(r["concept"], r["repeats"]) for r in captions(result)] == [("zzq", 5)]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"a": {"repeats": 0}}', b'{"a": {"trigger": ""}}', b'{"a": {"color": 1}}'],
)
def test_a_bad_concepts_file_refuses_the_upload(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(IngestError, match=r"concepts\.json"):
        ingest(tmp_path, [("concepts.json", body), ("a/1.png", png(1))])


def test_without_concepts_rows_are_as_before(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("x/a.png", png(1))], IngestOptions(trigger="ohwx"))
    assert captions(result) == [
        {"file": "images/0001.png", "text": "ohwx", "source": "prefix", "split": "train"}
    ]
    assert result.report.concepts == []


def test_small_set_holds_nothing_out_and_says_so(tmp_path: Path) -> None:
    result = ingest(tmp_path, [(f"{i}.png", png(i)) for i in range(5)])
    assert all(row["split"] == "train" for row in captions(result))
    assert result.report.held_out == []
    assert "too few" in result.report.held_out_note
    assert "too few" in render_report_text(result.report)


def test_held_out_split_is_recorded_and_reproducible(tmp_path: Path) -> None:
    entries = [(f"{i:02d}.png", png(i)) for i in range(20)]
    result = ingest(tmp_path, entries)
    rows = captions(result)
    held = {row["file"] for row in rows if row["split"] == "heldout"}
    assert len(held) == 2  # 10 % of 20
    assert held == heldout_files([r["file"] for r in rows], result.dataset_id, 0.1)
    assert len(result.report.held_out) == 2 and not result.report.held_out_note
    again = ingest(tmp_path, list(reversed(entries)), name="again.zip")
    assert again.dataset_id == result.dataset_id
    assert {r["file"] for r in captions(again) if r["split"] == "heldout"} == held


def test_split_never_empties_a_concept() -> None:
    files = [f"images/{i:04d}.png" for i in range(12)]
    concepts = {file: ("solo" if i == 0 else "many") for i, file in enumerate(files)}
    for dataset_id in ("a", "b", "c", "d", "e", "f"):
        held = heldout_files(files, dataset_id, 0.5, concepts)
        assert len(held) == 6 and files[0] not in held
