"""The QA report: plain data the bot renders as an embed and the CLI prints as text."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from storage.ingest.buckets import nearest_bucket, needs_upscale
from storage.ingest.options import CONCEPT_METHODS, IngestOptions
from storage.ingest.phash import near_duplicates
from storage.ingest.split import DEFAULT_HELDOUT_FRACTION, HELDOUT, too_small_note

MANY_SHARE = 0.25
"""'Many' upscaled images or duplicates: a quarter of the dataset."""


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str


@dataclass(frozen=True)
class ImageRecord:
    """What the report needs to know about one accepted image."""

    file: str  # stored name, "images/0001.png"
    original: str  # name in the zip
    width: int
    height: int
    dhash: int
    caption_source: str
    caption_words: int
    had_trigger: bool
    concept: str = ""  # the concept's trigger when the zip defines concepts
    repeats: int = 1
    split: str = "train"  # "train" | "heldout"


@dataclass(frozen=True)
class Spread:
    min: float
    median: float
    max: float


@dataclass(frozen=True)
class NearDuplicate:
    a: str
    b: str
    distance: int


@dataclass
class ConceptStats:
    """One concept of a multi-concept dataset, as the member should see it."""

    trigger: str
    images: int
    repeats: int  # the most any of its images is repeated (normally all alike)
    per_epoch: int  # training images × repeats: how often the concept is seen per epoch
    held_out: int
    captions: dict[str, int] = field(default_factory=dict)
    missing_trigger: int = 0


@dataclass
class QAReport:
    """Everything a member should know about their dataset before training on it."""

    images: int
    method: str
    resolution: int
    trigger: str
    skipped: list[Skipped] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    captions: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, list[int]] = field(default_factory=dict)  # min/median/max by area: [w, h]
    short_side: Spread | None = None
    buckets: dict[str, int] = field(default_factory=dict)  # "768x320": count
    upscaled: list[str] = field(default_factory=list)
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    missing_trigger: list[str] = field(default_factory=list)
    caption_words: Spread | None = None
    advice: list[str] = field(default_factory=list)
    concepts: list[ConceptStats] = field(default_factory=list)  # empty: one concept (the trigger)
    held_out: list[str] = field(default_factory=list)  # originals kept out of training
    held_out_note: str = ""  # why none are held out, when none are

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spread(values: list[float]) -> Spread | None:
    if not values:
        return None
    return Spread(min(values), statistics.median(values), max(values))


def build_report(
    records: list[ImageRecord],
    skipped: list[Skipped],
    ignored: list[str],
    warnings: list[str],
    options: IngestOptions,
) -> QAReport:
    """Compute every number of the report, then the advice that follows from them."""
    report = QAReport(
        images=len(records),
        method=options.method,
        resolution=options.resolution,
        trigger=options.trigger,
        skipped=list(skipped),
        ignored=list(ignored),
        warnings=list(warnings),
    )
    _size_stats(report, records)
    _caption_stats(report, records, options)
    _concept_stats(report, records)
    report.held_out = [r.original for r in records if r.split == HELDOUT]
    if not report.held_out:
        report.held_out_note = too_small_note(len(records), DEFAULT_HELDOUT_FRACTION)
    pairs = near_duplicates([record.dhash for record in records])
    report.near_duplicates = [
        NearDuplicate(records[i].original, records[j].original, d) for i, j, d in pairs
    ]
    report.advice = advise(report)
    return report


def _size_stats(report: QAReport, records: list[ImageRecord]) -> None:
    if not records:
        return
    by_area = sorted(records, key=lambda record: (record.width * record.height, record.file))
    for label, record in (
        ("min", by_area[0]),
        ("median", by_area[len(by_area) // 2]),
        ("max", by_area[-1]),
    ):
        report.sizes[label] = [record.width, record.height]
    report.short_side = _spread([float(min(r.width, r.height)) for r in records])
    resolution = report.resolution
    counts = Counter(nearest_bucket(r.width, r.height, resolution) for r in records)
    report.buckets = {f"{w}x{h}": n for (w, h), n in counts.most_common()}
    report.upscaled = [r.original for r in records if needs_upscale(r.width, r.height, resolution)]


def _caption_stats(report: QAReport, records: list[ImageRecord], options: IngestOptions) -> None:
    sources = Counter(record.caption_source for record in records)
    report.captions = _source_counts(records)
    report.missing_trigger = [r.original for r in records if not r.had_trigger]
    report.caption_words = _spread([float(r.caption_words) for r in records])
    uncaptioned = sources["prefix"] + sources["none"]
    if options.method in CONCEPT_METHODS and uncaptioned:
        fallback = "the trigger phrase only" if sources["prefix"] else "an empty caption"
        report.warnings.append(
            f"{uncaptioned} of {len(records)} images have no caption; they are captioned "
            f"with {fallback}"
        )


def _source_counts(records: list[ImageRecord]) -> dict[str, int]:
    sources = Counter(record.caption_source for record in records)
    return {
        "sidecar": sources["sidecar"],
        "metadata": sources["metadata"],
        "prefix_only": sources["prefix"],
        "none": sources["none"],
    }


def _concept_stats(report: QAReport, records: list[ImageRecord]) -> None:
    """Images, captions and missing triggers per concept (only when the zip defines concepts)."""
    if not any(record.concept for record in records):
        return
    groups: dict[str, list[ImageRecord]] = {}
    for record in records:
        groups.setdefault(record.concept, []).append(record)
    for trigger, group in groups.items():
        training = [r for r in group if r.split != HELDOUT]
        report.concepts.append(
            ConceptStats(
                trigger=trigger,
                images=len(group),
                repeats=max(r.repeats for r in group),
                per_epoch=sum(r.repeats for r in training),
                held_out=len(group) - len(training),
                captions=_source_counts(group),
                missing_trigger=sum(not r.had_trigger for r in group),
            )
        )


def advise(report: QAReport) -> list[str]:
    """Plain-language suggestions that follow from the numbers."""
    advice: list[str] = []
    count = report.images
    if count < 10:
        advice.append(
            f"Only {count} images: 20–40 is a good start for a character, 100+ for a style."
        )
    elif count < 20:
        advice.append(
            f"{count} images is workable; 20–40 is a good start for a character, 100+ for a style."
        )
    if count >= 5 and len(report.buckets) == 1:
        shape = next(iter(report.buckets))
        advice.append(
            f"All images share one shape ({shape}); the model may do poorly at other aspect ratios."
        )
    if report.near_duplicates and len(report.near_duplicates) >= max(2, count * MANY_SHARE / 2):
        advice.append(
            f"{len(report.near_duplicates)} near-duplicate pairs: remove copies, "
            "they over-weight those images."
        )
    if count and len(report.upscaled) >= max(1, count * MANY_SHARE):
        advice.append(
            f"{len(report.upscaled)} of {count} images are smaller than the "
            f"{report.resolution}-px training size; larger originals will look "
            "sharper."
        )
    written = report.captions.get("sidecar", 0) + report.captions.get("metadata", 0)
    if report.method in CONCEPT_METHODS and count and not written:
        advice.append(
            "No captions: describe what changes between images (pose, clothes, "
            "background) so the model does not bake it into the concept."
        )
    elif written and report.caption_words and report.caption_words.median < 3:
        advice.append("Captions are very short; a sentence per image trains better.")
    small = [c.trigger for c in report.concepts if c.images < 5]
    if small:
        advice.append(
            f"Concept{'s' if len(small) > 1 else ''} {', '.join(small)} "
            f"{'have' if len(small) > 1 else 'has'} fewer than 5 images; add more or raise "
            "its repeats."
        )
    if report.skipped and len(report.skipped) >= max(3, count // 4):
        advice.append(f"{len(report.skipped)} files were skipped; see the reasons.")
    return advice


def render_report_text(report: QAReport) -> str:
    """The report as plain text for the CLI."""
    lines = [
        f"{report.images} images accepted, {len(report.skipped)} skipped, "
        f"{len(report.ignored)} ignored ({report.method}, {report.resolution} px)"
    ]
    if report.sizes:
        sizes = ", ".join(f"{k} {w}×{h}" for k, (w, h) in report.sizes.items())
        lines.append(f"sizes: {sizes}")
    if report.buckets:
        lines.append("buckets: " + ", ".join(f"{k} ({n})" for k, n in report.buckets.items()))
    captions = ", ".join(f"{k} {n}" for k, n in report.captions.items() if n)
    lines.append(f"captions: {captions or 'none'}")
    if report.caption_words:
        words = report.caption_words
        lines.append(
            f"caption words: min {words.min:g}, median {words.median:g}, max {words.max:g}"
        )
    if report.missing_trigger:
        lines.append(f"trigger added to {len(report.missing_trigger)} captions")
    if report.upscaled:
        lines.append(f"smaller than their bucket: {len(report.upscaled)}")
    for concept in report.concepts:
        captioned = concept.captions.get("sidecar", 0) + concept.captions.get("metadata", 0)
        line = (
            f"concept '{concept.trigger}': {concept.images} images × {concept.repeats} "
            f"repeats, {captioned} captioned"
        )
        if concept.missing_trigger:
            line += f", trigger added to {concept.missing_trigger}"
        if concept.held_out:
            line += f", {concept.held_out} held out"
        lines.append(line)
    if report.held_out:
        lines.append(f"held out from training (for the held-out loss): {len(report.held_out)}")
    elif report.held_out_note:
        lines.append(report.held_out_note)
    lines += [f"near-duplicate: {d.a} ~ {d.b} ({d.distance} bits)" for d in report.near_duplicates]
    lines += [f"skipped {s.file}: {s.reason}" for s in report.skipped]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"advice: {a}" for a in report.advice]
    return "\n".join(lines)
