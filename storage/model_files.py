"""The files a member downloads for one checkpoint, found without torch (the bot reads this).

A checkpoint is one model file (LoRA, DoRA or embedding), or, trained with pivotal tuning, a
LoRA/DoRA whose safetensors metadata names the trigger's embedding in the same folder
(`atelier.embedding`, written by `trainer.export`). Loaders need both to draw the concept.
"""

from __future__ import annotations

import json
from pathlib import Path

EMBEDDING_KEY = "atelier.embedding"
"""LoRA/DoRA metadata: the file name of the trigger's embedding beside it (pivotal)."""

MAX_HEADER = 100 * 1024 * 1024
"""safetensors' own cap on the JSON header (100 MB)."""


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file (its header is 8 bytes of length, then
    JSON); {} for a file that is not one."""
    try:
        with Path(path).open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= MAX_HEADER:
                return {}
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def model_files(primary: Path) -> list[Path]:
    """`primary`, and for pivotal the embedding it names (only ever a file beside it)."""
    primary = Path(primary)
    companion = safetensors_metadata(primary).get(EMBEDDING_KEY)
    if not companion:
        return [primary]
    return [primary, primary.parent / Path(companion).name]
