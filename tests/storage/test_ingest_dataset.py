"""Dataset identity, layout, atomicity, QA report, and the no-escape property."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.ingest import IngestError, IngestOptions, ingest_zip, render_report_text
from storage.ingest.phash import dhash, hamming
from storage.settings import Limits
from tests.storage.ingest_support import (
    captions,
    dataset_folders,
    encode,
    ingest,
    make_zip,
    noise_image,
    png,
)

ENTRIES = [("b.png", png(2)), ("a.png", png(1)), ("a.txt", b"a cat")]


def test_layout(tmp_path: Path) -> None:
    result = ingest(tmp_path, ENTRIES, IngestOptions(trigger="ohwx"))
    assert result.path == tmp_path / "datasets" / result.dataset_id
    assert len(result.dataset_id) == 24
    names = sorted(str(p.relative_to(result.path)) for p in result.path.rglob("*"))
    assert names == [
        "captions.jsonl",
        "dataset.json",
        "images",
        "images/0001.png",
        "images/0002.png",
        "report.json",
    ]
    assert captions(result) == [
        {"file": "images/0001.png", "text": "ohwx, a cat", "source": "sidecar", "split": "train"},
        {"file": "images/0002.png", "text": "ohwx", "source": "prefix", "split": "train"},
    ]
    meta = json.loads((result.path / "dataset.json").read_text())
    assert meta["images"] == 2 and meta["options"]["trigger"] == "ohwx"
    assert json.loads((result.path / "report.json").read_text())["images"] == 2


def test_same_content_twice_is_reused(tmp_path: Path) -> None:
    first = ingest(tmp_path, ENTRIES, name="one.zip")
    second = ingest(tmp_path, list(reversed(ENTRIES)), name="two.zip")
    assert (first.reused, second.reused) == (False, True)
    assert first.dataset_id == second.dataset_id and first.path == second.path
    assert dataset_folders(tmp_path) == [first.dataset_id]


def test_options_change_the_id(tmp_path: Path) -> None:
    plain = ingest(tmp_path, ENTRIES)
    triggered = ingest(tmp_path, ENTRIES, IngestOptions(trigger="ohwx"))
    assert plain.dataset_id != triggered.dataset_id
    assert len(dataset_folders(tmp_path)) == 2


def test_refused_zip_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(IngestError):
        ingest(tmp_path, [("a.png", png(1)), ("../x.png", png(2))])
    assert dataset_folders(tmp_path) == []


def test_duplicates_reported_as_near_duplicates(tmp_path: Path) -> None:
    base = noise_image(7, (128, 128))
    entries = [
        ("one.png", encode(base)),
        ("copy.jpg", encode(base.resize((100, 100)), "JPEG", quality=80)),
        ("other.png", png(8, (128, 128))),
    ]
    result = ingest(tmp_path, entries)
    pairs = [(d.a, d.b) for d in result.report.near_duplicates]
    assert pairs == [("copy.jpg", "one.png")]


def test_dhash_distances() -> None:
    a, b = noise_image(1, (128, 128)), noise_image(2, (128, 128))
    assert hamming(dhash(a), dhash(a.resize((90, 90)))) <= 2
    assert hamming(dhash(a), dhash(b)) > 10


def test_report_numbers_and_advice(tmp_path: Path) -> None:
    entries = [(f"{i}.png", png(i, (640, 384))) for i in range(3)] + [
        ("small.png", png(9, (200, 300)))
    ]
    report = ingest(tmp_path, entries, IngestOptions(trigger="t")).report
    assert report.sizes == {"min": [200, 300], "median": [640, 384], "max": [640, 384]}
    assert report.buckets == {"640x384": 3, "384x640": 1}
    assert report.upscaled == ["small.png"]
    assert report.caption_words is not None and report.caption_words.max == 1
    assert report.advice[0].startswith("Only 4 images: 20–40 is a good start")
    assert any(a.startswith("No captions") for a in report.advice)
    text = render_report_text(report)
    assert text.startswith("4 images accepted, 0 skipped")


def test_one_shape_advice(tmp_path: Path) -> None:
    report = ingest(tmp_path, [(f"{i}.png", png(i, (512, 512))) for i in range(6)]).report
    assert "All images share one shape (512x512)" in " ".join(report.advice)


def test_invalid_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IngestError) as caught:
        ingest(tmp_path, ENTRIES, IngestOptions(resolution=500))
    assert caught.value.message == "resolution 500 is not a multiple of 64 between 64 and 2048"


def _hostile_name() -> st.SearchStrategy[str]:
    text = st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=20,
    )
    prefixes = st.sampled_from(
        ["", "../", "../../", "/", "/tmp/", "C:\\", "a/../../", "__MACOSX/", ".", "ü/ñ/", "x\\..\\"]
    )
    suffixes = st.sampled_from(["", ".png", ".PNG", ".jpg", ".txt", ".zip", "/", ".csv"])
    return st.builds(lambda p, t, s: p + t + s, prefixes, text, suffixes)


_payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([png(1), png(2, (64, 64)), b"", b"PK\x03\x04junk"]),
)
_modes = st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, 0])


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_hostile_name(), _payloads, _modes), min_size=1, max_size=6))
def test_no_zip_escapes_or_crashes(entries: list[tuple[str, bytes, int]]) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        (root / "outside").mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about duplicate names
            zip_path = make_zip(root / "outside" / "up.zip", entries)
        datasets = root / "data" / "datasets"
        before = _snapshot(root / "outside")
        try:
            result = ingest_zip(zip_path, datasets, IngestOptions(trigger="t"), Limits())
        except IngestError as error:
            assert error.message and "\n" not in error.message
            assert os.listdir(datasets) == []
        else:
            assert os.listdir(datasets) == [result.dataset_id]
            assert all(p.resolve().is_relative_to(datasets) for p in datasets.rglob("*"))
        assert _snapshot(root / "outside") == before
        assert sorted(os.listdir(root)) == ["data", "outside"]
        assert os.listdir(root / "data") == ["datasets"]


def test_zipfile_module_not_confused_by_dir_entries(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.mkdir("photos") if hasattr(zf, "mkdir") else zf.writestr("photos/", b"")
        zf.writestr("photos/a.png", png(1))
    result = ingest_zip(path, tmp_path / "datasets", IngestOptions(), Limits())
    assert result.report.images == 1
