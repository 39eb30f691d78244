"""A dataset zip from a slash command (attachment or https link) → downloaded, ingested.

Shared by `/train` (unnamed datasets) and `/dataset add` (named ones). With the command's
interaction, the upload goes through the bot's `Ingests` (bot/ingesting.py): quotas and the
job limit before the download, its own threads, progress, and the stored bytes checked
against the quotas after ingest (a refused new folder is deleted)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import discord

from bot import downloads
from bot.db import run_db
from bot.errors import BadInput, DatasetRefused, LimitReached
from bot.ingesting import Ingests, ingests_of
from storage import quotas
from storage.ingest import IngestError, IngestOptions, IngestResult
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
    settings: Any,
    dataset: discord.Attachment | None,
    url: str | None,
    options: IngestOptions,
    *,
    interaction: discord.Interaction | None = None,
    job_limit: int | None = None,
) -> IngestResult:
    """Download to `data_dir/incoming` (size-capped), ingest, remove the zip."""
    if dataset is not None and not dataset.filename.lower().endswith(".zip"):
        raise BadInput("The dataset must be a .zip file.")
    await require_disk_space(settings)
    ingests = ingests_of(interaction.client if interaction else None, settings)
    if interaction is None:
        return await _fetch_and_ingest(ingests, settings, dataset, url, options, None)
    engine = interaction.client.engine  # type: ignore[attr-defined]
    guild_id, user_id = interaction.guild_id, interaction.user.id
    expected = dataset.size if dataset is not None else 0
    async with ingests.admitted(engine, guild_id, user_id, expected, job_limit):
        result = await _fetch_and_ingest(ingests, settings, dataset, url, options, interaction)
        if not result.reused:
            await _check_stored(ingests, engine, guild_id, user_id, result)
        return result


async def _fetch_and_ingest(
    ingests: Ingests,
    settings: Any,
    dataset: discord.Attachment | None,
    url: str | None,
    options: IngestOptions,
    interaction: discord.Interaction | None,
) -> IngestResult:
    incoming = settings.data_dir / "incoming"
    await ingests.io(_mkdir, incoming)
    path = incoming / f"{uuid.uuid4().hex}.zip"
    try:
        await download(settings, dataset, url, path, ingests)
        return await ingests.ingest(path, options, interaction)
    except IngestError as error:
        raise DatasetRefused(f"Dataset refused: {error.message}") from None
    finally:
        with contextlib.suppress(OSError):
            await ingests.io(_unlink, path)


async def _check_stored(
    ingests: Ingests, engine: Any, guild_id: int | None, user_id: int, result: IngestResult
) -> None:
    """The quotas again, with the bytes actually stored; a refused new folder is deleted."""
    limits = ingests.settings.limits
    try:
        await run_db(
            quotas.check_after_ingest, engine, guild_id, user_id, result.stored_bytes, limits
        )
    except quotas.QuotaExceeded as error:
        await discard_new(engine, result)
        raise LimitReached(str(error)) from None


async def discard_new(engine: Any, result: Any) -> None:
    """Delete a dataset folder this upload created when nothing came to refer to it (the
    upload was refused after ingest: job limit, name taken, quota)."""
    if getattr(result, "reused", True):
        return
    await run_db(quotas.discard_if_unreferenced, engine, Path(result.path), result.dataset_id)


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def download(
    settings: Any,
    dataset: discord.Attachment | None,
    url: str | None,
    path: Path,
    ingests: Ingests | None = None,
) -> None:
    cap = settings.limits.max_zip_bytes
    run_io = ingests.io if ingests is not None else None
    if dataset is not None:
        if not dataset.filename.lower().endswith(".zip"):
            raise BadInput("The dataset must be a .zip file.")
        await downloads.download_attachment(dataset, path, cap, run_io=run_io)
    else:
        await downloads.download_url(
            url or "",
            path,
            cap,
            allow_insecure=settings.discord.allow_insecure_dataset_urls,
            run_io=run_io,
        )
