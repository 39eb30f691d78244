"""Captions: side-car `.txt` files, `metadata.jsonl` / `metadata.csv`, the trigger phrase.

Precedence: a side-car file beats a metadata row (it is the more specific choice of the
artist), and an exact name beats a match that differs only in case. Metadata `file_name`
values are relative to the folder of the metadata file (the Hugging Face imagefolder rule).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from storage.ingest.errors import SkipFile
from storage.ingest.options import CONCEPT_METHODS, IngestOptions
from storage.ingest.unpack import stem_key

CAPTION_SUFFIXES = (".txt", ".caption")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
MAX_CAPTION_BYTES = 1 << 20
"""A side-car caption longer than 1 MB is not a caption (CLIP reads 77 tokens)."""

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def is_caption_file(name: str) -> bool:
    return PurePosixPath(name).suffix.casefold() in CAPTION_SUFFIXES


def is_metadata_file(name: str) -> bool:
    return PurePosixPath(name).name.casefold() in METADATA_NAMES


def decode_text(data: bytes) -> str:
    """UTF-8 (BOM or not) or UTF-16/32 with a BOM; anything else is `SkipFile`."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise SkipFile("the caption is not UTF-8 or UTF-16 text") from None


def normalize(text: str) -> str:
    """One line, single spaces, no control characters."""
    cleaned = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text)
    return " ".join(cleaned.split())


def contains_phrase(text: str, phrase: str) -> bool:
    """Case-insensitive whole-word match ('ohwx' is in 'OHWX, a man', not in 'ohwxyz')."""
    pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, phrase.split())) + r"(?!\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def prefix_parts(options: IngestOptions) -> list[str]:
    """Trigger first (the token that must survive CLIP truncation), then the prefix."""
    return [part for part in (options.trigger, options.caption_prefix) if part]


def apply_prefix(text: str, options: IngestOptions) -> str:
    """Prepend the trigger and caption prefix, each exactly once."""
    missing = [part for part in prefix_parts(options) if not contains_phrase(text, part)]
    return ", ".join([*missing, text]) if text else ", ".join(missing)


@dataclass
class Caption:
    """The caption text an image gets, and where it came from."""

    text: str
    source: str  # "sidecar" | "metadata" | "prefix" | "none"
    had_trigger: bool = True


@dataclass
class CaptionIndex:
    """Captions found in the zip, looked up by image name (one per ingest)."""

    sidecars: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def add_sidecar(self, name: str, data: bytes) -> None:
        if len(data) > MAX_CAPTION_BYTES:
            raise SkipFile("the caption file is larger than 1 MB")
        self.sidecars[stem_key(name)] = normalize(decode_text(data))

    def add_metadata(self, name: str, data: bytes) -> None:
        folder = PurePosixPath(name.replace("\\", "/")).parent
        text = decode_text(data)
        rows = _jsonl_rows(text) if name.casefold().endswith(".jsonl") else _csv_rows(text)
        bad = 0
        for row in rows:
            file_name, caption = _row_fields(row)
            if file_name is None:
                bad += 1
                continue
            self.metadata[str(folder / file_name) if str(folder) != "." else file_name] = caption
        if bad:
            self.warnings.append(f"{name}: {bad} rows without file_name/text were ignored")

    def lookup(self, image_name: str) -> tuple[str, str] | None:
        """(raw text, source) for an image, or None."""
        key = stem_key(image_name)
        found = _find(self.sidecars, key)
        if found is not None:
            self.used.add(found)
            return self.sidecars[found], "sidecar"
        found = _find(self.metadata, image_name.replace("\\", "/"))
        if found is not None:
            return normalize(self.metadata[found]), "metadata"
        return None

    def orphans(self) -> list[str]:
        """Side-car captions that matched no accepted image."""
        return sorted(set(self.sidecars) - self.used)


def _find(table: dict[str, str], key: str) -> str | None:
    if key in table:
        return key
    folded = [name for name in table if name.casefold() == key.casefold()]
    return folded[0] if len(folded) == 1 else None


def _jsonl_rows(text: str) -> list[object]:
    rows: list[object] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            rows.append(None)
    return rows


def _csv_rows(text: str) -> list[object]:
    try:
        return list(csv.DictReader(io.StringIO(text)))
    except csv.Error:
        return [None]


def _row_fields(row: object) -> tuple[str | None, str]:
    if not isinstance(row, dict):
        return None, ""
    file_name, caption = row.get("file_name"), row.get("text")
    if not isinstance(file_name, str) or not file_name.strip() or not isinstance(caption, str):
        return None, ""
    return file_name.strip().replace("\\", "/").removeprefix("./"), caption


def caption_for(found: tuple[str, str] | None, options: IngestOptions) -> Caption:
    """The final caption: the found text with trigger/prefix, or the fallback."""
    raw, source = found if found else ("", "")
    if raw:
        had = not options.trigger or contains_phrase(raw, options.trigger)
        return Caption(apply_prefix(raw, options), source, had)
    fallback = apply_prefix("", options)
    if options.method in CONCEPT_METHODS and fallback:
        return Caption(fallback, "prefix")
    return Caption(fallback if options.method not in CONCEPT_METHODS else "", "none")
