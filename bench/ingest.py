"""Ingest benchmark: ingest time against decoding the same images once, stored bytes against
zip bytes, and the bot's peak memory while it ingests pixel-heavy uploads. Prints one JSON
object; not a test.

    python bench/ingest.py [--photos 120] [--uploads 10]

- `speed`: 120 photo-like (noisy) 1024-px images, a third each JPEG, PNG and WebP. Baseline:
  the time to decode every image once (`Image.open(...).load()`, one process, from the zip
  in memory), measured in the same run. Ingest runs with the decoding pool already started
  (as in the bot, where it lives as long as the process).
- `bytes`: stored bytes / zip bytes for that mixed set and for a JPEG + WebP photo set.
- `memory`: a child process (the "bot") ingests `--uploads` zips at once through the bot's
  own `Ingests` (its threads, the shared decoding pool), each holding pixel-heavy PNGs; its
  peak RSS is reported, and the decoding processes' peaks, against the stated bounds.
- `flat`: peak RSS of a 100- and a 1,000-image ingest (memory must not grow with the count).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its queue.py would shadow the standard library
FORMATS = ("JPEG", "PNG", "WEBP")
BOT_GROWTH_BOUND_MB = 64
"""Stated bound: the bot's peak RSS while ingesting stays within this of its idle peak (the
images are decoded in the pool's processes, each under `ingest_process_memory_bytes`)."""


def photo(seed: int, side: int) -> bytes:
    """Photo-like pixels: smooth colour regions plus sensor-like noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = Image.frombytes("RGB", (16, 12), rng.integers(0, 255, 16 * 12 * 3, "uint8").tobytes())
    base = np.asarray(small.resize((side, side * 3 // 4), Image.Resampling.BICUBIC), "int16")
    noisy = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype("uint8")
    return noisy.tobytes()


def encoded(seed: int, side: int, fmt: str) -> bytes:
    from PIL import Image

    image = Image.frombytes("RGB", (side, side * 3 // 4), photo(seed, side))
    buffer = io.BytesIO()
    params = {"compress_level": 6} if fmt == "PNG" else {"quality": 90}
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def make_zip(path: Path, count: int, side: int, formats: tuple[str, ...]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for index in range(count):
            fmt = formats[index % len(formats)]
            zf.writestr(f"img_{index:05d}.{fmt.lower()}", encoded(index, side, fmt))
            if index % 2 == 0:
                zf.writestr(f"img_{index:05d}.txt", f"a test picture number {index}")
    return path


def decode_once(zip_path: Path) -> float:
    """Seconds to decode every image in the zip once (the baseline)."""
    from PIL import Image

    with zipfile.ZipFile(zip_path) as zf:
        blobs = [zf.read(n) for n in zf.namelist() if not n.endswith(".txt")]
    start = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
    return time.perf_counter() - start


def ingest_seconds(zip_path: Path, datasets: Path) -> tuple[float, int, int]:
    """(seconds, images, stored bytes) of one ingest; the pool is started beforehand."""
    from storage.ingest import IngestOptions, ingest_zip
    from storage.settings import Limits

    start = time.perf_counter()
    result = ingest_zip(zip_path, datasets, IngestOptions(trigger="zq"), Limits())
    return time.perf_counter() - start, result.report.images, result.stored_bytes


def warm_pool(work: Path) -> None:
    """Start the decoding processes (the bot keeps them for its lifetime)."""
    from storage.ingest.pool import image_pool, pool_size
    from storage.settings import Limits

    pool = image_pool(Limits())
    list(pool.map(abs, range(pool_size(Limits()) * 4)))


def speed_and_bytes(work: Path, photos: int) -> dict:
    warm_pool(work)
    mixed = make_zip(work / "mixed.zip", photos, 1024, FORMATS)
    lossy = make_zip(work / "lossy.zip", photos, 1024, ("JPEG", "WEBP"))
    decode = decode_once(mixed)
    seconds, images, stored = ingest_seconds(mixed, work / "d1")
    _, _, lossy_stored = ingest_seconds(lossy, work / "d2")
    return {
        "speed": {
            "images": images,
            "decode_once_seconds": round(decode, 2),
            "ingest_seconds": round(seconds, 2),
            "ingest_over_decode": round(seconds / decode, 2),
            "goal_at_most": 2.0,
            "images_per_s": round(images / seconds, 1),
            "cores": len(os.sched_getaffinity(0)),
        },
        "bytes": {
            "mixed_zip_mb": round(mixed.stat().st_size / 1e6, 1),
            "mixed_stored_mb": round(stored / 1e6, 1),
            "mixed_stored_over_zip": round(stored / mixed.stat().st_size, 2),
            "jpeg_webp_zip_mb": round(lossy.stat().st_size / 1e6, 1),
            "jpeg_webp_stored_mb": round(lossy_stored / 1e6, 1),
            "jpeg_webp_stored_over_zip": round(lossy_stored / lossy.stat().st_size, 2),
            "goal_at_most": 1.5,
        },
    }


def heavy_png_zip(path: Path, seed: int, count: int = 2) -> Path:
    """PNGs of 6000x4000 (24 Mpx, 69 MiB decoded each): gradient plus noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for index in range(count):
            gradient = Image.linear_gradient("L").resize((6000, 4000))
            noise = Image.fromarray(rng.integers(0, 24, (4000, 6000), "uint8"))
            channels = [gradient, noise, Image.eval(gradient, lambda v: 255 - v)]
            buffer = io.BytesIO()
            Image.merge("RGB", channels).save(buffer, "PNG", compress_level=1)
            zf.writestr(f"heavy{index}.png", buffer.getvalue())
    return path


async def _bot_ingests(zips: list[Path], data_dir: Path) -> dict:
    from atelier.settings import load_settings
    from bot.ingesting import Ingests
    from storage.ingest import IngestOptions

    settings = load_settings(data_dir=data_dir)
    ingests = Ingests(settings)
    before = peak_kb()
    start = time.perf_counter()
    results = await asyncio.gather(
        *(ingests.ingest(path, IngestOptions(trigger=f"t{i}")) for i, path in enumerate(zips))
    )
    seconds = time.perf_counter() - start
    workers = _worker_peaks_mb()
    ingests.close()
    return {
        "uploads": len(zips),
        "images": sum(r.report.images for r in results),
        "seconds": round(seconds, 1),
        "bot_rss_before_mb": round(before / 1024, 1),
        "bot_peak_rss_mb": round(peak_kb() / 1024, 1),
        "bot_growth_mb": round((peak_kb() - before) / 1024, 1),
        "bot_growth_bound_mb": BOT_GROWTH_BOUND_MB,
        "decoder_peak_rss_mb": workers,
        "decoder_bound_mb": settings.limits.ingest_process_memory_bytes // 1024**2,
    }


def peak_kb(pid: int | str = "self") -> int:
    """VmHWM, the process's own peak RSS (ru_maxrss would include the parent's at fork)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith("VmHWM:")).split()[1])


def _worker_peaks_mb() -> list[float]:
    from storage.ingest import pool

    held = pool._pool
    if held is None:
        return []
    peaks = []
    for pid in list(getattr(held[1], "_processes", {}) or {}):
        try:
            peaks.append(round(peak_kb(pid) / 1024, 1))
        except OSError:
            continue
    return peaks


def memory_child(zips: list[Path], data_dir: Path) -> None:
    """The 'bot' process: import what the bot imports, then ingest all uploads at once."""
    import bot.client  # noqa: F401  (the bot's import weight is part of its RSS)

    print(json.dumps(asyncio.run(_bot_ingests(zips, data_dir))))


def memory(work: Path, uploads: int) -> dict:
    sources = [heavy_png_zip(work / f"heavy{i}.zip", i) for i in range(2)]
    zips = []
    for index in range(uploads):
        target = work / f"upload{index}.zip"
        os.link(sources[index % 2], target)
        zips.append(target)
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(work / "data"), *map(str, zips)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["zip_mb_each"] = round(sources[0].stat().st_size / 1e6, 1)
    result["bot_within_bound"] = result["bot_growth_mb"] <= BOT_GROWTH_BOUND_MB
    return result


def flat_child(zip_path: Path, datasets: Path) -> None:
    from storage.ingest import IngestOptions, ingest_zip
    from storage.settings import Limits

    result = ingest_zip(zip_path, datasets, IngestOptions(trigger="zq"), Limits())
    print(json.dumps({"images": result.report.images, "peak_kb": peak_kb()}))


def flat(work: Path, small: int, large: int) -> dict:
    def run(count: int) -> float:
        path = make_zip(work / f"flat{count}.zip", count, 384, ("JPEG",))
        out = subprocess.run(
            [sys.executable, __file__, "--flat-child", str(path), str(work / f"f{count}")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out)["peak_kb"] / 1024

    low, high = run(small), run(large)
    return {
        f"peak_rss_mb_{small}": round(low, 1),
        f"peak_rss_mb_{large}": round(high, 1),
        "within_20pct": high / low <= 1.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=120)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "memory", "flat"])
    parser.add_argument("--memory-child", nargs="+", type=Path)
    parser.add_argument("--flat-child", nargs=2, type=Path)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[1:], args.memory_child[0])
        return
    if args.flat_child:
        flat_child(*args.flat_child)
        return
    random.seed(0)
    report: dict = {"bench": "ingest"}
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        if "speed" not in args.skip:
            report.update(speed_and_bytes(root, args.photos))
        if "memory" not in args.skip:
            report["memory"] = memory(root, args.uploads)
        if "flat" not in args.skip:
            report["flat"] = flat(root, args.small, args.large)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
