"""zip -> validated, content-addressed dataset folder + QA report.

One synchronous call: the bot runs it in a thread of its own, the CLI calls it directly. The
images are checked (and, where needed, re-encoded) in the shared decoding pool (pool.py), a
few at a time, in parallel; this thread reads the captions and collects the results in zip
order. The dataset is built in `datasets_dir/.tmp-*` and renamed into place only when
complete, so a reader never sees half a dataset and a refusal leaves nothing behind.

Layout of `datasets_dir/<dataset_id>/`:
    images/0001.jpg ...   the uploaded images: as uploaded where they are already fine, else
                          normalized and re-encoded (see stored.py); .jpg, .png or .webp
    captions.jsonl        {"file": "images/0001.jpg", "text": ..., "source": ...,
                           "split": "train" | "heldout"} per image, plus "concept" (its
                           trigger) and "repeats" when the zip defines concepts
    report.json           the QA report
    dataset.json          format version, options, image count
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import storage.ingest.captions as cap
import storage.ingest.split as heldout
from storage.ingest.concepts import Concept, ConceptIndex, is_concepts_file
from storage.ingest.errors import IngestError, SkipFile
from storage.ingest.images import MAX_STORED_SIDE
from storage.ingest.options import IngestOptions
from storage.ingest.pool import Outcome, image_pool, pool_size, result_of, store_entry
from storage.ingest.report import ImageRecord, QAReport, Skipped, build_report
from storage.ingest.unpack import (
    ByteBudget,
    ZipPlan,
    check_archive_size,
    display_name,
    plan_zip,
    read_entry,
)
from storage.settings import Limits

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2: images are stored as uploaded where possible, and the id hashes the stored bytes."""
ID_CHARS = 24
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 24 * 3600
IN_FLIGHT_PER_PROCESS = 2
"""Entries one ingest has queued in the pool per worker: keeps every worker busy without
reading far ahead (a queued entry is only a name; the worker reads the bytes)."""

Progress = Callable[[int, int], None]
"""Called with (images done, images in the zip) from the ingest thread."""


@dataclass
class IngestResult:
    """Where the dataset is, what it holds, and whether it already existed."""

    dataset_id: str
    path: Path
    report: QAReport
    reused: bool
    stored_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """The report's fields plus identity: dataset_id, path, reused, images, skipped..."""
        return {
            "dataset_id": self.dataset_id,
            "path": str(self.path),
            "reused": self.reused,
            "stored_bytes": self.stored_bytes,
            **self.report.to_dict(),
        }


@dataclass
class _Pending:
    original: str
    file: str
    size: tuple[int, int]
    dhash: int
    digest: str
    kept: bool
    stored_bytes: int


@dataclass
class _Build:
    """State of one ingest while its temporary folder fills up."""

    root: Path
    options: IngestOptions
    limits: Limits
    index: cap.CaptionIndex = field(default_factory=cap.CaptionIndex)
    concepts: ConceptIndex = field(default_factory=ConceptIndex)
    pending: list[_Pending] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    progress: Progress | None = None

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(Skipped(display_name(name), reason))


def ingest_zip(
    zip_path: Path,
    datasets_dir: Path,
    options: IngestOptions,
    limits: Limits,
    progress: Progress | None = None,
) -> IngestResult:
    """Unpack, check and store an uploaded zip as a dataset folder.

    Raises `IngestError` (and only that) when the upload is refused; nothing is left behind.
    `progress(done, total)` is called as images are checked.
    """
    options.validate()
    options = options.normalized()
    try:
        datasets_dir.mkdir(parents=True, exist_ok=True)
        _sweep_stale_temps(datasets_dir)
        temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=datasets_dir))
    except OSError as exc:
        raise IngestError(f"the dataset folder is not writable ({exc.strerror})") from exc
    try:
        build = _Build(temp, options, limits, progress=progress)
        dataset_id, report = _build_folder(Path(zip_path), build)
        stored = sum(item.stored_bytes for item in build.pending)
        return _publish(temp, datasets_dir / dataset_id, dataset_id, report, stored)
    except IngestError:
        raise
    except Exception as exc:  # the contract: callers only ever see IngestError
        log.exception("ingest of %s failed", zip_path)
        raise IngestError(f"the dataset could not be built ({type(exc).__name__})") from exc
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _build_folder(zip_path: Path, build: _Build) -> tuple[str, QAReport]:
    try:
        fp = zip_path.open("rb")
    except OSError:
        raise IngestError("the uploaded zip could not be opened") from None
    with fp:
        check_archive_size(fp, build.limits)
        with _open_zip(fp) as zf:
            plan = plan_zip(zf, fp, build.limits)
            _read_entries(zf, plan, build, zip_path)
    if not build.pending:
        raise IngestError(_no_images_message(build))
    return _finish(build, plan)


def _open_zip(fp: BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise IngestError("the upload is not a readable zip file") from None


def _read_entries(zf: zipfile.ZipFile, plan: ZipPlan, build: _Build, zip_path: Path) -> None:
    """Captions first (small, read here), then the images in the decoding pool."""
    budget = ByteBudget(build.limits.max_uncompressed_bytes)
    images: list[zipfile.ZipInfo] = []
    for info in plan.files:
        name = info.filename
        if not (cap.is_caption_file(name) or cap.is_metadata_file(name) or is_concepts_file(name)):
            images.append(info)
            continue
        try:
            _accept_text(name, read_entry(zf, info, build.limits, budget), build)
        except SkipFile as skip:
            build.skip(name, skip.reason)
    _store_images(zip_path, images, build, budget)


def _accept_text(name: str, data: bytes, build: _Build) -> None:
    if is_concepts_file(name):
        build.concepts.add_file(name, data)
    elif cap.is_metadata_file(name):
        build.index.add_metadata(name, data)
    else:
        build.index.add_sidecar(name, data)


def _store_images(
    zip_path: Path, infos: list[zipfile.ZipInfo], build: _Build, budget: ByteBudget
) -> None:
    """Submit a bounded window of entries to the pool; collect the outcomes in zip order."""
    target = build.root / "images"
    target.mkdir(exist_ok=True)
    window = IN_FLIGHT_PER_PROCESS * pool_size(build.limits)
    queued: deque[tuple[zipfile.ZipInfo, Future[Outcome]]] = deque()
    try:
        for number, info in enumerate(infos):
            if info.filename.casefold().endswith(".zip"):
                build.skip(info.filename, "a zip inside the zip is not unpacked")
                continue
            if len(queued) >= window:
                _collect(*queued.popleft(), build, budget, len(infos))
            future = _submit(zip_path, info, build, target, f"e{number:05d}")
            queued.append((info, future))
        while queued:
            _collect(*queued.popleft(), build, budget, len(infos))
    finally:
        for _info, future in queued:
            future.cancel()
        wait_futures([future for _info, future in queued])  # nothing writes into a removed folder


def _submit(
    zip_path: Path, info: zipfile.ZipInfo, build: _Build, target: Path, stem: str
) -> Future[Outcome]:
    try:
        pool = image_pool(build.limits)
        return pool.submit(store_entry, str(zip_path), info, build.limits, str(target), stem)
    except (BrokenProcessPool, RuntimeError):
        raise IngestError("the image decoder is restarting; try again in a minute") from None


def _collect(
    info: zipfile.ZipInfo, future: Future[Outcome], build: _Build, budget: ByteBudget, total: int
) -> None:
    outcome = result_of(future)
    budget.spend(outcome.bytes_read)
    if outcome.error:
        raise IngestError(outcome.error)
    if outcome.skip:
        build.skip(info.filename, outcome.skip)
    else:
        _add_image(info.filename, outcome, build)
    if build.progress is not None:
        build.progress(len(build.pending) + len(build.skipped), total)


def _add_image(name: str, outcome: Outcome, build: _Build) -> None:
    if len(build.pending) >= build.limits.max_images:
        limit = build.limits.max_images
        raise IngestError(f"the zip holds more than {limit:,} images; the limit is {limit:,}")
    suffix = Path(outcome.file).suffix
    file = f"images/{len(build.pending) + 1:04d}{suffix}"
    os.replace(build.root / "images" / outcome.file, build.root / file)
    build.pending.append(
        _Pending(
            name,
            file,
            outcome.size,
            outcome.dhash,
            outcome.digest,
            outcome.kept,
            outcome.stored_bytes,
        )
    )
    if outcome.animated:
        build.warnings.append(f"{display_name(name)} is animated; only its first frame is used")


def _no_images_message(build: _Build) -> str:
    if not build.skipped:
        return "the zip holds no images"
    first, count = build.skipped[0], len(build.skipped)
    files = "file" if count == 1 else "files"
    return (
        f"the zip holds no usable images ({count} {files} skipped; "
        f"e.g. {first.file}: {first.reason})"
    )


def _finish(build: _Build, plan: ZipPlan) -> tuple[str, QAReport]:
    """Captions, identity, report: everything after the images are on disk."""
    records, rows = _caption_rows(build)
    orphans = build.index.orphans()
    warnings = build.warnings + build.index.warnings
    if orphans:
        warnings.append(f"{len(orphans)} caption files match no image (e.g. {orphans[0]})")
    dataset_id = _dataset_id(build, rows)
    records = _assign_split(records, rows, dataset_id)
    report = build_report(records, build.skipped, plan.ignored, warnings, build.options)
    _write_jsonl(build.root / "captions.jsonl", rows)
    _write_json(build.root / "report.json", report.to_dict())
    _write_json(
        build.root / "dataset.json",
        {
            "format": FORMAT_VERSION,
            "dataset_id": dataset_id,
            "images": len(rows),
            "image_formats": dict(sorted(Counter(Path(r["file"]).suffix for r in rows).items())),
            "kept_as_uploaded": sum(item.kept for item in build.pending),
            "stored_bytes": sum(item.stored_bytes for item in build.pending),
            "max_side": MAX_STORED_SIDE,
            "captions": "captions.jsonl",
            "options": build.options.to_dict(),
            "heldout_fraction": heldout.DEFAULT_HELDOUT_FRACTION,
            "heldout": sum(row["split"] == heldout.HELDOUT for row in rows),
            "concepts": sorted({row["concept"] for row in rows if row.get("concept")}),
        },
    )
    return dataset_id, report


def _concept_options(options: IngestOptions, concept: Concept | None) -> IngestOptions:
    """A concept's trigger (and prefix, when it names one) in place of the job's."""
    if concept is None:
        return options
    return IngestOptions(
        trigger=concept.trigger,
        caption_prefix=concept.caption_prefix or options.caption_prefix,
        method=options.method,
        resolution=options.resolution,
    )


def _caption_rows(build: _Build) -> tuple[list[ImageRecord], list[dict[str, Any]]]:
    records: list[ImageRecord] = []
    rows: list[dict[str, Any]] = []
    found = [build.concepts.concept_of(item.original) for item in build.pending]
    with_concepts = any(concept is not None for concept in found)
    for item, concept in zip(build.pending, found, strict=True):
        options = _concept_options(build.options, concept)
        caption = cap.caption_for(build.index.lookup(item.original), options)
        row: dict[str, Any] = {"file": item.file, "text": caption.text, "source": caption.source}
        if with_concepts:
            row["concept"] = options.trigger
            row["repeats"] = concept.repeats if concept else 1
        rows.append(row)
        records.append(
            ImageRecord(
                file=item.file,
                original=display_name(item.original),
                width=item.size[0],
                height=item.size[1],
                dhash=item.dhash,
                caption_source=caption.source,
                caption_words=len(caption.text.split()),
                had_trigger=caption.had_trigger,
                concept=row.get("concept", ""),
                repeats=row.get("repeats", 1),
            )
        )
    return records, rows


def _assign_split(
    records: list[ImageRecord], rows: list[dict[str, Any]], dataset_id: str
) -> list[ImageRecord]:
    """Mark the held-out images (a pure function of dataset id and file names)."""
    files = [row["file"] for row in rows]
    concepts = {row["file"]: row.get("concept", "") for row in rows}
    held = heldout.heldout_files(files, dataset_id, heldout.DEFAULT_HELDOUT_FRACTION, concepts)
    for row in rows:
        row["split"] = heldout.HELDOUT if row["file"] in held else heldout.TRAIN
    return [replace(r, split=row["split"]) for r, row in zip(records, rows, strict=True)]


def _dataset_id(build: _Build, rows: list[dict[str, Any]]) -> str:
    """sha256 over format, options, and each image's stored bytes and caption (and concept,
    when the zip defines concepts), in stored order. The held-out split follows from the id."""
    digest = hashlib.sha256(f"atelier-dataset-v{FORMAT_VERSION}\n".encode())
    digest.update(json.dumps(build.options.to_dict(), sort_keys=True).encode())
    for item, row in zip(build.pending, rows, strict=True):
        digest.update(f"\n{item.digest}\n{row['text']}\n{row['source']}".encode())
        if "concept" in row:
            digest.update(f"\n{row['concept']}\n{row['repeats']}".encode())
    return digest.hexdigest()[:ID_CHARS]


def _publish(
    temp: Path, final: Path, dataset_id: str, report: QAReport, stored: int
) -> IngestResult:
    """Atomic rename; an existing folder with this id already holds the same content."""
    if final.exists():
        return IngestResult(dataset_id, final, report, reused=True, stored_bytes=stored)
    try:
        os.rename(temp, final)
    except OSError:
        if not final.exists():
            raise
        return IngestResult(dataset_id, final, report, True, stored)  # lost a race: same content
    return IngestResult(dataset_id, final, report, reused=False, stored_bytes=stored)


def _sweep_stale_temps(datasets_dir: Path) -> None:
    """Remove temp folders left by a crashed process (old enough not to be in progress)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for child in datasets_dir.glob(f"{TEMP_PREFIX}*"):
        try:
            if child.is_dir() and child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            continue


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
