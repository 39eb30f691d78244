"""A checkpoint's files, read from the safetensors header without torch (the bot's path)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from storage.model_files import EMBEDDING_KEY, model_files, safetensors_metadata


def write_safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    """A valid safetensors file with one float32 tensor, written by hand (no torch)."""
    header: dict = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return path


def test_a_plain_file_is_its_own_checkpoint(tmp_path: Path) -> None:
    lora = write_safetensors(tmp_path / "a-step00000010.safetensors", {"ss_steps": "10"})
    assert safetensors_metadata(lora) == {"ss_steps": "10"}
    assert model_files(lora) == [lora]
    assert model_files(write_safetensors(tmp_path / "b.safetensors", None)) == [
        tmp_path / "b.safetensors"
    ]


def test_a_pivotal_lora_brings_the_embedding_beside_it(tmp_path: Path) -> None:
    lora = write_safetensors(tmp_path / "a.safetensors", {EMBEDDING_KEY: "ohwx.safetensors"})
    assert model_files(lora) == [lora, tmp_path / "ohwx.safetensors"]
    sneaky = write_safetensors(tmp_path / "b.safetensors", {EMBEDDING_KEY: "../../etc/passwd"})
    assert model_files(sneaky) == [sneaky, tmp_path / "passwd"]  # never outside the folder


def test_what_is_not_a_safetensors_file_has_no_metadata(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 4)
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    (tmp_path / "text.safetensors").write_bytes(struct.pack("<Q", 3) + b"abc")
    for name in ("junk", "huge", "text", "missing"):
        path = tmp_path / f"{name}.safetensors"
        assert safetensors_metadata(path) == {}
        assert model_files(path) == [path]
