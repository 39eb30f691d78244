"""Ingest benchmark: throughput and peak memory. Prints one JSON object; not a test.

    python bench/ingest.py [--mixed 300] [--small 100] [--large 1000]

Each measurement runs in a fresh subprocess so `ru_maxrss` (peak RSS) is its own. Memory
must stay flat in the number of images (images are processed one at a time): the 1,000-image
run may use at most 20% more peak RSS than the 100-image run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("JPEG", "PNG", "WEBP")


def _image_bytes(seed: int, side: int, fmt: str) -> bytes:
    """Cheap, distinct content: random 16x16 colour blocks, smoothly upscaled."""
    from PIL import Image

    rng = random.Random(seed)
    small = Image.frombytes("RGB", (16, 12), rng.randbytes(16 * 12 * 3))
    image = small.resize((side, side * 3 // 4), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    params = {"compress_level": 1} if fmt == "PNG" else {"quality": 90}
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def make_zip(path: Path, count: int, side: int, mixed: bool) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for index in range(count):
            fmt = FORMATS[index % len(FORMATS)] if mixed else "JPEG"
            zf.writestr(f"img_{index:05d}.{fmt.lower()}", _image_bytes(index, side, fmt))
            if index % 2 == 0:
                zf.writestr(f"img_{index:05d}.txt", f"a test picture number {index}")
    return path


def child(zip_path: Path, datasets: Path) -> None:
    """Run one ingest and report time and this process's peak RSS."""
    sys.path.insert(0, str(ROOT))
    from storage.ingest import IngestOptions, ingest_zip
    from storage.settings import Limits

    start = time.perf_counter()
    result = ingest_zip(zip_path, datasets, IngestOptions(trigger="zq"), Limits())
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    report = {"images": result.report.images, "seconds": seconds, "cpu_seconds": cpu}
    print(json.dumps({**report, "peak_kb": usage.ru_maxrss}))


def measure(zip_path: Path, datasets: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(zip_path), str(datasets)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out)
    return {
        "images": data["images"],
        "seconds": round(data["seconds"], 2),
        "images_per_s": round(data["images"] / data["seconds"], 1),
        "images_per_cpu_s": round(data["images"] / data["cpu_seconds"], 1),
        "peak_rss_mb": round(data["peak_kb"] / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixed", type=int, default=300)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--child", nargs=2, type=Path)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        mixed = measure(make_zip(root / "mixed.zip", args.mixed, 1024, True), root / "d1")
        small = measure(make_zip(root / "small.zip", args.small, 384, False), root / "d2")
        large = measure(make_zip(root / "large.zip", args.large, 384, False), root / "d3")
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    print(
        json.dumps(
            {
                "mixed_1024px": mixed,
                f"rss_{args.small}": small,
                f"rss_{args.large}": large,
                "rss_ratio": round(ratio, 3),
                "rss_flat_within_20pct": ratio <= 1.2,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
