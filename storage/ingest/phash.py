"""Perceptual hashing (dHash) with Pillow only, for near-duplicate detection.

dHash shrinks the image to 9x8 gray and records whether each pixel is brighter than its
right neighbour: 64 bits that survive resizing, recompression and small colour shifts.
Two images whose hashes differ in at most `NEAR_DUPLICATE_BITS` bits look alike.
"""

from __future__ import annotations

import itertools

from PIL import Image

HASH_SIDE = 8
NEAR_DUPLICATE_BITS = 6
MAX_PAIRS = 200


def dhash(image: Image.Image) -> int:
    """64-bit difference hash of an image."""
    gray = image.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.Resampling.BOX)
    pixels = list(gray.getdata())
    bits = 0
    for row in range(HASH_SIDE):
        line = pixels[row * (HASH_SIDE + 1) : (row + 1) * (HASH_SIDE + 1)]
        for left, right in itertools.pairwise(line):
            bits = (bits << 1) | (left > right)
    return bits


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicates(
    hashes: list[int], threshold: int = NEAR_DUPLICATE_BITS, limit: int = MAX_PAIRS
) -> list[tuple[int, int, int]]:
    """Index pairs (i, j, distance), i < j, at most `threshold` bits apart, first `limit`."""
    pairs: list[tuple[int, int, int]] = []
    for i, first in enumerate(hashes):
        for j in range(i + 1, len(hashes)):
            distance = (first ^ hashes[j]).bit_count()
            if distance <= threshold:
                pairs.append((i, j, distance))
                if len(pairs) >= limit:
                    return pairs
    return pairs
