"""Several concepts in one dataset: each sub-folder of the zip with its own trigger and repeats.

Two ways to say it, the first winning where both name a folder:

- `concepts.json` / `concepts.toml` next to the folders (normally the zip root)::

      {"alice": {"trigger": "ohwx woman", "repeats": 2, "caption_prefix": "photo"}}

  (a plain string value is the trigger; a missing trigger is the folder name);
- kohya's folder names `N_name`: N repeats per epoch, `name` (as written) the trigger, so
  `2_tkxw` is trigger "tkxw" seen twice per epoch and `10_ohwx woman` is "ohwx woman" ×10.

An image in no concept folder gets the job's trigger and one repeat, exactly as before.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from storage.ingest.captions import decode_text, normalize
from storage.ingest.errors import IngestError

CONCEPT_FILES = ("concepts.json", "concepts.toml")
MAX_REPEATS = 100
_KOHYA = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Concept:
    """One concept: its folder in the zip, the trigger its captions carry, its repeats."""

    folder: str
    trigger: str
    repeats: int = 1
    caption_prefix: str = ""


def is_concepts_file(name: str) -> bool:
    return PurePosixPath(name.replace("\\", "/")).name.casefold() in CONCEPT_FILES


def _repeats(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEATS:
        raise IngestError(f"{where}: repeats must be a whole number from 1 to {MAX_REPEATS}")
    return value


def _clean_folder(folder: str) -> str:
    return "/".join(part for part in folder.replace("\\", "/").split("/") if part not in ("", "."))


def parse_concepts_file(name: str, data: bytes) -> dict[str, Concept]:
    """Folder (relative to the file's own folder) → Concept; `IngestError` if malformed."""
    short = PurePosixPath(name.replace("\\", "/")).name
    text = decode_text(data)
    try:
        table = tomllib.loads(text) if short.casefold().endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise IngestError(f"{short} could not be read ({error})") from None
    if isinstance(table, dict) and isinstance(table.get("concepts"), dict):
        table = table["concepts"]
    if not isinstance(table, dict) or not table:
        raise IngestError(f"{short} must map folder names to concepts")
    base = _clean_folder(str(PurePosixPath(name.replace("\\", "/")).parent))
    concepts: dict[str, Concept] = {}
    for folder, entry in table.items():
        where = f"{short}, folder '{folder}'"
        if isinstance(entry, str):
            entry = {"trigger": entry}
        if not isinstance(entry, dict):
            raise IngestError(f"{where}: expected a trigger or a table of settings")
        unknown = set(entry) - {"trigger", "repeats", "caption_prefix"}
        if unknown:
            raise IngestError(f"{where}: unknown setting '{sorted(unknown)[0]}'")
        relative = _clean_folder(str(folder))
        if not relative:
            raise IngestError(f"{where}: the folder name is empty")
        trigger = entry.get("trigger", PurePosixPath(relative).name)
        prefix = entry.get("caption_prefix", "")
        if not isinstance(trigger, str) or not isinstance(prefix, str):
            raise IngestError(f"{where}: trigger and caption_prefix must be text")
        if not normalize(trigger):
            raise IngestError(f"{where}: the trigger is empty")
        key = f"{base}/{relative}" if base else relative
        concepts[key] = Concept(
            folder=relative,
            trigger=normalize(trigger),
            repeats=_repeats(entry.get("repeats", 1), where),
            caption_prefix=normalize(prefix),
        )
    return concepts


def kohya_concept(folder: str) -> Concept | None:
    """`2_tkxw` → Concept('2_tkxw', 'tkxw', 2); any other name → None."""
    match = _KOHYA.match(folder)
    if not match or not normalize(match.group(2)):
        return None
    return Concept(
        folder=folder,
        trigger=normalize(match.group(2)),
        repeats=_repeats(int(match.group(1)), f"folder '{folder}'"),
    )


@dataclass
class ConceptIndex:
    """Concept files found in the zip, and the rule that assigns an image to a concept."""

    declared: dict[str, Concept] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def add_file(self, name: str, data: bytes) -> None:
        if self.files:
            raise IngestError(
                f"the zip holds more than one concepts file ({self.files[0]} and {name}); keep one"
            )
        self.files.append(name)
        self.declared.update(parse_concepts_file(name, data))

    def concept_of(self, image_name: str) -> Concept | None:
        """The concept of an image (by its name in the zip), or None for the job's trigger."""
        parts = _clean_folder(image_name).split("/")[:-1]
        for depth in range(len(parts), 0, -1):  # the deepest declared folder wins
            found = self.declared.get("/".join(parts[:depth]))
            if found is None:
                found = next(
                    (
                        c
                        for k, c in self.declared.items()
                        if k.casefold() == "/".join(parts[:depth]).casefold()
                    ),
                    None,
                )
            if found is not None:
                return found
        for part in reversed(parts):
            found = kohya_concept(part)
            if found is not None:
                return found
        return None
