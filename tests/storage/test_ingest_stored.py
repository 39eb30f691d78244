"""What ingest stores: the upload's own bytes when they are already fine, a re-encoding (JPEG
q95 for lossy sources, WebP lossless for lossless ones) when they must change; decoding in
the pool, with bounded memory, and progress as it goes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from storage.ingest import IngestOptions, ingest_zip
from storage.settings import Limits
from tests.storage.ingest_support import captions, encode, ingest, make_zip, noise_image

ROOT = Path(__file__).resolve().parents[2]


def stored_files(result) -> list[Path]:
    return [result.path / row["file"] for row in captions(result)]


def test_fine_uploads_are_stored_byte_identical(tmp_path: Path) -> None:
    uploads = {
        "a.jpg": encode(noise_image(1, (120, 90)), "JPEG", quality=88),
        "b.png": encode(noise_image(2, (90, 120))),
        "c.webp": encode(noise_image(3), "WEBP", quality=80),
        "d.jpg": encode(noise_image(4).convert("L"), "JPEG"),  # 8-bit gray needs no change
        "e.webp": encode(noise_image(5), "WEBP", lossless=True),
    }
    result = ingest(tmp_path, list(uploads.items()))
    files = stored_files(result)
    assert [f.suffix for f in files] == [".jpg", ".png", ".webp", ".jpg", ".webp"]
    assert [f.read_bytes() for f in files] == list(uploads.values())
    meta = json.loads((result.path / "dataset.json").read_text())
    assert meta["kept_as_uploaded"] == 5 and meta["format"] == 2
    assert meta["stored_bytes"] == sum(map(len, uploads.values())) == result.stored_bytes


def test_content_id_hashes_the_stored_bytes(tmp_path: Path) -> None:
    """Same pixels, another encoding: another stored file, so another dataset id."""
    image = noise_image(6)
    first = ingest(tmp_path, [("a.png", encode(image, compress_level=1))], name="1.zip")
    second = ingest(tmp_path, [("a.png", encode(image, compress_level=9))], name="2.zip")
    same = ingest(tmp_path, [("other-name.png", encode(image, compress_level=1))], name="3.zip")
    assert first.dataset_id != second.dataset_id
    assert same.dataset_id == first.dataset_id and same.reused


def _exif_rotated(fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(noise_image(7, (128, 64)), fmt, exif=exif.tobytes())


def test_images_that_must_change_are_reencoded(tmp_path: Path) -> None:
    rgba = noise_image(8, (96, 96), "RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # transparent: becomes white
    entries = [
        ("a.jpg", _exif_rotated("JPEG")),  # lossy source, rotation -> JPEG
        ("b.png", encode(rgba)),  # lossless source, alpha -> WebP lossless
        ("c.webp", encode(rgba, "WEBP", quality=80)),  # lossy WebP with alpha -> JPEG
        ("d.tif", encode(noise_image(9), "TIFF")),  # a format not kept -> WebP lossless
        ("e.png", encode(noise_image(10, (3000, 100)))),  # too large -> downscaled, lossless
    ]
    result = ingest(tmp_path, entries)
    files = stored_files(result)
    assert [f.suffix for f in files] == [".jpg", ".webp", ".jpg", ".webp", ".webp"]
    with Image.open(files[0]) as rotated:
        assert rotated.size == (64, 128) and not rotated.getexif().get(0x0112)
    with Image.open(files[1]) as flat:
        assert flat.mode == "RGB"
        assert flat.getpixel((0, 0)) == (255, 255, 255)
        assert flat.getpixel((50, 50)) == rgba.getpixel((50, 50))[:3]  # lossless
    with Image.open(files[3]) as tiff:
        assert list(tiff.getdata()) == list(noise_image(9).getdata())
    with Image.open(files[4]) as wide:
        assert wide.size == (2048, 68)
    meta = json.loads((result.path / "dataset.json").read_text())
    assert meta["kept_as_uploaded"] == 0
    assert meta["image_formats"] == {".jpg": 2, ".webp": 3}


def test_damaged_jpeg_is_found_by_the_scaled_check(tmp_path: Path) -> None:
    data = encode(noise_image(11, (512, 512)), "JPEG", quality=95)
    result = ingest(tmp_path, [("a.png", encode(noise_image(1))), ("cut.jpg", data[:-4000])])
    assert {s.file: s.reason for s in result.report.skipped} == {
        "cut.jpg": "the image is damaged or truncated"
    }


def test_progress_is_reported_per_image(tmp_path: Path) -> None:
    entries = [(f"{i}.png", encode(noise_image(i))) for i in range(5)] + [("x.png", b"junk")]
    seen: list[tuple[int, int]] = []
    zip_path = make_zip(tmp_path / "p.zip", entries)
    ingest_zip(zip_path, tmp_path / "d", IngestOptions(), Limits(), progress=_append(seen))
    assert seen == [(i, 6) for i in range(1, 7)]


def _append(seen: list[tuple[int, int]]):
    return lambda done, total: seen.append((done, total))


def _huge_png_zip(path: Path, side: int = 8192) -> Path:
    """A 64-Mpx PNG (small on disk: a gradient) and one ordinary image."""
    huge = Image.radial_gradient("L").resize((side, side)).convert("RGB")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("huge.png", encode(huge, compress_level=1))
        zf.writestr("small.png", encode(noise_image(12)))
    return path


_MEASURE = """
import json, sys
from pathlib import Path
from storage.ingest import IngestOptions, ingest_zip
from storage.settings import Limits
def peak_kb():  # VmHWM: this process's own peak (ru_maxrss also counts the parent's at fork)
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith("VmHWM:")).split()[1])
before = peak_kb()
limits = Limits(ingest_process_memory_bytes=int(sys.argv[3]))
result = ingest_zip(Path(sys.argv[1]), Path(sys.argv[2]), IngestOptions(), limits)
after = peak_kb()
skipped = {s.file: s.reason for s in result.report.skipped}
print(json.dumps({"grew_mb": (after - before) / 1024, "images": result.report.images,
                  "skipped": skipped}))
"""


def _ingest_apart(zip_path: Path, datasets: Path, memory: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(zip_path), str(datasets), str(memory)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_64_mpx_png_is_decoded_outside_the_caller(tmp_path: Path) -> None:
    """Decoded RGB it is 192 MiB: the ingesting process (the bot) must not hold it."""
    zip_path = _huge_png_zip(tmp_path / "huge.zip")
    measured = _ingest_apart(zip_path, tmp_path / "d", 1536 * 1024**2)
    assert measured["images"] == 2 and measured["skipped"] == {}
    assert measured["grew_mb"] < 64


@pytest.mark.slow
def test_64_mpx_png_over_the_memory_limit_is_skipped_cleanly(tmp_path: Path) -> None:
    zip_path = _huge_png_zip(tmp_path / "huge.zip")
    measured = _ingest_apart(zip_path, tmp_path / "d", 256 * 1024**2)
    assert measured["images"] == 1
    assert measured["skipped"] == {
        "huge.png": "it is too large to decode within this server's memory limit"
    }


def test_digest_is_sha256_of_stored_bytes(tmp_path: Path) -> None:
    from storage.ingest.stored import prepare_image

    data = encode(noise_image(13), "JPEG")
    stored = prepare_image(data, Limits())
    assert stored.kept and stored.digest == hashlib.sha256(data).hexdigest()
