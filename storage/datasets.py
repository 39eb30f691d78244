"""Dataset rows: recording an ingest result, named datasets (add, list, find, remove), and what
`/dataset show` needs from a dataset folder (caption samples, a contact sheet of thumbnails).

Folders are content-addressed and shared (the same images stored twice are stored once); rows
are not: each guild has its own row for the same folder (`guild_row_id`), with its own name,
description and creator, and never sees another guild's. A folder is deleted only when no
other row points at it (reference counting), so one server's `/dataset remove` cannot break
another server's jobs, and no message reveals that another server holds the same images.

Pillow and the standard library only (no torch, no discord)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from storage.models import Dataset, Job
from storage.states import OPEN_STATES

NAME_MAX = 100
DESCRIPTION_MAX = 500
SHEET_MOST = 48
SHEET_THUMB = 96
SHEET_COLUMNS = 8
SHEET_PAD = 2


class DatasetRefused(Exception):
    """A dataset operation the caller may not do; `str(error)` is one plain sentence."""


def guild_row_id(session: Session, content_id: str, guild_id: int | None) -> str:
    """The id of `guild_id`'s row for the content `content_id`: the content hash itself for the
    first guild that stored it (and rows from before per-guild rows), a hash of (content,
    guild) for any other guild."""
    existing = session.get(Dataset, content_id)
    if existing is None or existing.guild_id == guild_id:
        return content_id
    return hashlib.sha256(f"{content_id}:{guild_id}".encode()).hexdigest()


def record_dataset(
    session: Session,
    result: Any,
    *,
    guild_id: int | None = None,
    name: str | None = None,
    created_by: int | None = None,
) -> Dataset:
    """Insert (or reuse) this guild's row for an `IngestResult`; the same content gives the
    same row within a guild, and a separate row (same folder) in another guild."""
    row_id = guild_row_id(session, result.dataset_id, guild_id)
    existing = session.get(Dataset, row_id)
    if existing is not None:
        return existing
    summary = result.to_json()
    dataset = Dataset(
        id=row_id,
        guild_id=guild_id,
        name=name,
        path=str(result.path),
        images=int(summary["images"]),
        created_by=created_by,
        report=summary,
    )
    session.add(dataset)
    session.flush()
    return dataset


def find_dataset(session: Session, guild_id: int | None, name: str) -> Dataset | None:
    return session.exec(
        select(Dataset).where(Dataset.guild_id == guild_id, Dataset.name == name)
    ).first()


def clean_name(name: str) -> str:
    """A dataset name as stored: whitespace collapsed, 1–100 characters."""
    cleaned = " ".join(name.split())
    if not cleaned or len(cleaned) > NAME_MAX:
        raise DatasetRefused(f"A dataset name needs 1 to {NAME_MAX} characters.")
    return cleaned


def add_named_dataset(
    session: Session,
    result: Any,
    *,
    guild_id: int | None,
    name: str,
    created_by: int | None = None,
    description: str | None = None,
) -> Dataset:
    """Record an ingest result under `name` (unique per guild; guild None is the CLI's).

    The same images may already have this guild's row: an unnamed one (from a zip given
    straight to `/train`) takes the name; a named one is refused. Another guild's row for the
    same images is neither touched nor mentioned."""
    name = clean_name(name)
    if description is not None:
        description = description.strip()[:DESCRIPTION_MAX] or None
    row_id = guild_row_id(session, result.dataset_id, guild_id)
    taken = find_dataset(session, guild_id, name)
    if taken is not None and taken.id != row_id:
        raise DatasetRefused(f"There is already a dataset named `{name}`; pick another name.")
    existing = session.get(Dataset, row_id)  # this guild's own row, never another's
    if existing is not None and existing.name is not None:
        raise DatasetRefused(
            f"These images (with these options) are already stored as `{existing.name}`."
        )
    dataset = existing or record_dataset(session, result, guild_id=guild_id, created_by=created_by)
    dataset.name = name
    dataset.description = description
    dataset.created_by = created_by
    dataset.path = str(result.path)
    session.add(dataset)
    session.flush()
    return dataset


def list_datasets(session: Session, guild_id: int | None) -> list[Dataset]:
    """A guild's named datasets, by name."""
    return list(
        session.exec(
            select(Dataset)
            .where(Dataset.guild_id == guild_id, col(Dataset.name).is_not(None))
            .order_by(col(Dataset.name))
        ).all()
    )


def names_matching(
    session: Session, guild_id: int | None, current: str, most: int = 25
) -> list[str]:
    """Names of a guild's datasets containing what the member typed (for autocomplete)."""
    needle = current.strip().lower()
    names = [d.name for d in list_datasets(session, guild_id) if d.name]
    return [n for n in names if needle in n.lower()][:most]


def jobs_using(session: Session, dataset_id: str, guild_id: int | None = None) -> list[Job]:
    """This guild's jobs on this dataset that still need it: queued, running or awaiting the
    vote (another guild's jobs are never named to this one)."""
    return list(
        session.exec(
            select(Job)
            .where(
                Job.dataset_id == dataset_id,
                Job.guild_id == guild_id,
                col(Job.state).in_([str(s) for s in OPEN_STATES]),
            )
            .order_by(col(Job.id))
        ).all()
    )


def remove_dataset(session: Session, dataset: Dataset) -> Path | None:
    """Forget a named dataset; returns its folder for the caller to delete after the commit
    (`delete_folder`), or None while another row (another guild's) still uses the folder.
    Refused while an open job of this guild uses it. A row that finished jobs still point to
    stays as their (unnamed) record; any other row is deleted."""
    using = jobs_using(session, dataset.id, dataset.guild_id)
    if using:
        ids = ", ".join(f"#{j.id}" for j in using[:5])
        raise DatasetRefused(
            f"Dataset `{dataset.name}` is in use by job(s) {ids}; wait until they are "
            "finalized, or cancel them first."
        )
    folder = Path(dataset.path)
    referenced = session.exec(select(Job.id).where(Job.dataset_id == dataset.id)).first()
    row = session.get(Dataset, dataset.id)
    if row is not None:
        if referenced is None:
            session.delete(row)
        else:
            row.name = None
            row.description = None
            session.add(row)
    session.flush()
    shared = session.exec(
        select(Dataset.id).where(Dataset.path == dataset.path, Dataset.id != dataset.id)
    ).first()
    return None if shared is not None else folder


def delete_folder(folder: Path | None, datasets_dir: Path) -> bool:
    """Delete a dataset folder, but only one directly inside `datasets_dir` (None: nothing)."""
    if folder is None:
        return False
    try:
        inside = folder.resolve().parent == datasets_dir.resolve()
    except OSError:
        return False
    if not inside or not folder.is_dir():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


# --- what `/dataset show` reads from the folder ---------------------------------------------


def caption_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows of `captions.jsonl` (file, text, source, split, concept…), in stored order."""
    path = Path(folder) / "captions.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def caption_samples(folder: Path, per_concept: int = 2, most: int = 6) -> list[dict[str, Any]]:
    """A few captions, spread over the concepts (first ones of each)."""
    seen: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for row in caption_rows(folder):
        concept = str(row.get("concept") or "")
        if seen.get(concept, 0) >= per_concept:
            continue
        seen[concept] = seen.get(concept, 0) + 1
        out.append(row)
        if len(out) >= most:
            break
    return out


@dataclass(frozen=True)
class SheetLayout:
    count: int
    columns: int
    rows: int
    cell_width: int
    cell_height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.columns * self.cell_width, self.rows * self.cell_height


def sheet_layout(count: int, thumb: int = SHEET_THUMB, columns: int = SHEET_COLUMNS) -> SheetLayout:
    """The contact sheet's grid for `count` thumbnails (at least one cell)."""
    count = max(count, 1)
    cols = min(count, columns)
    cell_width = thumb + 2 * SHEET_PAD
    from storage.drawing import line_height

    label = line_height(sheet_font(cols * cell_width))
    return SheetLayout(
        count, cols, math.ceil(count / cols), cell_width, thumb + label + 2 * SHEET_PAD
    )


def sheet_font(width: int) -> Any:
    """The file-index font of a sheet `width` px wide: readable once a phone scales it down."""
    from storage.drawing import font, legible_size

    return font(legible_size(width))


def dataset_images(folder: Path) -> list[Path]:
    from storage.ingest.stored import STORED_SUFFIXES

    images = (Path(folder) / "images").glob("*")
    return sorted(p for p in images if p.suffix.lower() in STORED_SUFFIXES)


def contact_sheet(
    folder: Path, most: int = SHEET_MOST, thumb: int = SHEET_THUMB
) -> tuple[bytes, int]:
    """One PNG of up to `most` thumbnails (`thumb` px, aspect kept) with their file index
    below each; returns (png bytes, thumbnails drawn). Blocking: run it in a thread."""
    from PIL import Image, ImageDraw

    files = dataset_images(folder)[:most]
    layout = sheet_layout(len(files), thumb)
    sheet = Image.new("RGB", layout.size, (32, 34, 37))
    draw = ImageDraw.Draw(sheet)
    face = sheet_font(layout.size[0])
    for index, file in enumerate(files):
        x = (index % layout.columns) * layout.cell_width + SHEET_PAD
        y = (index // layout.columns) * layout.cell_height + SHEET_PAD
        with Image.open(file) as image:
            image.thumbnail((thumb, thumb))
            tile = image.convert("RGB")
        sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
        draw.text((x + 2, y + thumb), file.stem, fill=(220, 221, 222), font=face)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return buf.getvalue(), len(files)
