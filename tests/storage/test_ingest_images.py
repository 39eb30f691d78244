"""Image decoding and normalization: every mode to upright 8-bit sRGB RGB, hostile files skipped."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from storage.ingest import IngestOptions
from storage.ingest.images import MAX_STORED_SIDE
from storage.settings import Limits
from tests.storage.ingest_support import encode, ingest, noise_image, png


def stored(result, index: int = 1) -> Image.Image:
    (path,) = (result.path / "images").glob(f"{index:04d}.*")
    image = Image.open(path)
    image.load()
    return image


def skip_reasons(result) -> dict[str, str]:
    return {s.file: s.reason for s in result.report.skipped}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">L", len(data)) + body + struct.pack(">L", zlib.crc32(body))


def header_bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims an enormous image."""
    ihdr = struct.pack(">LLBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + _png_chunk(b"IEND", b"")
    )


def test_zero_byte_image_is_skipped(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1)), ("empty.png", b"")])
    assert skip_reasons(result) == {"empty.png": "the file is empty (0 bytes)"}


def test_truncated_png_is_skipped(tmp_path: Path) -> None:
    data = png(2, (200, 200))
    result = ingest(tmp_path, [("a.png", png(1)), ("cut.png", data[: len(data) // 2])])
    assert skip_reasons(result) == {"cut.png": "the image is damaged or truncated"}


def test_pixel_limit_checked_from_header(tmp_path: Path) -> None:
    entries = [("a.png", png(1)), ("bomb.png", header_bomb_png(100_000, 100_000))]
    result = ingest(tmp_path, entries)
    assert skip_reasons(result) == {"bomb.png": "it has more pixels than the limit of 67,108,864"}


def test_image_over_configured_pixel_limit(tmp_path: Path) -> None:
    entries = [("a.png", png(1)), ("big.png", png(2, (300, 300)))]
    result = ingest(tmp_path, entries, limits=Limits(max_image_pixels=50_000))
    assert skip_reasons(result) == {"big.png": "it is 300×300 pixels; the limit is 50,000 pixels"}


def test_too_small_image_is_skipped(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1)), ("tiny.png", png(2, (32, 100)))])
    assert skip_reasons(result) == {
        "tiny.png": "it is only 32×100 px; the shortest side must be at least 64 px"
    }


def test_png_named_jpg_accepted_text_named_png_skipped(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("photo.jpg", png(1)), ("fake.png", b"just some text\n")])
    assert result.report.images == 1
    assert skip_reasons(result) == {
        "fake.png": "it is not an image we can read (PNG, JPEG, WebP, BMP, GIF, TIFF)"
    }


def test_heic_without_plugin_says_why(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
        result = ingest(tmp_path, [("a.png", png(1)), ("phone.heic", heic)])
        assert skip_reasons(result) == {
            "phone.heic": "HEIC images need the pillow-heif plugin, which is not installed"
        }
    else:
        pytest.skip("pillow-heif is installed")


def test_cmyk_jpeg_with_exif_rotation(tmp_path: Path) -> None:
    """Left half dark, EXIF orientation 6 (rotate 90° clockwise): top half dark, RGB out."""
    image = Image.new("CMYK", (120, 80), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (0, 0, 60, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    out = stored(ingest(tmp_path, [("cmyk.jpg", data)]))
    assert out.mode == "RGB" and out.size == (80, 120)
    assert max(out.getpixel((40, 10))) < 40
    assert min(out.getpixel((40, 110))) > 215
    assert "exif" not in out.info


def test_sixteen_bit_png(tmp_path: Path) -> None:
    image = Image.new("I;16", (96, 96), 0)
    image.paste(65535, (0, 0, 48, 96))
    image.paste(32896, (48, 0, 96, 96))  # 128 * 257
    out = stored(ingest(tmp_path, [("deep.png", encode(image))]))
    assert out.mode == "RGB"
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((80, 10)) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_tiff(tmp_path: Path, mode: str) -> None:
    image = Image.new(mode, (96, 96), 0)
    image.paste(1.0 if mode == "F" else 65535, (0, 0, 48, 96))
    out = stored(ingest(tmp_path, [("deep.tif", encode(image, "TIFF"))]))
    assert out.mode == "RGB"
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((80, 10)) == (0, 0, 0)


def test_rgba_transparent_becomes_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (96, 96), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 48, 96))
    out = stored(ingest(tmp_path, [("alpha.png", encode(image))]))
    assert out.mode == "RGB"
    assert out.getpixel((10, 10)) == (255, 255, 255)
    assert out.getpixel((80, 10)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["LA", "P", "1"])
def test_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    image = noise_image(3).convert(mode)
    params = {"transparency": 0} if mode == "P" else {}
    out = stored(ingest(tmp_path, [("m.png", encode(image, **params))]))
    assert out.mode == "RGB" and out.size == (96, 96)


def test_animated_gif_first_frame_with_warning(tmp_path: Path) -> None:
    frames = [noise_image(i).convert("P") for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    result = ingest(tmp_path, [("anim.gif", data)])
    assert result.report.images == 1
    assert "anim.gif is animated; only its first frame is used" in result.report.warnings


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF", "JPEG"])
def test_common_formats(tmp_path: Path, fmt: str) -> None:
    result = ingest(tmp_path, [(f"x.{fmt.lower()}", encode(noise_image(4), fmt))])
    assert result.report.images == 1 and stored(result).mode == "RGB"


def test_srgb_tagged_image_is_kept_as_uploaded(tmp_path: Path) -> None:
    """An sRGB profile needs no colour conversion: the upload is stored byte for byte."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(Image.new("RGB", (96, 96), (200, 100, 50)), icc_profile=icc)
    result = ingest(tmp_path, [("icc.png", data)])
    assert (result.path / "images" / "0001.png").read_bytes() == data


def test_cmyk_profile_is_applied_and_dropped(tmp_path: Path) -> None:
    """A CMYK JPEG with a profile is converted to sRGB RGB; the profile is not carried over."""
    image = Image.new("CMYK", (96, 96), (0, 0, 0, 0))
    out = stored(ingest(tmp_path, [("c.jpg", encode(image, "JPEG", quality=95))]))
    assert out.mode == "RGB" and min(out.getpixel((5, 5))) > 240
    assert "icc_profile" not in out.info


def test_large_image_is_downscaled(tmp_path: Path) -> None:
    image = noise_image(5, (3000, 200))
    out = stored(ingest(tmp_path, [("wide.jpg", encode(image, "JPEG"))]))
    assert out.size == (MAX_STORED_SIDE, 137)


def test_embedding_method_accepts_images(tmp_path: Path) -> None:
    result = ingest(tmp_path, [("a.png", png(1))], IngestOptions(method="embedding"))
    assert result.report.images == 1
