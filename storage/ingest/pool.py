"""The decoding pool: checks and re-encodes images in processes of their own.

Why processes: decoding is CPU work that must never run on (or starve) the bot's event loop or
its database thread pool, and one hostile image must not be able to take the bot down. Each
worker process
- reads its zip entry itself (the caller never holds image bytes, so its memory stays flat),
- runs under an address-space limit (`Limits.ingest_process_memory_bytes`): an image too
  large to decode within it is skipped with a message instead of growing without bound,
- runs at a lower CPU priority (nice 10), so the bot's loop and database calls win the cores,
- writes the stored file into the dataset's temporary folder and returns only metadata.

The pool is shared by every ingest in the process (the bot's concurrent uploads queue on it)
and sized to the cores. A worker that dies (killed by the kernel, a crashing decoder) breaks
the pool: the ingest that saw it is refused cleanly and the next one gets a fresh pool.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import threading
import zipfile
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from storage.ingest.errors import IngestError, SkipFile
from storage.ingest.stored import prepare_image
from storage.ingest.unpack import ByteBudget, read_entry
from storage.settings import Limits

WORKER_NICENESS = 10
_ZIP_MAGIC = b"PK\x03\x04"
_lock = threading.Lock()
_pool: tuple[tuple[int, int], ProcessPoolExecutor] | None = None


@dataclass(frozen=True)
class Outcome:
    """What a worker did with one entry: stored it (`file` set), skipped it, or refused the
    whole upload (`error`). `bytes_read` counts against the zip's unpacked-size budget."""

    bytes_read: int
    file: str = ""
    kept: bool = False
    stored_bytes: int = 0
    size: tuple[int, int] = (0, 0)
    dhash: int = 0
    digest: str = ""
    animated: bool = False
    skip: str = ""
    error: str = ""


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def pool_size(limits: Limits) -> int:
    return limits.ingest_processes or cores()


def image_pool(limits: Limits) -> Executor:
    """The process-wide pool for these limits (recreated when they change or it broke)."""
    global _pool
    key = (pool_size(limits), limits.ingest_process_memory_bytes)
    with _lock:
        if _pool is not None and (_pool[0] != key or _broken(_pool[1])):
            _pool[1].shutdown(wait=False, cancel_futures=True)
            _pool = None
        if _pool is None:
            context = multiprocessing.get_context("forkserver")
            executor = ProcessPoolExecutor(
                key[0], mp_context=context, initializer=_init_worker, initargs=(key[1],)
            )
            _pool = (key, executor)
        return _pool[1]


def _broken(executor: ProcessPoolExecutor) -> bool:
    return bool(getattr(executor, "_broken", False))


def discard_pool() -> None:
    """Shut the shared pool down (tests, and after a worker died)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool[1].shutdown(wait=False, cancel_futures=True)
            _pool = None


def _init_worker(memory_bytes: int) -> None:
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    if memory_bytes > 0:
        with contextlib.suppress(ValueError, OSError):
            _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


@lru_cache(maxsize=4)
def _open_zip(path: str, _mtime_ns: int) -> zipfile.ZipFile:
    """A worker keeps the zips it is reading open (one upload sends it many entries)."""
    return zipfile.ZipFile(path)


def store_entry(
    zip_path: str, info: zipfile.ZipInfo, limits: Limits, target: str, stem: str
) -> Outcome:
    """Read one image entry, check it, and write what is stored as `target/stem<suffix>`.

    Runs in a worker process; never raises for a bad image (the outcome says what happened)."""
    try:
        zf = _open_zip(zip_path, os.stat(zip_path).st_mtime_ns)
        data = read_entry(zf, info, limits, ByteBudget(limits.max_uncompressed_bytes))
    except SkipFile as skip:
        return Outcome(0, skip=skip.reason)
    except IngestError as error:
        return Outcome(0, error=error.message)
    except MemoryError:
        return Outcome(0, skip="it is too large to unpack within this server's memory limit")
    except OSError:
        return Outcome(0, error="the uploaded zip could not be read")
    read = len(data)
    if data.startswith(_ZIP_MAGIC):
        return Outcome(read, skip="a zip inside the zip is not unpacked")
    try:
        stored = prepare_image(data, limits)
        del data
        name = stem + stored.suffix
        (Path(target) / name).write_bytes(stored.data)
    except SkipFile as skip:
        return Outcome(read, skip=skip.reason)
    except MemoryError:
        return Outcome(read, skip="it is too large to decode within this server's memory limit")
    return Outcome(
        read,
        file=name,
        kept=stored.kept,
        stored_bytes=len(stored.data),
        size=stored.size,
        dhash=stored.dhash,
        digest=stored.digest,
        animated=stored.animated,
    )


def result_of(future: Future[Outcome]) -> Outcome:
    """The outcome, or a clean refusal when the worker process died under it."""
    try:
        return future.result()
    except BrokenProcessPool:
        discard_pool()
        raise IngestError(
            "an image stopped the image decoder (it may need more memory than this server "
            "allows); remove very large images and try again"
        ) from None
