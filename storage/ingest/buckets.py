"""Aspect-ratio buckets: pure functions shared by the ingest report and the trainer.

A bucket is a (width, height) in 64-px steps whose area is about resolution². Sides range
from half the resolution to twice it (aspect ratios up to 4:1), as kohya's trainers do.
"""

from __future__ import annotations

import math

STEP = 64


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """All buckets at a resolution, sorted by width (portrait first)."""
    area = resolution * resolution
    low, high = max(STEP, resolution // 2 // STEP * STEP), resolution * 2
    sizes: set[tuple[int, int]] = set()
    for width in range(low, high + 1, STEP):
        height = min(high, area // width // STEP * STEP)
        if height >= low:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def nearest_bucket(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The full-size bucket closest in aspect ratio (ties: the larger area)."""
    aspect = math.log(width / height)

    def distance(size: tuple[int, int]) -> tuple[float, int]:
        return abs(math.log(size[0] / size[1]) - aspect), -size[0] * size[1]

    return min(bucket_sizes(resolution), key=distance)


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket an image trains in, never upscaled.

    The nearest full-size bucket, or, for an image smaller than it, the same shape shrunk in
    64-px steps to fit inside the image (at least one step per side).
    """
    bucket_w, bucket_h = nearest_bucket(width, height, resolution)
    if width >= bucket_w and height >= bucket_h:
        return bucket_w, bucket_h
    scale = min(width / bucket_w, height / bucket_h)
    return (
        max(STEP, int(bucket_w * scale) // STEP * STEP),
        max(STEP, int(bucket_h * scale) // STEP * STEP),
    )


def needs_upscale(width: int, height: int, resolution: int) -> bool:
    """True when an image is smaller than its full-size bucket on either side."""
    bucket_w, bucket_h = nearest_bucket(width, height, resolution)
    return width < bucket_w or height < bucket_h
