"""The data pipeline: dataset rows, aspect-ratio buckets, caption rules and a resumable batch order.

Everything random here is a pure function of (seed, epoch) or (seed, micro-batch index), never
of global RNG state: a resumed job draws exactly the batches and captions the uninterrupted job
would have drawn, without saving any iterator.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trainer.config import TrainConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}",
)  # fmt: skip
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}",
    "a picture in the style of {}", "an artwork in the style of {}",
    "a drawing in the style of {}", "a cropped painting in the style of {}",
)  # fmt: skip


class DatasetError(ValueError):
    """A dataset folder the trainer cannot use; one readable line."""


@dataclass(frozen=True)
class Example:
    """One training image: its file, caption (trigger and prefix applied), size and bucket.

    `concept` is the image's own trigger in a multi-concept dataset ('' otherwise), `repeats`
    how many times an epoch shows it, `file` its name inside the dataset folder.
    """

    index: int
    path: Path
    caption: str
    width: int
    height: int
    bucket: tuple[int, int]  # (width, height) in pixels
    concept: str = ""
    repeats: int = 1
    file: str = ""


@dataclass(frozen=True)
class Row:
    """One line of a dataset: image, caption and what ingest recorded about it."""

    path: Path
    text: str
    file: str
    concept: str = ""
    repeats: int = 1
    split: str | None = None  # "train" | "heldout" as ingest wrote it; None: not recorded


@dataclass
class DatasetSplit:
    """The examples a job trains on, those it holds out, and the dataset's concepts."""

    train: list[Example]
    heldout: list[Example] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)  # triggers, in dataset order (> 1: multi)
    dataset_id: str = ""


# ---------------------------------------------------------------- reading


def read_records(dataset_dir: Path) -> list[Row]:
    """Rows of an ingested folder's `captions.jsonl`, else images + .txt side-cars."""
    dataset_dir = Path(dataset_dir)
    index = dataset_dir / "captions.jsonl"
    rows: list[Row] = []
    if index.is_file():
        for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                repeats = int(record.get("repeats", 1))
                if repeats < 1:
                    raise ValueError(f"repeats {repeats} is below 1")
                split = record.get("split")
                rows.append(
                    Row(
                        dataset_dir / record["file"],
                        str(record.get("text", "")),
                        str(record["file"]),
                        str(record.get("concept") or ""),
                        repeats,
                        str(split) if split is not None else None,
                    )
                )
            except (ValueError, KeyError, TypeError) as error:
                raise DatasetError(f"captions.jsonl line {number} is not valid: {error}") from None
    elif dataset_dir.is_dir():
        for path in sorted(dataset_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                side_car = path.with_suffix(".txt")
                text = side_car.read_text(encoding="utf-8").strip() if side_car.is_file() else ""
                rows.append(Row(path, text, path.relative_to(dataset_dir).as_posix()))
    else:
        raise DatasetError(f"dataset folder {dataset_dir} does not exist")
    missing = [str(row.path.name) for row in rows if not row.path.is_file()]
    if missing:
        raise DatasetError(f"dataset lists {len(missing)} missing image(s), e.g. {missing[0]}")
    if not rows:
        raise DatasetError(f"no images found in {dataset_dir}")
    return rows


def with_trigger(caption: str, config: TrainConfig, trigger: str | None = None) -> str:
    """Caption prefix and trigger phrase in front, unless the caption already has them.

    `trigger` is the image's concept in a multi-concept dataset (instead of the job's)."""
    caption = caption.strip()
    trigger = config.trigger if trigger is None else trigger
    if trigger and trigger not in caption:
        caption = f"{trigger}, {caption}" if caption else trigger
    if config.caption_prefix and not caption.startswith(config.caption_prefix):
        caption = f"{config.caption_prefix} {caption}".strip()
    return caption


def _example(index: int, row: Row, config: TrainConfig) -> Example:
    with Image.open(row.path) as image:
        width, height = ImageOps.exif_transpose(image).size
    bucket = bucket_size(width, height, config.resolution, config.bucketing)
    caption = with_trigger(row.text, config, row.concept or None)
    return Example(
        index, row.path, caption, width, height, bucket, row.concept, row.repeats, row.file
    )


def load_examples(dataset_dir: Path, config: TrainConfig) -> list[Example]:
    """Every usable image with its caption and bucket, in the dataset's own order."""
    return [_example(i, row, config) for i, row in enumerate(read_records(dataset_dir))]


def dataset_identity(dataset_dir: Path) -> tuple[str, float | None]:
    """(dataset id, held-out fraction ingest used): from dataset.json, else the folder name."""
    dataset_dir = Path(dataset_dir)
    try:
        meta = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    fraction = meta.get("heldout_fraction")
    return (
        str(meta.get("dataset_id") or dataset_dir.resolve().name),
        float(fraction) if isinstance(fraction, (int, float)) else None,
    )


def load_dataset(dataset_dir: Path, config: TrainConfig) -> DatasetSplit:
    """Examples split into training and held-out images (each list indexed from 0).

    The split ingest recorded is used when the job asks for the fraction ingest used;
    otherwise it is recomputed with the same pure function, from the file names and the
    dataset id, so every job on one dataset with one fraction holds out the same images.
    """
    from storage.ingest.split import heldout_files

    rows = read_records(dataset_dir)
    dataset_id, ingest_fraction = dataset_identity(dataset_dir)
    recorded = all(row.split is not None for row in rows)
    if recorded and ingest_fraction is not None and ingest_fraction == config.heldout_fraction:
        held = {row.file for row in rows if row.split == "heldout"}
    else:
        concepts = {row.file: row.concept for row in rows}
        held = heldout_files(
            [row.file for row in rows], dataset_id, config.heldout_fraction, concepts
        )
    train = [row for row in rows if row.file not in held]
    heldout = [row for row in rows if row.file in held]
    if not train:
        raise DatasetError("every image of the dataset is held out; lower heldout_fraction")
    triggers = list(dict.fromkeys(row.concept for row in rows if row.concept))
    return DatasetSplit(
        train=[_example(i, row, config) for i, row in enumerate(train)],
        heldout=[_example(i, row, config) for i, row in enumerate(heldout)],
        concepts=triggers,
        dataset_id=dataset_id,
    )


def dataset_fingerprint(examples: list[Example]) -> str:
    """Content id of a dataset (file bytes + captions): the key of its latent and text caches."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(hashlib.sha256(example.path.read_bytes()).digest())
        digest.update(example.caption.encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- buckets


def _bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Ingest's bucket rule when present (one rule for QA report and training), else ours."""
    if resolution % 64:  # ingest's buckets are 64-px steps; tiny test resolutions are not
        return local_bucket_for(width, height, resolution)
    try:
        from storage.ingest.buckets import bucket_for
    except ImportError:
        return local_bucket_for(width, height, resolution)
    return tuple(bucket_for(width, height, resolution))  # type: ignore[return-value]


def local_bucket_for(width: int, height: int, resolution: int, step: int = 64) -> tuple[int, int]:
    """About resolution² pixels at the image's aspect ratio, sides in `step`s, never upscaled."""
    step = min(step, resolution)
    aspect = width / height
    bucket_w = math.sqrt(resolution * resolution * aspect)
    bucket_h = bucket_w / aspect
    scale = min(1.0, width / bucket_w, height / bucket_h)  # never upscale
    sides = [max(step, int(side * scale) // step * step) for side in (bucket_w, bucket_h)]
    return sides[0], sides[1]


def bucket_size(width: int, height: int, resolution: int, bucketing: bool) -> tuple[int, int]:
    if not bucketing:
        return resolution, resolution
    return _bucket_for(width, height, resolution)


def load_pixels(
    example: Example, flip: bool = False, crop: tuple[float, float, float] | None = None
) -> torch.Tensor:
    """The image resized to cover its bucket, centre-cropped, as a CHW float tensor in [-1, 1].

    `crop` = (zoom, x, y), each in [0, 1] scaled by the job's jitter for zoom: the image is
    enlarged by (1 + zoom) and the bucket-sized window placed at fraction (x, y) of the slack
    instead of the centre (a small random crop within the bucket).
    """
    target_w, target_h = example.bucket
    with Image.open(example.path) as raw:
        image = ImageOps.exif_transpose(raw).convert("RGB")
    zoom, fx, fy = crop if crop is not None else (0.0, 0.5, 0.5)
    scale = max(target_w / image.width, target_h / image.height) * (1.0 + zoom)
    size = (max(target_w, round(image.width * scale)), max(target_h, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    if crop is None:
        left, top = (size[0] - target_w) // 2, (size[1] - target_h) // 2
    else:
        left, top = round((size[0] - target_w) * fx), round((size[1] - target_h) * fy)
    image = image.crop((left, top, left + target_w, top + target_h))
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- batch order


class BatchOrder:
    """Which examples form micro-batch number `m`: a pure function of (seed, m).

    Each epoch, every bucket's examples (each `repeats` times) are shuffled and cut into batches
    (a batch never mixes buckets, so its tensors stack), then the batches are shuffled, with
    `random.Random` seeded from (seed, epoch). Resuming at step s only needs
    m = s × gradient_accumulation.
    """

    def __init__(self, examples: list[Example], batch_size: int, seed: int) -> None:
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self._epoch: int | None = None
        self._batches: list[list[int]] = []
        self.batches_per_epoch = len(self._epoch_batches(0))

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch != epoch:
            rng = random.Random(f"atelier-order-{self.seed}-{epoch}")
            by_bucket: dict[tuple[int, int], list[int]] = {}
            for example in self.examples:
                by_bucket.setdefault(example.bucket, []).extend([example.index] * example.repeats)
            batches: list[list[int]] = []
            for bucket in sorted(by_bucket):
                indices = by_bucket[bucket]
                rng.shuffle(indices)
                batches += [
                    indices[i : i + self.batch_size]
                    for i in range(0, len(indices), self.batch_size)
                ]
            rng.shuffle(batches)
            self._epoch, self._batches = epoch, batches
        return self._batches

    def batch(self, micro_index: int) -> list[int]:
        epoch, position = divmod(micro_index, self.batches_per_epoch)
        return self._epoch_batches(epoch)[position]

    def epoch_of(self, micro_index: int) -> int:
        return micro_index // self.batches_per_epoch


def crop_choice(config: TrainConfig, rng: random.Random) -> tuple[float, float, float] | None:
    """(zoom, x, y) of a random crop within the bucket, or None without crop jitter."""
    if not config.crop_jitter:
        return None
    return (config.crop_jitter * rng.random(), rng.random(), rng.random())


# ---------------------------------------------------------------- captions


def caption_rng(seed: int, micro_index: int, example_index: int) -> random.Random:
    """Per (step, image) randomness for dropout/shuffle/templates: reproducible on resume."""
    return random.Random(f"atelier-caption-{seed}-{micro_index}-{example_index}")


def training_caption(caption: str, config: TrainConfig, rng: random.Random) -> str:
    """Caption dropout, then tag shuffle keeping the first `keep_tokens` tags in place."""
    if config.caption_dropout and rng.random() < config.caption_dropout:
        return ""
    if config.shuffle_captions:
        tags = [tag.strip() for tag in caption.split(",") if tag.strip()]
        head, tail = tags[: config.keep_tokens], tags[config.keep_tokens :]
        rng.shuffle(tail)
        caption = ", ".join(head + tail)
    return caption


def embedding_caption(
    caption: str, config: TrainConfig, prompt_token: str, rng: random.Random
) -> str:
    """An embedding's caption: a template with the token, or the caption with trigger → token.

    Pivotal (a LoRA/DoRA beside the token): the member's caption as a LoRA reads it (dropout,
    shuffle), the trigger standing for the token; a caption without the trigger stays as it is,
    and a dropped one stays empty, as without pivotal."""
    pivotal = config.method != "embedding"
    templates = "captions" if pivotal else config.embedding.templates
    if templates == "object":
        return rng.choice(OBJECT_TEMPLATES).format(prompt_token)
    if templates == "style":
        return rng.choice(STYLE_TEMPLATES).format(prompt_token)
    caption = training_caption(caption, config, rng) if caption else caption
    for word in (config.token, config.trigger):
        if word and word in caption:
            return caption.replace(word, prompt_token)
    if pivotal:
        return caption
    return f"{prompt_token}, {caption}" if caption else prompt_token
