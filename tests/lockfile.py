"""Read the hashed lock files that ./scripts/lock.sh writes (pip's requirements format)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

_PIN = re.compile(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==(\S+)$")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """Canonical name → pin. Raises ValueError on any requirement that is not `name==version`."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        match = _PIN.match(spec)
        if not match:
            raise ValueError(f"{path.name}: not pinned with ==: {line}")
        hashes = tuple(o.removeprefix("--hash=") for o in options if o.startswith("--hash="))
        pins[canonicalize_name(match[1])] = Pin(match[3], hashes)
    return pins
