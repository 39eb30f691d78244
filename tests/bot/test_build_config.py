"""`/train`'s job config from a preset, the member's options and the operator's catalogue entry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.errors import BadInput
from bot.exts.train import build_config
from storage.settings import BaseModelEntry

CATALOGUE = {
    "flux-small-gpu": BaseModelEntry(
        path="builtin:tiny-flux", architecture="flux1", quantize="nf4"
    ),
    "flux": BaseModelEntry(path="builtin:tiny-flux", architecture="flux1"),
}


def _build(method: str, base_model: str):
    return build_config(
        method, "quick-test", base_model, CATALOGUE, trigger="ohwx", caption_prefix=None,
        steps=20, resolution=64,
    )  # fmt: skip


def test_a_quantised_catalogue_model_trains_its_lora_quantised() -> None:
    assert _build("lora", "flux-small-gpu").quantize_base == "nf4"
    assert _build("lora", "flux").quantize_base == "none"
    assert _build("dora", "flux").quantize_base == "none"


def test_a_dora_on_a_quantised_model_is_refused_in_one_line() -> None:
    with pytest.raises(BadInput) as refusal:
        _build("dora", "flux-small-gpu")
    message = str(refusal.value)
    assert "quantised (nf4)" in message and "train a LoRA" in message and "\n" not in message


def test_only_flux_and_zimage_entries_may_be_quantised() -> None:
    with pytest.raises(ValidationError, match=r"quantize is for FLUX\.1 and Z-Image"):
        BaseModelEntry(path="/models/sd15", architecture="sd1", quantize="int8")
    assert BaseModelEntry(path="/m/z", architecture="zimage", quantize="int8").quantize == "int8"


def test_locon_adapts_the_conv_layers_and_is_refused_where_there_are_none() -> None:
    catalogue = {**CATALOGUE, "tiny": BaseModelEntry(path="builtin:tiny", architecture="sd1")}

    def build(base_model: str, **options):
        return build_config(
            "lora", "character", base_model, catalogue, trigger="ohwx", caption_prefix=None,
            **options,
        )  # fmt: skip

    assert build("tiny").targets == "attention"
    assert build("tiny", locon=True).targets == "attention_conv"
    assert build("tiny", locon=False).targets == "attention"
    with pytest.raises(BadInput) as refusal:
        build("flux", locon=True)
    message = str(refusal.value)
    assert "no convolution layers for LoCon" in message and "\n" not in message
    assert build("flux", locon=False).targets == "attention"
