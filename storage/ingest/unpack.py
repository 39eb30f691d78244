"""Reading an uploaded zip safely: check the whole directory first, then stream entries.

Nothing here writes a file: entries come back as bytes, one at a time, and the caller stores
what it derives from them under names it chooses. Zip names are therefore never used as
paths; hostile names (absolute, `..`, symlinks, devices) still refuse the whole upload,
because a zip that carries them was not made by an artist's file manager.

Limits are enforced twice: on the sizes the central directory declares (cheap, before any
decompression) and on the bytes actually decompressed while streaming, since declared sizes
can lie. Overlapping entries (the "quoted overlap" zip bomb, where many directory records
point into one compressed stream) are found from the local header extents.
"""

from __future__ import annotations

import itertools
import re
import stat
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from storage.ingest.errors import IngestError, SkipFile
from storage.settings import Limits

CHUNK_BYTES = 1 << 20
RATIO_GRACE_BYTES = 1 << 20
"""Entries smaller than this skip the ratio check: a flat-colour BMP legitimately deflates
1000:1, and small entries cannot bomb anything (the total limit still counts them)."""

CENTRAL_BYTES_PER_FILE = 2048
"""Upper bound on the central directory size per allowed file, checked before Python's
zipfile parses it (parsing millions of records would itself exhaust memory)."""

IGNORED_BASENAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})

_EOCD = b"PK\x05\x06"
_EOCD_STRUCT = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_DRIVE = re.compile(r"^[A-Za-z]:")
_HOSTILE_TYPES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a device file",
    stat.S_IFBLK: "a device file",
    stat.S_IFIFO: "a pipe",
    stat.S_IFSOCK: "a socket",
}


@dataclass
class ZipPlan:
    """The entries worth reading (sorted by name, so the result ignores zip order)."""

    files: list[zipfile.ZipInfo]
    ignored: list[str]


@dataclass
class ByteBudget:
    """Actual decompressed bytes across one ingest (one instance per call, never shared)."""

    limit: int
    used: int = field(default=0)

    def spend(self, count: int) -> None:
        self.used += count
        if self.used > self.limit:
            limit = _size(self.limit)
            raise IngestError(f"the zip unpacks to more than {limit}; that is the limit")


def _size(count: int) -> str:
    """Bytes in words: '200 MB'."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= scale:
            return f"{count / scale:,.0f} {unit}"
    return f"{count:,} bytes"


def check_archive_size(fp: BinaryIO, limits: Limits) -> None:
    """Refuse a too-large zip, or a directory too large to parse, before zipfile reads it."""
    fp.seek(0, 2)
    total = fp.tell()
    if total > limits.max_zip_bytes:
        raise IngestError(f"the zip is {_size(total)}; the limit is {_size(limits.max_zip_bytes)}")
    declared = _declared_directory(fp, total)
    if declared is None:
        return  # not a zip: zipfile gives the error
    count, directory_bytes = declared
    _check_count(count, limits)
    if directory_bytes > limits.max_files * CENTRAL_BYTES_PER_FILE:
        raise IngestError(f"the zip's file list is {_size(directory_bytes)}; it is not a photo set")


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_files:
        raise IngestError(f"the zip holds {count:,} files; the limit is {limits.max_files:,}")


def _declared_directory(fp: BinaryIO, total: int) -> tuple[int, int] | None:
    """(entry count, central directory bytes) from the end record, zip64 included."""
    tail_len = min(total, _EOCD_STRUCT.size + 65535)
    fp.seek(total - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or at + _EOCD_STRUCT.size > len(tail):
        return None
    fields = _EOCD_STRUCT.unpack_from(tail, at)
    count, directory_bytes = fields[4], fields[5]
    if count != 0xFFFF and directory_bytes != 0xFFFFFFFF:
        return count, directory_bytes
    locator_at = total - tail_len + at - _EOCD64_LOCATOR.size
    if locator_at < 0:
        return count, directory_bytes
    fp.seek(locator_at)
    locator = _EOCD64_LOCATOR.unpack(fp.read(_EOCD64_LOCATOR.size))
    if locator[0] != b"PK\x06\x07" or locator[2] + _EOCD64.size > total:
        return count, directory_bytes
    fp.seek(locator[2])
    record = _EOCD64.unpack(fp.read(_EOCD64.size))
    return (record[7], record[8]) if record[0] == b"PK\x06\x06" else (count, directory_bytes)


def plan_zip(zf: zipfile.ZipFile, fp: BinaryIO, limits: Limits) -> ZipPlan:
    """Check every entry of the directory; refuse the zip or say which entries to read."""
    infos = zf.infolist()
    _check_count(len(infos), limits)
    check_overlaps(infos, fp, getattr(zf, "start_dir", None))
    files: list[zipfile.ZipInfo] = []
    ignored: list[str] = []
    declared_total = 0
    for info in infos:
        check_name(info.filename)
        check_type(info)
        if info.is_dir():
            continue
        if is_ignored(info.filename):
            ignored.append(info.filename)
            continue
        check_declared_sizes(info, limits)
        declared_total += info.file_size
        if declared_total > limits.max_uncompressed_bytes:
            raise IngestError(
                f"the zip unpacks to more than {_size(limits.max_uncompressed_bytes)}; "
                "that is the limit"
            )
        files.append(info)
    files.sort(key=lambda info: (info.filename.casefold(), info.filename))
    return ZipPlan(files=files, ignored=sorted(ignored))


def check_name(name: str) -> None:
    """Refuse absolute paths and `..` traversal (in either slash style)."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise IngestError(f"the zip holds an absolute path ('{_short(name)}'); refusing it")
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        raise IngestError(f"the zip holds a path that climbs out of its folder ('{_short(name)}')")


def check_type(info: zipfile.ZipInfo) -> None:
    """Refuse symlinks and special files, as recorded in the Unix mode bits."""
    kind = _HOSTILE_TYPES.get(stat.S_IFMT(info.external_attr >> 16))
    if kind:
        raise IngestError(f"the zip holds {kind} ('{_short(info.filename)}'); refusing it")


def is_ignored(name: str) -> bool:
    """macOS resource forks, .DS_Store, Thumbs.db and hidden files are dropped quietly."""
    parts = [part for part in re.split(r"[\\/]", name) if part]
    if not parts:
        return True
    if any(part == "__MACOSX" or part.startswith(".") for part in parts):
        return True
    return parts[-1].casefold() in IGNORED_BASENAMES


def check_declared_sizes(info: zipfile.ZipInfo, limits: Limits) -> None:
    """The cheap check on what the directory claims (streaming re-checks actual bytes)."""
    if info.file_size > limits.max_entry_bytes:
        raise IngestError(
            f"'{_short(info.filename)}' unpacks to {_size(info.file_size)}; "
            f"the limit for one file is {_size(limits.max_entry_bytes)}"
        )
    _check_ratio(info, info.file_size, limits)


def _check_ratio(info: zipfile.ZipInfo, unpacked: int, limits: Limits) -> None:
    if unpacked <= RATIO_GRACE_BYTES:
        return
    ratio = unpacked / max(info.compress_size, 1)
    if ratio > limits.max_compression_ratio:
        raise IngestError(
            f"'{_short(info.filename)}' is compressed {ratio:,.0f}:1, which looks like a "
            f"zip bomb; the limit is {limits.max_compression_ratio:,.0f}:1"
        )


def check_overlaps(infos: Iterable[zipfile.ZipInfo], fp: BinaryIO, end: int | None) -> None:
    """Refuse entries whose local header + data extents overlap, or run into the directory."""
    extents = sorted(_extent(info, fp) for info in infos)
    for (start, stop), (next_start, _) in itertools.pairwise(extents):
        if next_start < stop or next_start == start:
            raise IngestError("the zip's entries overlap each other, which is a zip-bomb trick")
    if extents and end is not None and extents[-1][1] > end:
        raise IngestError("the zip's entries overlap each other, which is a zip-bomb trick")


def _extent(info: zipfile.ZipInfo, fp: BinaryIO) -> tuple[int, int]:
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise IngestError("the zip is damaged (an entry points to nothing)")
    fields = _LOCAL_HEADER.unpack(header)
    data_start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    return info.header_offset, data_start + info.compress_size


def read_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits, budget: ByteBudget
) -> bytes:
    """Decompress one entry, counting real bytes against every limit as they arrive.

    Raises `IngestError` when a limit is crossed, `SkipFile` when the entry is unreadable.
    """
    if info.flag_bits & 0x1:
        raise SkipFile("it is password-protected")
    data = bytearray()
    try:
        with zf.open(info) as stream:
            while chunk := stream.read(CHUNK_BYTES):
                data += chunk
                budget.spend(len(chunk))
                if len(data) > limits.max_entry_bytes:
                    raise IngestError(
                        f"'{_short(info.filename)}' unpacks to more than "
                        f"{_size(limits.max_entry_bytes)}; that is the limit for one file"
                    )
                _check_ratio(info, len(data), limits)
    except IngestError:
        raise
    except NotImplementedError:
        raise SkipFile("it uses a zip compression method we cannot read") from None
    except Exception:  # zlib.error, BadZipFile (CRC), EOFError, OSError, ...: damaged data
        raise SkipFile("its data in the zip is damaged") from None
    return bytes(data)


def _short(name: str, limit: int = 80) -> str:
    """A zip name safe to show in one line."""
    printable = "".join(ch if ch.isprintable() else "?" for ch in name)
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


def display_name(name: str) -> str:
    return _short(name, 200)


def stem_key(name: str) -> str:
    """'Sub/Cat.PNG' -> 'Sub/Cat': how a side-car caption finds its image."""
    path = PurePosixPath(name.replace("\\", "/"))
    return str(path.with_suffix("")) if path.suffix else str(path)
