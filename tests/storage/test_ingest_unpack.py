"""Hostile and odd zips: each refused or handled with an exact outcome, nothing left behind."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from storage.ingest import IngestError, IngestOptions, ingest_zip
from storage.ingest.errors import SkipFile
from storage.ingest.unpack import ByteBudget, read_entry
from storage.settings import Limits
from tests.storage.ingest_support import dataset_folders, ingest, make_zip, png


def refused(tmp_path: Path, entries: list, limits: Limits | None = None) -> str:
    """Ingest, expect refusal, check nothing is left; returns the message."""
    with pytest.raises(IngestError) as caught:
        ingest(tmp_path, entries, limits=limits)
    assert dataset_folders(tmp_path) == []
    message = caught.value.message
    assert "\n" not in message
    return message


def test_traversal_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, [("ok.png", png(1)), ("../evil.png", png(2))])
    assert message == "the zip holds a path that climbs out of its folder ('../evil.png')"


def test_backslash_traversal_is_refused(tmp_path: Path) -> None:
    assert "climbs out" in refused(tmp_path, [("a\\..\\..\\evil.png", png(2))])


@pytest.mark.parametrize("name", ["/etc/evil.png", "C:/evil.png", "\\evil.png"])
def test_absolute_path_is_refused(tmp_path: Path, name: str) -> None:
    assert refused(tmp_path, [(name, png(1))]).startswith("the zip holds an absolute path")


def test_symlink_is_refused(tmp_path: Path) -> None:
    link = ("link.png", b"/etc/passwd", stat.S_IFLNK | 0o777)
    message = refused(tmp_path, [("ok.png", png(1)), link])
    assert message == "the zip holds a symbolic link ('link.png'); refusing it"


def test_device_file_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, [("dev.png", b"", stat.S_IFCHR | 0o644)])
    assert message == "the zip holds a device file ('dev.png'); refusing it"


def test_bomb_by_ratio_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, [("ok.png", png(1)), ("flat.bmp", bytes(8 * 1024 * 1024))])
    assert message.startswith("'flat.bmp' is compressed ")
    assert "zip bomb; the limit is 100:1" in message


def test_bomb_by_count_is_refused_before_parsing(tmp_path: Path) -> None:
    entries = [(f"{i}.txt", b"x") for i in range(12)]
    message = refused(tmp_path, entries, limits=Limits(max_files=10))
    assert message == "the zip holds 12 files; the limit is 10"


def test_total_size_limit(tmp_path: Path) -> None:
    entries = [(f"{i}.png", png(i, (300, 300))) for i in range(3)]
    limit = len(entries[0][1]) * 2
    message = refused(tmp_path, entries, limits=Limits(max_uncompressed_bytes=limit))
    assert message.startswith("the zip unpacks to more than")


def test_single_entry_limit(tmp_path: Path) -> None:
    data = png(1, (300, 300))
    message = refused(tmp_path, [("big.png", data)], limits=Limits(max_entry_bytes=1000))
    assert message.startswith("'big.png' unpacks to ")
    assert message.endswith("the limit for one file is 1,000 bytes")


def test_zip_larger_than_limit(tmp_path: Path) -> None:
    message = refused(tmp_path, [("a.png", png(1))], limits=Limits(max_zip_bytes=100))
    assert message.startswith("the zip is ") and message.endswith("the limit is 100 bytes")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(b"this is not a zip at all" * 10)
    with pytest.raises(IngestError, match="not a readable zip"):
        ingest_zip(path, tmp_path / "datasets", IngestOptions(), Limits())
    assert dataset_folders(tmp_path) == []


def _overlapping_zip(path: Path) -> Path:
    """Two directory records pointing at the same local header (quoted-overlap bomb)."""
    make_zip(path, [("a.png", png(1)), ("b.png", png(2))])
    raw = bytearray(path.read_bytes())
    second = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 4)
    struct.pack_into("<L", raw, second + 42, 0)
    path.write_bytes(bytes(raw))
    return path


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    zip_path = _overlapping_zip(tmp_path / "upload.zip")
    with pytest.raises(IngestError) as caught:
        ingest_zip(zip_path, tmp_path / "datasets", IngestOptions(), Limits())
    assert caught.value.message == (
        "the zip's entries overlap each other, which is a zip-bomb trick"
    )
    assert dataset_folders(tmp_path) == []


def test_lying_declared_size_is_caught_while_streaming(tmp_path: Path) -> None:
    """The directory says 100 bytes; reading stops there and the entry is damaged."""
    zip_path = make_zip(tmp_path / "upload.zip", [("a.png", png(1)), ("b.png", png(2))])
    raw = bytearray(zip_path.read_bytes())
    first = raw.find(b"PK\x01\x02")
    struct.pack_into("<L", raw, first + 24, 100)  # uncompressed size of a.png
    zip_path.write_bytes(bytes(raw))
    result = ingest_zip(zip_path, tmp_path / "datasets", IngestOptions(), Limits())
    assert result.report.images == 1
    assert [(s.file, s.reason) for s in result.report.skipped] == [
        ("a.png", "its data in the zip is damaged")
    ]


def test_streaming_counts_actual_bytes(tmp_path: Path) -> None:
    """Limits are enforced on decompressed bytes, not on what the directory declares."""
    zip_path = make_zip(tmp_path / "z.zip", [("a.bin", bytes(3 * 1024 * 1024))])
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.infolist()[0]
        with pytest.raises(IngestError, match="unpacks to more than 1 MB"):
            read_entry(zf, info, Limits(), ByteBudget(limit=1024 * 1024))
        with pytest.raises(IngestError, match="zip bomb"):
            read_entry(zf, info, Limits(max_compression_ratio=2), ByteBudget(limit=10**9))


def test_encrypted_entry_is_skipped(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "z.zip", [("a.png", png(1))])
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.infolist()[0]
        info.flag_bits |= 0x1
        with pytest.raises(SkipFile, match="password-protected"):
            read_entry(zf, info, Limits(), ByteBudget(limit=10**9))


def test_nested_zip_is_reported_not_unpacked(tmp_path: Path) -> None:
    inner = make_zip(tmp_path / "inner.zip", [("x.png", png(5))]).read_bytes()
    result = ingest(tmp_path, [("a.png", png(1)), ("more/inner.zip", inner)])
    assert result.report.images == 1
    assert [(s.file, s.reason) for s in result.report.skipped] == [
        ("more/inner.zip", "a zip inside the zip is not unpacked")
    ]


def test_macos_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    entries = [
        ("set/a.png", png(1)),
        ("__MACOSX/set/._a.png", b"\x00\x05\x16\x07junk"),
        ("set/.DS_Store", b"junk"),
        ("set/.hidden.png", png(2)),
        ("Thumbs.db", b"junk"),
        ("set/", b""),
    ]
    result = ingest(tmp_path, entries)
    assert result.report.images == 1
    assert result.report.skipped == []
    assert result.report.ignored == [
        "Thumbs.db",
        "__MACOSX/set/._a.png",
        "set/.DS_Store",
        "set/.hidden.png",
    ]


def test_non_image_files_are_reported(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1)), ("notes.pdf", b"%PDF-1.4 ...")])
    assert [(s.file, s.reason) for s in result.report.skipped] == [
        ("notes.pdf", "it is not an image we can read (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    ]


def test_case_differing_names_are_both_kept(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("Cat.png", png(1)), ("cat.png", png(2)), ("CAT.PNG", png(3))])
    assert result.report.images == 3
    assert sorted(p.name for p in (result.path / "images").iterdir()) == [
        "0001.png",
        "0002.png",
        "0003.png",
    ]


def test_zip_without_images_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, [("readme.md", b"# hello")])
    assert message == (
        "the zip holds no usable images (1 file skipped; e.g. readme.md: "
        "it is not an image we can read (PNG, JPEG, WebP, BMP, GIF, TIFF))"
    )


def test_too_many_images_is_refused(tmp_path: Path) -> None:
    entries = [(f"{i}.png", png(i)) for i in range(4)]
    message = refused(tmp_path, entries, limits=Limits(max_images=3))
    assert message == "the zip holds more than 3 images; the limit is 3"
