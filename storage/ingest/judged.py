"""A stored dataset's QA report judged again at a job's own size and base model.

A dataset is ingested once (a named one at the 512-px default, a `/iterate` version at its
parent's size) and then trained at whatever resolution a job asks for. The parts of the report
that depend on the size — buckets, images smaller than their bucket, the advice that follows —
are recomputed from the stored images (their headers only) for the job that shows it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from storage.ingest.buckets import nearest_bucket, needs_upscale
from storage.ingest.report import (
    ConceptStats,
    NearDuplicate,
    QAReport,
    Skipped,
    Spread,
    advise,
)


def stored_sizes(folder: Path) -> list[tuple[str, int, int]]:
    """(file index, width, height) of every stored image; reads headers, not pixels."""
    from PIL import Image

    sizes = []
    for path in sorted((Path(folder) / "images").glob("*.png")):
        with Image.open(path) as image:
            sizes.append((path.stem, image.width, image.height))
    return sizes


def judge_at(
    report: dict[str, Any], sizes: list[tuple[str, int, int]], resolution: int, base_model: str
) -> dict[str, Any]:
    """`report` (a stored report's dict) with its buckets, upscaled images and advice for
    `resolution`, and `judged_at` naming the resolution and base model. Upscaled images are
    named by their file index (as on `/dataset show`'s contact sheet)."""
    resolution = max(64, -(-resolution // 64) * 64)  # buckets step by 64 px, as at ingest
    judged = dict(report)
    counts = Counter(nearest_bucket(w, h, resolution) for _, w, h in sizes)
    judged["buckets"] = {f"{w}x{h}": n for (w, h), n in counts.most_common()}
    judged["upscaled"] = [name for name, w, h in sizes if needs_upscale(w, h, resolution)]
    judged["resolution"] = resolution
    judged["advice"] = advise(_as_report(judged))
    judged["judged_at"] = {"resolution": resolution, "base_model": base_model}
    return judged


def judge_folder(
    report: dict[str, Any], folder: Path, resolution: int, base_model: str
) -> dict[str, Any]:
    """`judge_at` with the sizes read from the dataset folder; the stored report as it is
    (without `judged_at`) when the folder is gone."""
    sizes = stored_sizes(folder)
    if not sizes:
        return dict(report)
    return judge_at(report, sizes, resolution, base_model)


def _as_report(data: dict[str, Any]) -> QAReport:
    """Enough of a `QAReport` for `advise` (which reads counts, shapes and caption stats)."""
    words = data.get("caption_words")
    return QAReport(
        images=int(data.get("images") or 0),
        method=str(data.get("method") or "lora"),
        resolution=int(data["resolution"]),
        trigger=str(data.get("trigger") or ""),
        skipped=[Skipped(**s) for s in data.get("skipped") or []],
        captions=dict(data.get("captions") or {}),
        buckets=dict(data.get("buckets") or {}),
        upscaled=list(data.get("upscaled") or []),
        near_duplicates=[NearDuplicate(**d) for d in data.get("near_duplicates") or []],
        caption_words=Spread(**words) if words else None,
        concepts=[ConceptStats(**c) for c in data.get("concepts") or []],
    )
