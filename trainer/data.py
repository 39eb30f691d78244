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
from dataclasses import dataclass
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
    """One training image: its file, caption (trigger and prefix applied), size and bucket."""

    index: int
    path: Path
    caption: str
    width: int
    height: int
    bucket: tuple[int, int]  # (width, height) in pixels


# ---------------------------------------------------------------- reading


def read_rows(dataset_dir: Path) -> list[tuple[Path, str]]:
    """(image, caption) from an ingested folder's `captions.jsonl`, else images + .txt side-cars."""
    dataset_dir = Path(dataset_dir)
    index = dataset_dir / "captions.jsonl"
    rows: list[tuple[Path, str]] = []
    if index.is_file():
        for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append((dataset_dir / record["file"], str(record.get("text", ""))))
            except (ValueError, KeyError) as error:
                raise DatasetError(f"captions.jsonl line {number} is not valid: {error}") from None
    elif dataset_dir.is_dir():
        for path in sorted(dataset_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                side_car = path.with_suffix(".txt")
                text = side_car.read_text(encoding="utf-8").strip() if side_car.is_file() else ""
                rows.append((path, text))
    else:
        raise DatasetError(f"dataset folder {dataset_dir} does not exist")
    missing = [str(path.name) for path, _ in rows if not path.is_file()]
    if missing:
        raise DatasetError(f"dataset lists {len(missing)} missing image(s), e.g. {missing[0]}")
    if not rows:
        raise DatasetError(f"no images found in {dataset_dir}")
    return rows


def with_trigger(caption: str, config: TrainConfig) -> str:
    """Caption prefix and trigger phrase in front, unless the caption already has them."""
    caption = caption.strip()
    if config.trigger and config.trigger not in caption:
        caption = f"{config.trigger}, {caption}" if caption else config.trigger
    if config.caption_prefix and not caption.startswith(config.caption_prefix):
        caption = f"{config.caption_prefix} {caption}".strip()
    return caption


def load_examples(dataset_dir: Path, config: TrainConfig) -> list[Example]:
    """Every usable image with its caption and bucket, in the dataset's own order."""
    examples = []
    for index, (path, caption) in enumerate(read_rows(dataset_dir)):
        with Image.open(path) as image:
            width, height = ImageOps.exif_transpose(image).size
        bucket = bucket_size(width, height, config.resolution, config.bucketing)
        examples.append(Example(index, path, with_trigger(caption, config), width, height, bucket))
    return examples


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


def load_pixels(example: Example, flip: bool = False) -> torch.Tensor:
    """The image resized to cover its bucket, centre-cropped, as a CHW float tensor in [-1, 1]."""
    target_w, target_h = example.bucket
    with Image.open(example.path) as raw:
        image = ImageOps.exif_transpose(raw).convert("RGB")
    scale = max(target_w / image.width, target_h / image.height)
    size = (max(target_w, round(image.width * scale)), max(target_h, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - target_w) // 2, (size[1] - target_h) // 2
    image = image.crop((left, top, left + target_w, top + target_h))
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- batch order


class BatchOrder:
    """Which examples form micro-batch number `m`: a pure function of (seed, m).

    Each epoch, every bucket's examples are shuffled and cut into batches (a batch never mixes
    buckets, so its tensors stack), then the batches are shuffled, with `random.Random` seeded
    from (seed, epoch). Resuming at step s only needs m = s × gradient_accumulation.
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
                by_bucket.setdefault(example.bucket, []).append(example.index)
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
    """An embedding's caption: a template with the token, or the caption with trigger → token."""
    templates = config.embedding.templates
    if templates == "object":
        return rng.choice(OBJECT_TEMPLATES).format(prompt_token)
    if templates == "style":
        return rng.choice(STYLE_TEMPLATES).format(prompt_token)
    caption = training_caption(caption, config, rng) if caption else caption
    for word in (config.token, config.trigger):
        if word and word in caption:
            return caption.replace(word, prompt_token)
    return f"{prompt_token}, {caption}" if caption else prompt_token
