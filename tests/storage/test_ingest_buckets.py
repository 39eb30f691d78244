"""Aspect-ratio buckets (pure functions shared with the trainer)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from storage.ingest.buckets import bucket_for, bucket_sizes, nearest_bucket, needs_upscale


def test_bucket_sizes_shape() -> None:
    for resolution in (512, 768, 1024):
        sizes = bucket_sizes(resolution)
        assert (resolution, resolution) in sizes
        for width, height in sizes:
            assert width % 64 == 0 and height % 64 == 0
            assert width * height <= resolution * resolution
            assert (height, width) in sizes


def test_nearest_bucket_examples() -> None:
    assert nearest_bucket(1000, 1000, 512) == (512, 512)
    assert nearest_bucket(1920, 1080, 512) == (640, 384)
    assert nearest_bucket(1080, 1920, 512) == (384, 640)


@settings(max_examples=50, deadline=None)
@given(st.integers(64, 4096), st.integers(64, 4096), st.sampled_from([512, 768, 1024]))
def test_bucket_for_never_upscales(width: int, height: int, resolution: int) -> None:
    bucket_w, bucket_h = bucket_for(width, height, resolution)
    assert bucket_w % 64 == 0 and bucket_h % 64 == 0
    assert bucket_w <= max(width, 64) and bucket_h <= max(height, 64)
    if not needs_upscale(width, height, resolution):
        assert (bucket_w, bucket_h) == nearest_bucket(width, height, resolution)


def test_small_image_gets_smaller_bucket() -> None:
    assert bucket_for(300, 400, 512) == (256, 384)
    assert needs_upscale(300, 400, 512)
