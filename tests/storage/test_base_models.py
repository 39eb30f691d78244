"""One resolver for base models: doctor, worker and bot agree with the loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.doctor import check_base_model
from atelier.settings import load_settings
from storage.base_models import (
    ResolvedModel,
    UnknownBaseModel,
    fingerprint,
    problem,
    public_name,
    resolve,
)
from storage.settings import BaseModelEntry


def _single_file(tmp_path: Path, suffix: str, with_config: bool) -> Path:
    checkpoint = tmp_path / f"house{suffix}"
    checkpoint.write_bytes(b"\0" * (0x100000 + 0x10000))
    if with_config:  # an SD 1.x diffusers config folder: model_index + one folder per component
        folder = tmp_path / "house"
        parts = ("unet", "vae", "text_encoder", "tokenizer")
        for part in parts:
            (folder / part).mkdir(parents=True)
        index = {part: ["diffusers", "x"] for part in parts}
        (folder / "model_index.json").write_text(json.dumps(index))
    return checkpoint


def test_a_catalogue_entry_keeps_its_configured_architecture(tmp_path: Path) -> None:
    checkpoint = _single_file(tmp_path, ".ckpt", with_config=True)
    settings = load_settings(
        base_models={"house": {"path": str(checkpoint), "architecture": "sdxl"}}
    )
    assert resolve("house", settings) == ResolvedModel("house", str(checkpoint), "sdxl")
    from trainer.base_models import resolve_base_model
    from trainer.config import TrainConfig
    from trainer.loop import resolve_model

    assert resolve_base_model("house", settings) == (str(checkpoint), "sdxl")
    config = TrainConfig(base_model="house", trigger="tkxw")
    assert resolve_model(config, settings) == (str(checkpoint), "sdxl")


def test_doctor_accepts_a_ckpt_the_loader_accepts(tmp_path: Path) -> None:
    checkpoint = _single_file(tmp_path, ".ckpt", with_config=True)
    check = check_base_model("house", BaseModelEntry(path=str(checkpoint), architecture="sd1"))
    assert check.status == "ok", check


def test_doctor_flags_a_single_file_model_without_its_config_folder(tmp_path: Path) -> None:
    checkpoint = _single_file(tmp_path, ".safetensors", with_config=False)
    check = check_base_model("house", BaseModelEntry(path=str(checkpoint)))
    assert check.status == "fail" and "config folder" in check.detail
    from trainer.base_models import BaseModelError, _single_file_config

    with pytest.raises(BaseModelError, match="config folder"):  # the loader says the same
        _single_file_config(checkpoint, None)
    assert problem(ResolvedModel("x", str(tmp_path / "missing"), "sd1")) is not None


def test_members_name_catalogue_entries_only(tmp_path: Path) -> None:
    settings = load_settings()
    with pytest.raises(UnknownBaseModel):
        resolve(str(tmp_path), settings, allow_paths=False)
    assert resolve(str(tmp_path), settings).path == str(tmp_path)  # the headless CLI may


def test_metadata_names_never_carry_a_host_path(tmp_path: Path) -> None:
    assert public_name("house") == "house"
    assert public_name("builtin:tiny") == "builtin:tiny"
    assert public_name("/srv/models/sd15") == "sd15"
    checkpoint = _single_file(tmp_path, ".safetensors", with_config=True)
    assert len(fingerprint(str(checkpoint))) == 8
