"""What ingest stores for one uploaded image: its own bytes when they are already fine, else a
re-encoding of the normalized pixels.

Kept as uploaded: a JPEG, PNG or WebP that decodes completely, is 8-bit RGB or gray without
transparency, has no EXIF rotation, no colour profile other than sRGB, is not animated and
is at most `MAX_STORED_SIDE` on its longest side. Its stored bytes (and so its content hash)
are the upload's, so nothing is lost and no time is spent encoding. The check still decodes
every byte of the image: JPEGs at 1/8 scale (libjpeg entropy-decodes the whole stream, so
truncation and corruption are found, but skips most of the inverse DCT), others in full.

Re-encoded, everything else, as measured on 1024x768 photo-like images (Pillow 13, 2 cores):

| encoder | noisy photo | smooth image | encode time |
| --- | --- | --- | --- |
| PNG level 1 (before) | 1.82 MB | 0.56 MB | 110-130 ms |
| WebP lossless, method 0 | 1.94 MB | 0.56 MB | 35-38 ms |
| WebP lossless, method 4 | 1.71 MB | 0.32 MB | 270-340 ms |
| JPEG q95 4:4:4 | 0.92 MB | 0.17 MB | 3-15 ms |

- A lossy source (JPEG, lossy WebP, HEIC, AVIF) becomes JPEG quality 95 without chroma
  subsampling: one more generation at q95 adds far less error than the source already has,
  it is 2x smaller than any lossless form and the fastest encoder there is.
- A lossless source (PNG, BMP, TIFF, GIF, lossless WebP) stays lossless, so a LoRA does not
  learn compression artifacts the artist never drew: WebP lossless at its fastest setting,
  3x faster than PNG level 1 at about the same size.
Every format here is one Pillow (and so the trainer) reads.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageCms

from storage.ingest.errors import SkipFile
from storage.ingest.images import (
    MAX_STORED_SIDE,
    draft_to_stored_size,
    load_checked,
    normalize_loaded,
    open_checked,
    orientation_of,
)
from storage.ingest.phash import dhash
from storage.settings import Limits

KEEP_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp"}
"""Formats stored as uploaded (when nothing else needs changing), and their stored suffix."""

LOSSY_FORMATS = frozenset({"JPEG", "MPO", "AVIF", "HEIF"})
JPEG_QUALITY = 95
CHECK_SCALE = 8
"""JPEGs kept as uploaded are checked at 1/8 scale (the smallest libjpeg decodes)."""

STORED_SUFFIXES = (".jpg", ".png", ".webp")
"""Every suffix an ingested image may have (what the trainer and /dataset show read)."""


@dataclass(frozen=True)
class StoredImage:
    """One image as it will be stored, and what the QA report needs to know about it."""

    suffix: str
    data: bytes
    kept: bool  # True: `data` is the upload, byte for byte
    size: tuple[int, int]  # stored width, height
    source_size: tuple[int, int]
    source_format: str
    dhash: int
    animated: bool
    reason: str = ""  # why it was re-encoded ("" when kept)

    @property
    def digest(self) -> str:
        """The content id of this image: sha256 of the stored bytes."""
        return hashlib.sha256(self.data).hexdigest()


def prepare_image(data: bytes, limits: Limits) -> StoredImage:
    """Check one upload and decide what to store; `SkipFile` says why it is unusable."""
    with open_checked(data, limits) as image:
        source = {
            "source_size": image.size,
            "source_format": image.format or "?",
            "animated": bool(getattr(image, "is_animated", False)),
        }
        reason = change_reason(image, data)
        if reason is None:
            reason = _check_kept(image)
            if reason is None:
                suffix = KEEP_SUFFIX[source["source_format"]]
                return StoredImage(suffix, data, True, image.size, dhash=dhash(image), **source)
        else:
            draft_to_stored_size(image)
        rgb = normalize_loaded(image)
    suffix, encoded = encode_stored(rgb, lossy_source(str(source["source_format"]), data))
    return StoredImage(suffix, encoded, False, rgb.size, dhash=dhash(rgb), reason=reason, **source)


def change_reason(image: Image.Image, data: bytes) -> str | None:
    """Why the opened (not yet decoded) image cannot be stored as uploaded; None if it can."""
    if image.format not in KEEP_SUFFIX:
        return "format"
    if getattr(image, "is_animated", False):
        return "animated"
    if image.mode not in ("RGB", "L") or "transparency" in image.info:
        return "colour mode"
    if max(image.size) > MAX_STORED_SIDE:
        return "size"
    if not is_srgb(image.info.get("icc_profile")):
        return "colour profile"
    if image.format != "PNG" and orientation_of(image) != 1:
        return "rotation"  # a PNG's eXIf chunk may follow its pixels: checked after loading
    return None


def _check_kept(image: Image.Image) -> str | None:
    """Decode a keep-candidate completely (JPEG at 1/8 scale); the PNG rotation check."""
    if image.format in ("JPEG", "MPO"):
        scaled = (-(-image.width // CHECK_SCALE), -(-image.height // CHECK_SCALE))
        image.draft(image.mode, scaled)
    load_checked(image)
    if image.format == "PNG" and orientation_of(image) != 1:
        return "rotation"
    return None


def is_srgb(icc: bytes | None) -> bool:
    """No profile (sRGB is assumed), or one whose description names sRGB."""
    if not icc:
        return True
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile) or ""
    except Exception:  # an unreadable profile: normalize (to_srgb falls back safely)
        return False
    return "srgb" in description.casefold().replace(" ", "")


def lossy_source(source_format: str, data: bytes) -> bool:
    """JPEG, HEIC, AVIF, and WebP whose bitstream is VP8 (lossy) rather than VP8L."""
    if source_format == "WEBP":
        return _webp_kind(data) == b"VP8 "
    return source_format in LOSSY_FORMATS


def _webp_kind(data: bytes) -> bytes:
    """The first image chunk of a RIFF/WEBP file: b'VP8 ' (lossy) or b'VP8L' (lossless)."""
    at = 12
    while at + 8 <= len(data):
        kind = data[at : at + 4]
        if kind in (b"VP8 ", b"VP8L"):
            return kind
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        at += 8 + size + (size & 1)
    return b""


def encode_stored(image: Image.Image, lossy: bool) -> tuple[str, bytes]:
    """(suffix, bytes) of a normalized RGB image: JPEG q95 4:4:4, or fast WebP lossless."""
    buffer = io.BytesIO()
    if lossy:
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        return ".jpg", buffer.getvalue()
    image.save(buffer, "WEBP", lossless=True, quality=0, method=0)
    return ".webp", buffer.getvalue()


__all__ = ["STORED_SUFFIXES", "SkipFile", "StoredImage", "encode_stored", "prepare_image"]
