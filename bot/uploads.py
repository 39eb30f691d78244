"""A dataset zip from a slash command (attachment or https link) → downloaded, ingested.

Shared by `/train` (unnamed datasets) and `/dataset add` (named ones)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import discord

from bot import downloads
from bot.db import run_db
from bot.errors import BadInput, DatasetRefused, LimitReached
from storage.ingest import IngestError, IngestOptions, IngestResult, ingest_zip
from storage.retention import DiskFull, require_free_space


def require_one_source(dataset: discord.Attachment | None, url: str | None) -> None:
    if (dataset is None) == (url is None):
        raise BadInput("Give exactly one of `dataset` (a zip) or `dataset_url` (a link).")


async def require_disk_space(settings: Any) -> None:
    """New work is refused with one clear line while the data folder is nearly full."""
    try:
        await run_db(require_free_space, settings)
    except DiskFull as error:
        raise LimitReached(str(error)) from None


async def ingest_upload(
    settings: Any, dataset: discord.Attachment | None, url: str | None, options: IngestOptions
) -> IngestResult:
    """Download to `data_dir/incoming` (size-capped), ingest in a thread, remove the zip."""
    await require_disk_space(settings)
    incoming = settings.data_dir / "incoming"
    await run_db(incoming.mkdir, parents=True, exist_ok=True)
    path = incoming / f"{uuid.uuid4().hex}.zip"
    try:
        await download(settings, dataset, url, path)
        return await run_db(ingest_zip, path, settings.datasets_dir, options, settings.limits)
    except IngestError as error:
        raise DatasetRefused(f"Dataset refused: {error.message}") from None
    finally:
        with contextlib.suppress(OSError):
            await run_db(Path.unlink, path, missing_ok=True)


async def download(
    settings: Any, dataset: discord.Attachment | None, url: str | None, path: Path
) -> None:
    cap = settings.limits.max_zip_bytes
    if dataset is not None:
        if not dataset.filename.lower().endswith(".zip"):
            raise BadInput("The dataset must be a .zip file.")
        await downloads.download_attachment(dataset, path, cap)
    else:
        await downloads.download_url(
            url or "", path, cap, allow_insecure=settings.discord.allow_insecure_dataset_urls
        )
