"""The held-out split: a reproducible slice of a dataset kept out of training.

A pure function of the stored file names and the dataset id, so ingest (which writes it into
`captions.jsonl`) and the trainer (which recomputes it when a job asks for another fraction)
agree, and every job on one dataset holds out the same images. Standard library only: the
trainer imports it too.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence

DEFAULT_HELDOUT_FRACTION = 0.1
MIN_IMAGES_FOR_HELDOUT = 10
"""Below this a held-out image costs more training signal than its loss is worth."""

TRAIN, HELDOUT = "train", "heldout"


def _rank(file: str, dataset_id: str) -> str:
    return hashlib.sha256(f"atelier-heldout\n{dataset_id}\n{file}".encode()).hexdigest()


def heldout_count(images: int, fraction: float = DEFAULT_HELDOUT_FRACTION) -> int:
    """How many images are held out: `fraction` of them (at least one), none for a small set."""
    if fraction <= 0 or images < MIN_IMAGES_FOR_HELDOUT:
        return 0
    return min(images - 1, max(1, round(images * fraction)))


def heldout_files(
    files: Sequence[str],
    dataset_id: str,
    fraction: float = DEFAULT_HELDOUT_FRACTION,
    concepts: Mapping[str, str] | None = None,
) -> set[str]:
    """The held-out file names: the lowest hashes of (dataset id, file name).

    With `concepts` (file → concept), no concept loses its last training image.
    """
    wanted = heldout_count(len(files), fraction)
    concepts = concepts or {}
    left = Counter(concepts.get(file, "") for file in files)
    chosen: set[str] = set()
    for file in sorted(files, key=lambda name: (_rank(name, dataset_id), name)):
        if len(chosen) >= wanted:
            break
        concept = concepts.get(file, "")
        if left[concept] <= 1:
            continue
        left[concept] -= 1
        chosen.add(file)
    return chosen


def split_of(
    file: str,
    dataset_id: str,
    files: Sequence[str],
    fraction: float = DEFAULT_HELDOUT_FRACTION,
    concepts: Mapping[str, str] | None = None,
) -> str:
    """'train' or 'heldout' for one file of the dataset `files`."""
    return HELDOUT if file in heldout_files(files, dataset_id, fraction, concepts) else TRAIN


def too_small_note(images: int, fraction: float = DEFAULT_HELDOUT_FRACTION) -> str:
    """Why nothing is held out ('' when something is)."""
    if fraction <= 0:
        return "no images held out (held-out fraction 0)"
    if images < MIN_IMAGES_FOR_HELDOUT:
        return (
            f"no images held out: {images} images are too few for a held-out check "
            f"(it needs at least {MIN_IMAGES_FOR_HELDOUT})"
        )
    return ""
