"""`/train lora from: change:key=value`: which one setting a member may change for the next
version of a model, checked by the same limits as `/train` and validated as a TrainConfig."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from bot.catalogue import quantize_base_for
from bot.errors import BadInput
from trainer.config import (
    ArchitectureMismatch,
    PreservationConfig,
    TrainConfig,
    TrainOverrides,
    check_architecture,
)
from trainer.presets import explain_validation_error, keep_weight_preservation, locon_targets

CHANGEABLE = frozenset(
    {
        "steps", "rank", "learning_rate", "resolution", "base_model", "keep_weight", "pivotal",
        "locon",
    }
)  # fmt: skip
"""What `change:` may set: the settings `/train` offers members, checked by the same limits
(`TrainOverrides`) and, for `base_model`, the operator's catalogue. `keep_weight` is
preservation's weight (0: preservation off), the one knob between learning and leaking;
`pivotal` (true/false) learns the trigger as an embedding beside the LoRA or not; `locon`
(true/false) adapts the UNet's conv layers too (`targets`) or not."""


def parse_change(
    change: str | None,
    config: dict[str, Any],
    catalogue: Collection[str] | Mapping[str, Any] = ("tiny",),
) -> tuple[str | None, Any, Any, dict[str, Any]]:
    """`rank=16` → (key, old, new, new config): one allowed key, within the member limits of
    `/train` and the base-model catalogue, then validated against TrainConfig. With the
    catalogue's entries (a mapping), a new `base_model` brings its own `quantize` and must be
    able to train the job's method and sizes."""
    if not change or not change.strip():
        return None, None, None, dict(config)
    parts = [p for p in change.replace(",", " ").split() if p]
    if len(parts) != 1 or parts[0].count("=") != 1:
        raise BadInput("Change exactly one setting, as `key=value` (e.g. `rank=16`).")
    key, raw = (s.strip() for s in parts[0].split("="))
    if key not in CHANGEABLE or not raw:
        allowed = ", ".join(sorted(CHANGEABLE))
        raise BadInput(f"`{key}` is not a setting that can be changed (only {allowed}).")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    value = _check_member_limits(key, value, catalogue)
    updated = json.loads(json.dumps(config))
    old = _read(key, updated)
    _write(key, value, updated)
    entry = catalogue.get(value) if key == "base_model" and isinstance(catalogue, Mapping) else None
    if entry is not None:  # the new model's own quantisation (the operator's, per model)
        updated["quantize_base"] = quantize_base_for(value, entry, updated.get("method", "lora"))
    try:
        trained = TrainConfig.model_validate(updated)
        if entry is not None:
            check_architecture(trained, entry.architecture)
    except ValidationError as error:
        raise BadInput(explain_validation_error(error)) from None
    except ArchitectureMismatch as error:
        raise BadInput(f"`{value}` cannot train this job: {error}") from None
    validated = trained.model_dump(mode="json")
    new = _read(key, validated)
    if new == old:
        raise BadInput(f"`{key}` is already {old}; that changes nothing.")
    return key, old, new, validated


def _read(key: str, config: dict[str, Any]) -> Any:
    """A changeable setting's value in a config dict (`keep_weight`: 0 when not preserving)."""
    if key == "keep_weight":
        preservation = PreservationConfig.model_validate(config.get("preservation") or {})
        return preservation.weight if preservation.enabled else 0
    if key == "locon":
        return config.get("targets", "attention") == "attention_conv"
    return config.get(key)


def _write(key: str, value: Any, config: dict[str, Any]) -> None:
    """Set a changeable setting in a config dict (`keep_weight` as `/train` reads it)."""
    if key == "keep_weight":
        config["preservation"] = {
            **(config.get("preservation") or {}),
            **keep_weight_preservation(value),
        }
    elif key == "locon":
        config["targets"] = locon_targets(value)
    else:
        config[key] = value


def _check_member_limits(key: str, value: Any, catalogue: Collection[str]) -> Any:
    """The value within the same bounds `/train`'s options have, as `/train` reads it
    (`yes` → true); a base model from the catalogue only."""
    if key == "base_model":
        if value not in catalogue:
            raise BadInput(f"Unknown base model `{value}`; pick one from the catalogue.")
        return value
    try:
        return getattr(TrainOverrides.model_validate({key: value}), key)
    except ValidationError as error:
        raise BadInput(explain_validation_error(error)) from None
