"""Builders for ingest tests: zips and images generated in memory (no binary fixtures)."""

from __future__ import annotations

import io
import random
import stat
import zipfile
from pathlib import Path

from PIL import Image

from storage.ingest import IngestOptions, IngestResult, ingest_zip
from storage.settings import Limits

Entry = tuple[str, bytes] | tuple[str, bytes, int]
"""(name, data) or (name, data, unix mode) for a zip entry."""


def noise_image(seed: int, size: tuple[int, int] = (96, 96), mode: str = "RGB") -> Image.Image:
    """A distinct image per seed (random blocks upscaled: distinct perceptual hashes)."""
    rng = random.Random(seed)
    small = Image.frombytes("RGB", (8, 8), rng.randbytes(8 * 8 * 3))
    return small.resize(size, Image.Resampling.NEAREST).convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png(seed: int, size: tuple[int, int] = (96, 96)) -> bytes:
    return encode(noise_image(seed, size))


def make_zip(path: Path, entries: list[Entry], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry[0], date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            mode = entry[2] if len(entry) == 3 else stat.S_IFREG | 0o644
            info.external_attr = mode << 16
            zf.writestr(info, entry[1])
    return path


def ingest(
    tmp_path: Path,
    entries: list[Entry],
    options: IngestOptions | None = None,
    limits: Limits | None = None,
    name: str = "upload.zip",
) -> IngestResult:
    zip_path = make_zip(tmp_path / name, entries)
    return ingest_zip(
        zip_path, tmp_path / "datasets", options or IngestOptions(), limits or Limits()
    )


def captions(result: IngestResult) -> list[dict[str, str]]:
    import json

    lines = (result.path / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def dataset_folders(tmp_path: Path) -> list[str]:
    """Everything under the datasets folder (temp folders included)."""
    root = tmp_path / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []
