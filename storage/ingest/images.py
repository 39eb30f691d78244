"""Decoding an uploaded image into the one form the trainer sees: 8-bit sRGB, upright.

Most uploads are already in that form and are stored as they came (see `stored.py`); this
module checks them and normalizes the rest. Pixels are checked from the header before
anything is decoded (a 1 KB PNG can claim 100,000 x 100,000 pixels), and only the formats
listed in `READ_FORMATS` are tried, so Pillow never hands a file to an external program (EPS
would run Ghostscript).

Downscale: images are stored with their longest side at most `MAX_STORED_SIDE` (2048), about
twice the largest training resolution (SDXL's 1024). Bucketing never needs more than that,
crops and flips keep enough detail, and a 6000-px phone photo would otherwise cost ~18x the
decode time and disk of every epoch's read for no training benefit.

Memory: everything happens while the decoded file is open, without copies of the full-size
image: a large image is reduced (integer box filter, then Lanczos) before its colours are
converted, so the peak is about twice the decoded buffer (a 64-Mpx RGB PNG: ~192 MiB decoded).
JPEGs that will be shrunk anyway are decoded at 1/2..1/8 scale by libjpeg (`draft`).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageCms, UnidentifiedImageError, features

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
    with open_checked(data, limits) as image:
        size = image.size
        animated = bool(getattr(image, "is_animated", False))
        source_format = image.format or "?"
        draft_to_stored_size(image)
        rgb = normalize_loaded(image)
    rgb.info = {}  # the pixels are sRGB now; no profile, EXIF or GPS is carried over
    return DecodedImage(rgb, size, source_format, animated)


def open_checked(data: bytes, limits: Limits) -> Image.Image:
    """The opened (not yet decoded) image, its pixel count and sides checked from the header."""
    if not data:
        raise SkipFile("the file is empty (0 bytes)")
    image = _open(data, limits)
    try:
        _check_size(image.size, limits)
    except SkipFile:
        image.close()
        raise
    return image


def load_checked(image: Image.Image) -> None:
    """Decode the pixels; damaged data, and too little memory for them, skip the file."""
    try:
        image.load()
    except MemoryError:
        raise SkipFile("it is too large to decode within this server's memory limit") from None
    except Exception:  # Pillow raises many types on damaged data
        raise SkipFile("the image is damaged or truncated") from None


def normalize_loaded(image: Image.Image) -> Image.Image:
    """Decode (if needed) and normalize an open image; returns a new, independent image."""
    load_checked(image)
    try:
        result = downscale_first(image)
        return result if result is not image else image.copy()
    except SkipFile:
        raise
    except MemoryError:
        raise SkipFile("it is too large to decode within this server's memory limit") from None
    except Exception:
        raise SkipFile("the image is damaged or truncated") from None


def downscale_first(image: Image.Image) -> Image.Image:
    """Eight-bit, shrunk to `MAX_STORED_SIDE`, then upright sRGB RGB (see the module doc)."""
    icc = image.info.get("icc_profile")
    orientation = orientation_of(image)
    image = _eight_bit(image)
    image = downscale(image)
    return to_rgb(image, icc=icc, orientation=orientation)


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation (1..8); 1 when absent or unreadable."""
    try:
        value = image.getexif().get(0x0112, 1)
        return value if isinstance(value, int) and 1 <= value <= 8 else 1
    except Exception:  # malformed EXIF: keep the pixels as stored
        return 1


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


def draft_to_stored_size(image: Image.Image) -> None:
    """Let the JPEG decoder shrink by 1/2..1/8 for free when we would downscale anyway."""
    if image.format not in ("JPEG", "MPO") or max(image.size) <= MAX_STORED_SIDE:
        return
    scale = MAX_STORED_SIDE / max(image.size)
    image.draft(image.mode, (round(image.width * scale), round(image.height * scale)))


def to_rgb(
    image: Image.Image, *, icc: bytes | None = None, orientation: int | None = None
) -> Image.Image:
    """Upright, 8-bit, sRGB, RGB; transparent pixels become white. May return `image`."""
    icc = image.info.get("icc_profile") if icc is None else icc
    image = _upright(image, orientation_of(image) if orientation is None else orientation)
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


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation (a new image), or return `image` when it is upright."""
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


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
    """Longest side at most `MAX_STORED_SIDE`; never upscales. May return `image`."""
    longest = max(image.size)
    if longest <= MAX_STORED_SIDE:
        return image
    scale = MAX_STORED_SIDE / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.mode not in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "I", "F"):
        image = _convert(image, "RGBA" if "A" in image.mode else "RGB")
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def save_png(image: Image.Image, target: Path | BinaryIO) -> None:
    """Write the normalized image; no metadata (EXIF, GPS, ICC) is carried over."""
    image.save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_STRATEGY)
