"""End to end through the emulator: upload quotas and the job limit are checked before the bot
downloads a byte (the emulator counts what its CDN served), a refused upload leaves nothing
on disk, `/dataset add` counts against the quota, and a long ingest shows its progress."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.settings import AtelierSettings
from bot import ingesting
from tests.bot.conftest import make_zip
from tests.bot.e2e_jobs import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FIRST = make_zip(6)
SECOND = make_zip(7)


@pytest.fixture
def settings(settings: AtelierSettings) -> AtelierSettings:
    """Room for the first zip's images, not for a second zip as well."""
    limits = settings.limits.model_copy(
        update={"member_storage_bytes": len(FIRST) + len(SECOND) // 2, "jobs_per_member": 5}
    )
    return settings.model_copy(update={"limits": limits})


def dataset_folders(settings: AtelierSettings) -> list[str]:
    root = settings.datasets_dir
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def incoming(settings: AtelierSettings) -> list[Path]:
    folder = settings.data_dir / "incoming"
    return list(folder.iterdir()) if folder.is_dir() else []


async def add_dataset(emu, user, name: str, zip_bytes: bytes):
    handle = await emu.run_slash_command(
        user,
        emu.default.channel,
        "dataset add",
        {"name": name},
        attachments={"dataset": ("set.zip", zip_bytes, "application/zip")},
    )
    return await handle.wait_followup(1, 30)


async def test_storage_quota_is_checked_before_download(emu, atelier, settings) -> None:
    d = emu.default
    job_id, reply = await train(emu, d.alice, FIRST)
    assert job_id, reply.content
    assert sum(emu.world.cdn_fetches.values()) == 1
    stored = dataset_folders(settings)
    assert len(stored) == 1

    refused = await add_dataset(emu, d.alice, "more", SECOND)  # /dataset add counts too
    assert "would pass it" in refused.content and "quota" in refused.content, refused.content
    assert refused.ephemeral
    assert sum(emu.world.cdn_fetches.values()) == 1  # the second zip was never downloaded
    assert dataset_folders(settings) == stored and incoming(settings) == []

    other_id, _ = await train(emu, d.bob, SECOND)  # the quota is per member
    assert other_id and len(dataset_folders(settings)) == 2


async def test_job_limit_is_checked_before_download(emu, atelier, settings, monkeypatch) -> None:
    d = emu.default
    monkeypatch.setattr(atelier.settings.limits, "jobs_per_member", 1)
    job_id, _ = await train(emu, d.alice, FIRST)
    assert job_id
    again, reply = await train(emu, d.alice, SECOND)
    assert again == 0 and "already have 1 job(s) queued or running" in reply.content
    assert sum(emu.world.cdn_fetches.values()) == 1
    assert len(dataset_folders(settings)) == 1 and incoming(settings) == []


def noise_zip(count: int, side: int) -> bytes:
    """Incompressible images: each one takes the decoder a moment."""
    import io
    import os
    import zipfile

    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
            png = io.BytesIO()
            image.save(png, "PNG", compress_level=1)
            zf.writestr(f"noise{i}.png", png.getvalue())
    return buf.getvalue()


async def test_long_ingest_shows_progress_in_the_reply(emu, atelier, monkeypatch) -> None:
    monkeypatch.setattr(ingesting, "PROGRESS_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(ingesting, "PROGRESS_POLL_SECONDS", 0.005)  # a quiet machine is quick
    monkeypatch.setattr(atelier.settings.limits, "member_storage_bytes", 1024**3)
    big = noise_zip(40, 384)
    d = emu.default
    handle = await emu.run_slash_command(
        d.bob,
        d.channel,
        "dataset add",
        {"name": "progress"},
        attachments={"dataset": ("set.zip", big, "application/zip")},
    )
    reply = await handle.wait_followup(1, 60)
    assert "Stored dataset `progress` (40 images)" in reply.content, reply.content
    assert handle.original is not None
    assert "Checking your images:" in handle.original.content
    assert "of 40 done" in handle.original.content
