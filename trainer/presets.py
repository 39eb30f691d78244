"""Named defaults a member picks from Discord ("character", "style", …), per method.

Values follow what other trainers ship (see shared/reference/peers.md): ai-toolkit's rank 16 /
lr 1e-4 / 2000 steps / save every 250 / keep 4 / caption dropout 0.05 for concept LoRAs,
invoke-training's AdamW 4e-3, cosine, 200 warm-up steps, 4 vectors for embeddings. This module
imports only pydantic (through `trainer.config`), so the bot can list and validate presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from trainer.config import Method, TrainConfig


class PresetError(ValueError):
    """An unknown preset or an override that makes an impossible config; one readable line."""


@dataclass(frozen=True)
class Preset:
    """A named set of TrainConfig values; `lora` applies to LoRA and DoRA."""

    name: str
    description: str
    lora: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)

    def values(self, method: Method) -> dict[str, Any]:
        return dict(self.embedding if method == "embedding" else self.lora)


_EMBEDDING_BASE: dict[str, Any] = {
    "learning_rate": 4e-3,
    "schedule": "cosine",
    "warmup_steps": 200,
    "steps": 2000,
    "batch_size": 1,
    "checkpoint_every": 200,
    "keep_last": 4,
    "min_snr_gamma": 5.0,
}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "character",
            "A person or creature: rank 16, 2000 steps, checkpoints every 250; no flips "
            "(faces, scars and outfits are asymmetric).",
            lora={
                "rank": 16, "alpha": 16.0, "learning_rate": 1e-4, "steps": 2000, "batch_size": 4,
                "checkpoint_every": 250, "keep_last": 4, "caption_dropout": 0.05, "flip": False,
                "preservation": {"enabled": True},
            },
            embedding={
                **_EMBEDDING_BASE,
                "embedding": {"templates": "auto", "initializer_token": "auto"},
            },
        ),
        Preset(
            "style",
            "An art style: rank 16, shuffled tags, small random crops, 2000 steps, "
            "checkpoints every 250.",
            lora={
                "rank": 16, "alpha": 16.0, "learning_rate": 1e-4, "steps": 2000, "batch_size": 4,
                "checkpoint_every": 250, "keep_last": 4, "caption_dropout": 0.05,
                "shuffle_captions": True, "keep_tokens": 1, "crop_jitter": 0.05,
            },
            embedding={
                **_EMBEDDING_BASE,
                "embedding": {"templates": "style", "initializer_token": "art"},
            },
        ),
        Preset(
            "object",
            "A thing or product: rank 8, flips allowed, 1500 steps, checkpoints every 250.",
            lora={
                "rank": 8, "alpha": 8.0, "learning_rate": 1e-4, "steps": 1500, "batch_size": 4,
                "checkpoint_every": 250, "keep_last": 4, "flip": True,
                "preservation": {"enabled": True},
            },
            embedding={
                **_EMBEDDING_BASE, "steps": 1500,
                "embedding": {"templates": "auto", "initializer_token": "auto"},
            },
        ),
        Preset(
            "quick-test",
            "Checks the pipeline end to end in about a minute on the tiny model (64 px, 60 steps).",
            lora={
                "base_model": "tiny", "rank": 4, "alpha": 4.0, "learning_rate": 1e-3, "steps": 60,
                "batch_size": 2, "resolution": 64, "checkpoint_every": 20, "min_snr_gamma": 5.0,
                "validation": {"steps": 4, "seeds": [1], "guidance": 5.0, "scheduler": "euler"},
            },
            embedding={
                "base_model": "tiny", "learning_rate": 5e-2, "steps": 60, "batch_size": 2,
                "resolution": 64, "checkpoint_every": 20, "schedule": "constant",
                "embedding": {
                    "num_vectors": 2, "templates": "captions", "initializer_token": "person",
                },
                "validation": {"steps": 4, "seeds": [1], "guidance": 5.0, "scheduler": "euler"},
            },
        ),
    )
}  # fmt: skip

DEFAULT_PRESET = "character"


def preset_choices() -> list[tuple[str, str]]:
    """(name, description) pairs in display order, for the bot's autocomplete."""
    return [(preset.name, preset.description) for preset in PRESETS.values()]


def apply_preset(name: str, method: Method, **overrides: Any) -> TrainConfig:
    """The preset's values for `method`, with `overrides` on top, as a validated TrainConfig.

    Nested sections merge (`validation={"prompts": [...]}` keeps the preset's seeds), and
    `validation_prompts=[...]` is accepted as a shortcut. When only `steps` is overridden, the
    preset's own checkpoint cadence and warm-up shrink to fit it (they are defaults, not the
    member's choice); anything the member sets explicitly is validated as given.
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise PresetError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    values = preset.values(method)
    values["method"] = method
    prompts = overrides.pop("validation_prompts", None)
    if prompts is not None:
        overrides.setdefault("validation", {})["prompts"] = list(prompts)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        elif value is not None:
            values[key] = value
    if "steps" in overrides:
        _fit_cadence(values, overrides)
    try:
        return TrainConfig(**values)
    except ValidationError as error:
        raise PresetError(explain_validation_error(error)) from None


def _fit_cadence(values: dict[str, Any], overrides: dict[str, Any]) -> None:
    steps = int(values["steps"])
    if "checkpoint_every" not in overrides:
        every = int(
            values.get("checkpoint_every", TrainConfig.model_fields["checkpoint_every"].default)
        )
        values["checkpoint_every"] = max(1, min(every, steps // 4 or steps))
    if "warmup_steps" not in overrides and int(values.get("warmup_steps", 0)) >= steps // 2:
        values["warmup_steps"] = steps // 10


def explain_validation_error(error: ValidationError) -> str:
    """One line naming the field and the problem (the first error only)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
