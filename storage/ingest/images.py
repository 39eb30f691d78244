"""Decoding an uploaded image into the one form the trainer sees: 8-bit sRGB, upright.

Storage format: PNG. It is lossless, so normalization adds no compression artifacts of its
own (a LoRA learns JPEG blocking as readily as it learns a face), every library the trainer
might use reads it, and re-encoding is deterministic, which keeps the content hash stable.
It costs disk (2-3x a good JPEG); that cost is bounded by the downscale below and is small
next to the checkpoints a job writes. Level 1 with zlib's RLE strategy is used: on a
1024x768 photo it is ~4x faster than the default level 6 (~70 vs ~300 ms) for files only
5-10% larger, and ingest shares a small machine with the bot.

Downscale: images are stored with their longest side at most `MAX_STORED_SIDE` (2048), about
twice the largest training resolution (SDXL's 1024). Bucketing never needs more than that,
crops and flips keep enough detail, and a 6000-px phone photo would otherwise cost ~18x the
decode time and disk of every epoch's read for no training benefit.

Pixels are checked from the header before anything is decoded (a 1 KB PNG can claim
100,000 x 100,000 pixels), and only the formats listed in `READ_FORMATS` are tried, so
Pillow never hands a file to an external program (EPS would run Ghostscript).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError, features

from storage.ingest.errors import SkipFile
from storage.settings import Limits

MAX_STORED_SIDE = 2048
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = zlib.Z_RLE
WHITE = (255, 255, 255)
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "GIF", "TIFF")
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


@dataclass(frozen=True)
class DecodedImage:
    """An upright 8-bit RGB image and what the upload looked like."""

    image: Image.Image
    source_size: tuple[int, int]
    source_format: str
    animated: bool


@cache
def _heif_plugin() -> bool:
    """Register pillow-heif's opener once if it is installed (idempotent, process-wide)."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def read_formats() -> list[str]:
    """The Pillow formats ingest will try, including optional AVIF/HEIF support."""
    formats = list(READ_FORMATS)
    if features.check("avif"):
        formats.append("AVIF")
    if _heif_plugin():
        formats.append("HEIF")
    Image.init()
    return [name for name in formats if name in Image.OPEN]


def decode_image(data: bytes, limits: Limits) -> DecodedImage:
    """Open, check, decode and normalize one image; `SkipFile` says why one is unusable."""
    if not data:
        raise SkipFile("the file is empty (0 bytes)")
    image = _open(data, limits)
    with image:
        size = image.size
        _check_size(size, limits)
        animated = bool(getattr(image, "is_animated", False))
        source_format = image.format or "?"
        _draft(image)
        try:
            image.load()
            rgb = to_rgb(image)
        except SkipFile:
            raise
        except Exception:  # Pillow raises many types on damaged data
            raise SkipFile("the image is damaged or truncated") from None
    rgb = downscale(rgb)
    rgb.info = {}  # the pixels are sRGB now; no profile, EXIF or GPS is carried over
    return DecodedImage(rgb, size, source_format, animated)


def _open(data: bytes, limits: Limits) -> Image.Image:
    try:
        # Pillow may emit DecompressionBombWarning here; it is not silenced because warning
        # filters are process-wide and this runs in a worker thread. _check_size refuses.
        return Image.open(io.BytesIO(data), formats=read_formats())
    except Image.DecompressionBombError:
        raise SkipFile(
            f"it has more pixels than the limit of {limits.max_image_pixels:,}"
        ) from None
    except UnidentifiedImageError:
        raise SkipFile(_unreadable_reason(data)) from None
    except Exception:
        raise SkipFile("the image header is damaged") from None


def _unreadable_reason(data: bytes) -> str:
    brand = data[8:12] if data[4:8] == b"ftyp" else b""
    if brand in _HEIF_BRANDS:
        return "HEIC images need the pillow-heif plugin, which is not installed"
    if brand in _AVIF_BRANDS:
        return "AVIF images are not supported by this server's Pillow"
    return "it is not an image we can read (PNG, JPEG, WebP, BMP, GIF, TIFF)"


def _check_size(size: tuple[int, int], limits: Limits) -> None:
    width, height = size
    if width * height > limits.max_image_pixels:
        raise SkipFile(
            f"it is {width:,}×{height:,} pixels; the limit is {limits.max_image_pixels:,} pixels"
        )
    if min(width, height) < limits.min_image_side:
        raise SkipFile(
            f"it is only {width}×{height} px; the shortest side must be at least "
            f"{limits.min_image_side} px"
        )


def _draft(image: Image.Image) -> None:
    """Let the JPEG decoder shrink by 1/2..1/8 for free when we would downscale anyway."""
    if image.format not in ("JPEG", "MPO") or max(image.size) <= MAX_STORED_SIDE:
        return
    scale = MAX_STORED_SIDE / max(image.size)
    image.draft(image.mode, (round(image.width * scale), round(image.height * scale)))


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright, 8-bit, sRGB, RGB; transparent pixels become white."""
    icc = image.info.get("icc_profile")
    image = _upright(image)
    image = _eight_bit(image)
    alpha = None
    if image.mode in _ALPHA_MODES:
        image = image.convert("LA" if image.mode in ("LA", "La") else "RGBA")
        alpha = image.getchannel("A")
        image = image.convert("L" if image.mode == "LA" else "RGB")
    if image.mode not in ("RGB", "L", "CMYK"):
        image = _convert(image, "RGB")
    image = to_srgb(image, icc)
    if alpha is not None:
        canvas = Image.new("RGB", image.size, WHITE)
        canvas.paste(image, mask=alpha)
        image = canvas
    return image


def _upright(image: Image.Image) -> Image.Image:
    """A rotated copy (always a copy: the opened file is closed after decoding)."""
    try:
        return ImageOps.exif_transpose(image) or image.copy()
    except Exception:  # malformed EXIF: keep the pixels as stored
        return image.copy()


def _eight_bit(image: Image.Image) -> Image.Image:
    """Reduce 1-bit, palette, 16-bit and 32-bit modes to an 8-bit mode."""
    mode = image.mode
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in _SIXTEEN_BIT:
        return image.convert("I").point(lambda value: value * (1 / 257)).convert("L")
    if mode in ("I", "F"):
        return _scale_to_eight_bit(image)
    return image


def _scale_to_eight_bit(image: Image.Image) -> Image.Image:
    """32-bit int or float gray: assume 16-bit range for ints, 0..1 for floats, else stretch."""
    low, high = image.getextrema()
    if image.mode == "I" and low >= 0 and high <= 65535:
        scale, offset = (1.0 if high <= 255 else 1 / 257), 0.0
    elif image.mode == "F" and low >= 0 and high <= 1.0:
        scale, offset = 255.0, 0.0
    else:
        span = (high - low) or 1
        scale, offset = 255.0 / span, -low * 255.0 / span
    return image.point(lambda value: value * scale + offset).convert("L")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:
        raise SkipFile(f"its colour mode ({image.mode}) is not supported") from None


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """Apply an embedded ICC profile (CMYK, wide-gamut RGB, gray) to reach sRGB RGB."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            target = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, target, outputMode="RGB")
            if converted is not None:
                return converted
        except Exception:  # a broken or mismatched profile: fall back to a plain conversion
            pass
    return image if image.mode == "RGB" else image.convert("RGB")


def downscale(image: Image.Image) -> Image.Image:
    """Longest side at most `MAX_STORED_SIDE`; never upscales."""
    longest = max(image.size)
    if longest <= MAX_STORED_SIDE:
        return image
    scale = MAX_STORED_SIDE / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def save_png(image: Image.Image, target: Path | BinaryIO) -> None:
    """Write the normalized image; no metadata (EXIF, GPS, ICC) is carried over."""
    image.save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY)
