"""Which base model a name means: the one resolver the bot, the worker and `atelier doctor` use.

A catalogue entry (`base_models` in the settings) keeps the architecture it was configured
with; nothing re-guesses it from the file. Checking the files (`problem`) follows exactly what
the loader in `trainer.base_models` accepts: a diffusers folder, or a single `.safetensors` /
`.ckpt` file with its local diffusers config folder beside it (`<stem>/` or `<stem>.config/`).

No torch here: the bot imports it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

BUILTIN_ARCHITECTURES = {
    "builtin:tiny": "sd1", "builtin:tiny-sdxl": "sdxl", "builtin:toy": "sd1",
    "builtin:tiny-flux": "flux1", "builtin:tiny-zimage": "zimage",
}  # fmt: skip
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HASH_OFFSET, _HASH_SPAN = 0x100000, 0x10000


class UnknownBaseModel(LookupError):
    """A name that is neither in the catalogue nor (where allowed) a built-in or local path."""


@dataclass(frozen=True)
class ResolvedModel:
    """A base model as configured: the name members see, where it lives, its architecture."""

    name: str
    path: str
    architecture: str
    from_catalogue: bool = True

    @property
    def is_builtin(self) -> bool:
        return self.path.startswith("builtin:")


def resolve(name_or_path: str, settings: Any, *, allow_paths: bool = True) -> ResolvedModel:
    """Catalogue name → its entry (architecture as configured); else, where `allow_paths`
    (the headless CLI, never a member), a built-in name or an existing local path, whose
    architecture the caller detects (`architecture` is "" then)."""
    catalogue = getattr(settings, "base_models", None) or {}
    entry = catalogue.get(name_or_path)
    if entry is not None:
        return ResolvedModel(name_or_path, entry.path, entry.architecture)
    if allow_paths:
        if name_or_path in BUILTIN_ARCHITECTURES:
            return ResolvedModel(
                name_or_path, name_or_path, BUILTIN_ARCHITECTURES[name_or_path], False
            )
        path = Path(name_or_path).expanduser()
        if path.exists():
            return ResolvedModel(path.name, str(path), "", False)
    known = ", ".join(sorted(catalogue)) or "none"
    raise UnknownBaseModel(f"unknown base model {name_or_path!r} (catalogue: {known})")


def single_file_config(checkpoint: Path, explicit: str | Path | None = None) -> Path | None:
    """The local diffusers config folder that replaces `from_single_file`'s Hub lookup."""
    beside = [checkpoint.with_suffix(""), checkpoint.with_suffix(".config")]
    candidates = [Path(explicit)] if explicit else beside
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return folder
    return None


def problem(model: ResolvedModel) -> str | None:
    """Why the loader would refuse this model's files, in one line; None when it would load."""
    if model.is_builtin:
        return None if model.path in BUILTIN_ARCHITECTURES else f"unknown built-in {model.path}"
    path = Path(model.path).expanduser()
    if not path.exists():
        return f"{path} does not exist"
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            return f"{path} is a folder without model_index.json"
        return None
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        return f"{path.name} is neither a diffusers folder nor a .safetensors/.ckpt file"
    if single_file_config(path) is None:
        return (
            f"single-file checkpoint {path.name} needs its diffusers config folder "
            f"(model_index.json, component configs, tokenizers) at {path.with_suffix('')}/"
        )
    return None


@lru_cache(maxsize=32)
def fingerprint(path: str) -> str:
    """A short, cheap identity of a base model for file metadata (never its path): for a single
    file the A1111/kohya legacy hash (sha256 of 64 KiB at 1 MiB, 8 hex digits); for a folder the
    same over its weight files, plus their sizes and `model_index.json`; a built-in: its name."""
    if path.startswith("builtin:"):
        return hashlib.sha256(path.encode()).hexdigest()[:8]
    local = Path(path).expanduser()
    digest = hashlib.sha256()
    if local.is_file():
        _sample(local, digest)
        return digest.hexdigest()[:8]
    index = local / "model_index.json"
    if index.is_file():
        digest.update(index.read_bytes())
    for file in sorted(local.rglob("*")):
        if file.suffix in (".safetensors", ".bin", ".ckpt") and file.is_file():
            digest.update(f"{file.relative_to(local).as_posix()}:{file.stat().st_size}".encode())
            _sample(file, digest)
    return digest.hexdigest()[:8]


def _sample(file: Path, digest: Any) -> None:
    with file.open("rb") as handle:
        handle.seek(_HASH_OFFSET)
        digest.update(handle.read(_HASH_SPAN))


def public_name(base_model: str) -> str:
    """What a delivered file may say about its base model: the catalogue name, or only the last
    part of a local path (the headless CLI), never the host's folders."""
    if base_model.startswith("builtin:") or ("/" not in base_model and "\\" not in base_model):
        return base_model
    return Path(base_model).name
