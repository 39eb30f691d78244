"""The /iterate prompt matrix and /train from: change parsing (no torch)."""

from __future__ import annotations

import pytest

from bot.changes import parse_change
from bot.errors import BadInput
from trainer.config import TrainConfig
from trainer.iterate import DEFAULT_CONTEXTS, prompt_matrix


def test_matrix_spreads_member_contexts_first_then_defaults() -> None:
    cells = prompt_matrix("ohwx", 40, ["at a café"], base_seed=100)
    assert len(cells) == 40 and cells[0].context == "at a café"
    assert cells[1].context == DEFAULT_CONTEXTS[0]
    assert all(c.prompt.startswith("ohwx, ") for c in cells)
    assert len({c.prompt for c in cells}) == 40  # no duplicate prompt
    assert [c.seed for c in cells[:3]] == [100, 101, 102]
    assert len({c.style for c in cells[:6]}) == 6


def test_change_is_one_validated_setting() -> None:
    config = TrainConfig(trigger="ohwx", steps=60, checkpoint_every=20).model_dump(mode="json")
    key, old, new, updated = parse_change("rank=16", config)
    assert (key, old, new, updated["rank"]) == ("rank", 4, 16, 16)
    assert parse_change(None, config)[0] is None
    for bad, why in (
        ("rank=8,steps=30", "exactly one"),
        ("rank", "exactly one"),
        ("dataset=/x", "can be changed"),
        ("nope=1", "can be changed"),
        ("rank=0", "rank"),
        ("rank=4", "changes nothing"),
        # /train's member limits and the catalogue hold for `change` too
        ("steps=100000", "steps"),
        ("rank=256", "rank"),
        ("learning_rate=10", "learning_rate"),
        ("resolution=2048", "resolution"),
        ("checkpoint_every=1", "can be changed"),
        ("keep_last=null", "can be changed"),
        ("validation.steps=8", "can be changed"),
        ("base_model=/any/local/path", "catalogue"),
    ):
        with pytest.raises(BadInput, match=why):
            parse_change(bad, config)


def test_keep_weight_change_sets_preservation_or_turns_it_off() -> None:
    """`change:keep_weight=…` is preservation's weight, the knob a team compares runs on."""
    config = TrainConfig(trigger="ohwx", preservation={"enabled": True, "weight": 4.0}).model_dump(
        mode="json"
    )
    key, old, new, updated = parse_change("keep_weight=8", config)
    assert (key, old, new) == ("keep_weight", 4.0, 8.0)
    assert updated["preservation"]["enabled"] and updated["preservation"]["weight"] == 8.0
    _, old, new, off = parse_change("keep_weight=0", config)
    assert (old, new) == (4.0, 0) and not off["preservation"]["enabled"]
    plain = TrainConfig(trigger="ohwx").model_dump(mode="json")
    _, old, new, on = parse_change("keep_weight=2.5", plain)
    assert (old, new) == (0, 2.5) and on["preservation"]["enabled"]
    for bad, why in (("keep_weight=11", "keep_weight"), ("keep_weight=-1", "keep_weight")):
        with pytest.raises(BadInput, match=why):
            parse_change(bad, config)
    with pytest.raises(BadInput, match="changes nothing"):
        parse_change("keep_weight=0", plain)


def test_locon_change_switches_the_adapter_targets() -> None:
    """`change:locon=…` adapts the conv layers too (or stops), read as `/train` reads a bool."""
    config = TrainConfig(trigger="ohwx").model_dump(mode="json")
    key, old, new, updated = parse_change("locon=yes", config)
    assert (key, old, new, updated["targets"]) == ("locon", False, True, "attention_conv")
    _, old, new, back = parse_change("locon=false", updated)
    assert (old, new, back["targets"]) == (True, False, "attention")
    for bad, why in (("locon=maybe", "locon"), ("locon=false", "changes nothing")):
        with pytest.raises(BadInput, match=why):
            parse_change(bad, config)


def test_a_new_base_model_brings_its_quantisation_and_must_fit_the_job() -> None:
    """`change:base_model=…` with the catalogue's entries: the operator's `quantize` of the new
    model applies to a LoRA, and a model that cannot train the job is refused in one line."""
    from storage.settings import BaseModelEntry
    from trainer.presets import apply_preset

    catalogue = {
        "tiny": BaseModelEntry(path="builtin:tiny"),
        "flux": BaseModelEntry(path="builtin:tiny-flux", architecture="flux1"),
        "flux-q": BaseModelEntry(path="builtin:tiny-flux", architecture="flux1", quantize="nf4"),
    }
    flux = apply_preset("character", "lora", "flux1", trigger="ohwx", base_model="flux")
    _, old, new, updated = parse_change(
        "base_model=flux-q", flux.model_dump(mode="json"), catalogue
    )
    assert (old, new, updated["quantize_base"]) == ("flux", "flux-q", "nf4")
    assert parse_change("base_model=flux", updated, catalogue)[3]["quantize_base"] == "none"
    dora = apply_preset("character", "dora", "flux1", trigger="ohwx", base_model="flux")
    with pytest.raises(BadInput, match=r"quantised \(nf4\).*train a LoRA"):
        parse_change("base_model=flux-q", dora.model_dump(mode="json"), catalogue)
    sd_lora = TrainConfig(trigger="ohwx", resolution=64)  # an SD job's settings, not FLUX.1's
    with pytest.raises(BadInput, match="`flux-q` cannot train this job: ") as refused:
        parse_change("base_model=flux-q", sd_lora.model_dump(mode="json"), catalogue)
    assert "\n" not in str(refused.value)
