"""The trainer reads every format ingest stores: uploads kept as they came (JPEG, PNG, WebP) and
re-encodings (JPEG q95 for lossy sources, WebP lossless for lossless ones)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from storage.ingest import IngestOptions, ingest_zip
from storage.settings import Limits
from tests.storage.ingest_support import encode, make_zip, noise_image
from trainer.config import TrainConfig
from trainer.data import load_examples, load_pixels


def _rotated_jpeg() -> bytes:
    """128x64 landscape pixels whose EXIF says: rotate 90° clockwise (a 64x128 portrait)."""
    image = Image.new("RGB", (128, 64), (250, 250, 250))
    image.paste((0, 0, 0), (0, 0, 64, 64))  # left half dark -> top half after rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def test_trainer_reads_every_stored_format(tmp_path: Path) -> None:
    rgba = noise_image(4, (96, 96), "RGBA")
    entries = [
        ("a.jpg", encode(noise_image(1, (96, 96)), "JPEG", quality=90)),  # kept .jpg
        ("b.png", encode(noise_image(2, (96, 96)))),  # kept .png
        ("c.webp", encode(noise_image(3, (96, 96)), "WEBP", quality=80)),  # kept .webp
        ("d.jpg", _rotated_jpeg()),  # re-encoded .jpg (rotation)
        ("e.png", encode(rgba)),  # re-encoded .webp (alpha flattened)
    ]
    zip_path = make_zip(tmp_path / "up.zip", entries)
    result = ingest_zip(zip_path, tmp_path / "datasets", IngestOptions(trigger="zq"), Limits())
    suffixes = sorted(p.suffix for p in (result.path / "images").iterdir())
    assert suffixes == [".jpg", ".jpg", ".png", ".webp", ".webp"]

    config = TrainConfig(resolution=64, bucketing=True)
    examples = load_examples(result.path, config)
    assert len(examples) == 5
    for example in examples:
        pixels = load_pixels(example)
        width, height = example.bucket
        assert pixels.shape == (3, height, width)
        assert pixels.dtype == torch.float32 and -1.0 <= float(pixels.min()) <= 1.0
    rotated = examples[3]
    assert (rotated.width, rotated.height) == (64, 128)
    pixels = load_pixels(rotated)
    top, bottom = (
        pixels[:, : pixels.shape[1] // 4].mean(),
        pixels[:, -pixels.shape[1] // 4 :].mean(),
    )
    assert top < -0.8 < 0.8 < bottom
