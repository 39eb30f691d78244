"""Captions: side-cars, metadata files, encodings, trigger phrase, fallbacks."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from storage.ingest import IngestOptions
from storage.ingest.captions import apply_prefix, contains_phrase, decode_text, normalize
from storage.ingest.errors import SkipFile
from tests.storage.ingest_support import captions, ingest, png


def texts(result) -> list[tuple[str, str]]:
    return [(row["text"], row["source"]) for row in captions(result)]


def test_decode_text_encodings() -> None:
    assert decode_text("café".encode()) == "café"
    assert decode_text(codecs.BOM_UTF8 + "café".encode()) == "café"
    assert decode_text(codecs.BOM_UTF16_LE + "café".encode("utf-16-le")) == "café"
    assert decode_text(codecs.BOM_UTF16_BE + "café".encode("utf-16-be")) == "café"
    with pytest.raises(SkipFile, match="not UTF-8 or UTF-16"):
        decode_text("café".encode("latin-1"))


def test_phrase_matching_is_word_bounded_and_case_insensitive() -> None:
    assert contains_phrase("OHWX, a man", "ohwx")
    assert contains_phrase("photo of ohwx  man", "ohwx man")
    assert not contains_phrase("ohwxyz man", "ohwx")
    assert not contains_phrase("a zohwx", "ohwx")


def test_apply_prefix_once() -> None:
    options = IngestOptions(trigger="ohwx", caption_prefix="a photo of")
    assert apply_prefix("a man", options) == "ohwx, a photo of, a man"
    assert apply_prefix("A photo of OHWX man", options) == "A photo of OHWX man"
    assert apply_prefix("", options) == "ohwx, a photo of"


def test_normalize_whitespace() -> None:
    assert normalize("  a\tcat\r\n on\x00 a  mat \n") == "a cat on a mat"


def test_utf16_and_bom_sidecars(tmp_path: Path) -> None:
    entries = [
        ("a.png", png(1)),
        ("a.txt", codecs.BOM_UTF16_LE + "a red fox".encode("utf-16-le")),
        ("b.png", png(2)),
        ("b.txt", codecs.BOM_UTF8 + b"  a blue\n bird "),
    ]
    result = ingest(tmp_path, entries)
    assert texts(result) == [("a red fox", "sidecar"), ("a blue bird", "sidecar")]


def test_undecodable_caption_is_skipped(tmp_path: Path) -> None:
    entries = [("a.png", png(1)), ("a.txt", b"\xff\xfe\xff broken"[2:] + b"\xc3\x28")]
    result = ingest(tmp_path, entries, IngestOptions(trigger="ohwx"))
    assert [(s.file, s.reason) for s in result.report.skipped] == [
        ("a.txt", "the caption is not UTF-8 or UTF-16 text")
    ]
    assert texts(result) == [("ohwx", "prefix")]


def test_sidecar_matches_any_case(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("Sub/IMG_1.PNG", png(1)), ("sub/img_1.TXT", b"a dog")])
    assert texts(result) == [("a dog", "sidecar")]


def test_metadata_jsonl(tmp_path: Path) -> None:
    rows = [{"file_name": "a.png", "text": "a cat"}, {"file_name": "b.png", "text": "a dog"}]
    meta = "\n".join(json.dumps(r) for r in rows).encode() + b"\nnot json\n"
    entries = [("set/a.png", png(1)), ("set/b.png", png(2)), ("set/metadata.jsonl", meta)]
    result = ingest(tmp_path, entries)
    assert texts(result) == [("a cat", "metadata"), ("a dog", "metadata")]
    assert result.report.captions["metadata"] == 2
    assert "set/metadata.jsonl: 1 rows without file_name/text were ignored" in (
        result.report.warnings
    )


def test_metadata_csv_and_sidecar_precedence(tmp_path: Path) -> None:
    meta = b'file_name,text\na.png,"a cat, sitting"\nb.png,a dog\n'
    entries = [("a.png", png(1)), ("b.png", png(2)), ("b.txt", b"side"), ("metadata.csv", meta)]
    result = ingest(tmp_path, entries)
    assert texts(result) == [("a cat, sitting", "metadata"), ("side", "sidecar")]


def test_trigger_prepended_exactly_once(tmp_path: Path) -> None:
    entries = [
        ("a.png", png(1)),
        ("a.txt", b"ohwx man in a hat"),
        ("b.png", png(2)),
        ("b.txt", b"a man, OHWX"),
        ("c.png", png(3)),
        ("c.txt", b"ohwxyz man"),
    ]
    result = ingest(tmp_path, entries, IngestOptions(trigger="ohwx"))
    assert [t for t, _ in texts(result)] == ["ohwx man in a hat", "a man, OHWX", "ohwx, ohwxyz man"]
    assert result.report.missing_trigger == ["c.png"]


def test_concept_without_captions_falls_back_to_trigger(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1)), ("b.png", png(2))], IngestOptions(trigger="zk"))
    assert texts(result) == [("zk", "prefix"), ("zk", "prefix")]
    assert result.report.captions == {"sidecar": 0, "metadata": 0, "prefix_only": 2, "none": 0}
    assert "2 of 2 images have no caption; they are captioned with the trigger phrase only" in (
        result.report.warnings
    )


def test_embedding_needs_no_captions(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1))], IngestOptions(method="embedding"))
    assert texts(result) == [("", "none")]
    assert result.report.warnings == []


def test_orphan_caption_is_warned(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1)), ("zzz.txt", b"lonely")])
    assert "1 caption files match no image (e.g. zzz)" in result.report.warnings
