"""Named defaults a member picks from Discord ("character", "style", …), per method.

Each preset adapts to the base architecture (`architecture_values`: FLUX.1's scale and sampler).
Values follow what other trainers ship (see shared/reference/peers.md): ai-toolkit's rank 16 /
lr 1e-4 / 2000 steps / save every 250 / keep 4 / caption dropout 0.05 for concept LoRAs,
invoke-training's AdamW 4e-3, cosine, 200 warm-up steps, 4 vectors for embeddings. This module
imports only pydantic (through `trainer.config`), so the bot can list and validate presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from trainer.config import ArchitectureMismatch, Method, TrainConfig, check_architecture


class PresetError(ValueError):
    """An unknown preset or an override that makes an impossible config; one readable line."""


@dataclass(frozen=True)
class Preset:
    """A named set of TrainConfig values; `lora` applies to LoRA and DoRA, and `pivotal` on top
    of it when the LoRA/DoRA also learns the trigger as an embedding (a member's choice)."""

    name: str
    description: str
    lora: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] = field(default_factory=dict)
    pivotal: dict[str, Any] = field(default_factory=dict)

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

PRESERVATION: dict[str, Any] = {"enabled": True, "weight": 4.0}
"""Preservation for the character and object presets: half of each batch (the default share),
the base model's predictions kept per image (the default pool of 8, so the step costs ~1.4× one
without), weight 4 where ai-toolkit's `diff_output_preservation_multiplier` defaults to 1: on the
toy model's benchmark (docs/toy-model) the change on ordinary prompts fell as the weight rose
(1 → 3 → 8) with no loss of the concept at the same steps, and weight 1 did not lower it at all.
A tenth of the preserved samples hold the empty prompt (the config's default `unconditional`):
with it weight 4 meets the toy model's change goal (4.8 of 255 on 48 images, from 5.4 without
it), as weight 8 alone did (4.35) at less concept; a real model with a weaker concept signal
should not be held back harder than measured, so 4; members set it with `keep_weight`."""

PIVOTAL_EMBEDDING: dict[str, Any] = {"initializer_token": "auto"}
"""The trigger's vectors when a member turns `pivotal` on (no preset does: see below): 4 (the
embedding default; 8 learned no more over three seeds on the toy model, eighth pass), started
from the word the base model reads closest to the images, as the embedding presets start;
`pivotal_lr` stays the config's 1e-3 (diffusers' textual-inversion example, 5e-4 scaled by its
batch, 4 here, and halved; 3e-3 learned no more on the toy model).

Off by default: the model is then two files to load, FLUX.1 and Z-Image cannot take it, and on
the toy model's benchmark concept it alone misses the concept goal (+0.27 of +0.30); with the
toy UNet's conv layers adapted too (`locon`, ninth pass) it meets it (+0.38). No preset turns
LoCon on: SD 1.x has attention at every UNet level, SDXL at all but the finest."""

PIVOTAL_CONCEPT: dict[str, Any] = {"learning_rate": 5e-5, "preservation": {"weight": 8.0}}
"""What `pivotal` changes in the character and object presets (the member's own values win):
the LoRA at half the preset's rate, held twice as hard to the base model. The trigger's vectors
learn the concept, so the LoRA beside them need not: on the toy model (docs/toy-model, passes
five to eight) the preset's rate and weight with pivotal learned no more of the concept
(+0.26 on 48 images) and changed ordinary prompts more (4.6 of 255 against 3.1, six prompts);
with these, 24 ordinary prompts are drawn within 0.023 of the base model's hit rate (the
preset without pivotal: 0.075 below) and changed by 3.3 of 255 (4.9). `change:pivotal=true`
changes only `pivotal`: a one-setting comparison stays one setting."""

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
                "preservation": PRESERVATION,
            },
            embedding={
                **_EMBEDDING_BASE,
                "embedding": {"templates": "auto", "initializer_token": "auto"},
            },
            pivotal=PIVOTAL_CONCEPT,
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
                "preservation": PRESERVATION,
            },
            embedding={
                **_EMBEDDING_BASE, "steps": 1500,
                "embedding": {"templates": "auto", "initializer_token": "auto"},
            },
            pivotal=PIVOTAL_CONCEPT,
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

FLUX_SAMPLING: dict[str, Any] = {
    # flow matching has no DDPM SNR to weight by (diffusers' and kohya's FLUX trainers: uniform
    # loss weights after logit-normal / shifted timestep sampling)
    "min_snr_gamma": None,
    # FLUX.1-dev's model card and FluxPipeline: guidance 3.5 with its own flow-matching Euler
    "validation": {"scheduler": "euler", "guidance": 3.5},
}
"""FLUX.1 values every LoRA/DoRA preset takes (quick-test included)."""
FLUX_TRAINING: dict[str, Any] = {
    "rank": 16,  # ai-toolkit's FLUX.1 LoRA example: linear 16 / alpha 16 (peers.md)
    "alpha": 16.0,
    "learning_rate": 1e-4,  # ai-toolkit's FLUX.1 example and kohya's FLUX.1 docs: 1e-4
    "resolution": 1024,  # FLUX.1's native size (kohya's sai_model_spec default for FLUX: 1024²)
    "steps": 1500,  # issue #14's target; ai-toolkit's example runs 2000 (peers.md)
    "checkpoint_every": 250,  # ai-toolkit: save and sample every 250 steps (peers.md)
    "keep_last": 4,  # ai-toolkit: max_step_saves_to_keep 4 (peers.md)
    "batch_size": 1,  # ai-toolkit's 24 GB FLUX.1 example: batch 1 at 1024 px
}
"""FLUX.1 scale for the named concept presets (not quick-test, which stays tiny)."""


ZIMAGE_SAMPLING: dict[str, Any] = {
    "min_snr_gamma": None,  # flow matching, as FLUX.1
    # Z-Image-Turbo's model card and ZImagePipeline docs: 9 steps (8 model evaluations) at
    # guidance 0 (Turbo is distilled: no CFG), the pipeline's flow-matching Euler
    "validation": {"scheduler": "euler", "guidance": 0.0, "steps": 9},
}
"""Z-Image values every LoRA/DoRA preset takes (quick-test keeps its own few steps)."""
ZIMAGE_TRAINING: dict[str, Any] = {
    # ai-toolkit's Z-Image examples (train_lora_zimage_turbo_32gb.yaml) use rank 128 with the
    # adaptive Prodigy optimiser (lr 1.0); `optimizer: prodigy` is available, but on the toy
    # benchmark it chose a step size that changed ordinary prompts 2-3x more than AdamW
    # (docs/toy-model/learn_bench_sweep.json), so the presets keep the FLUX.1 preset's AdamW
    # rank 16 / alpha 16 / lr 1e-4 (ai-toolkit's AdamW FLUX.1 example)
    "rank": 16,
    "alpha": 16.0,
    "learning_rate": 1e-4,
    "resolution": 1024,  # Z-Image's native size (ZImagePipeline's default height/width)
    "steps": 3000,  # ai-toolkit's Z-Image examples: 3000 steps ("2500-3000 typical")
    "checkpoint_every": 250,  # ai-toolkit's Z-Image examples: sample every 250 steps
    "keep_last": 4,  # as FLUX.1 (ai-toolkit keeps 6 saves every 500)
    "batch_size": 1,  # 24 GB: batch 1 at 1024 px (ai-toolkit's 32 GB example runs 2)
}
"""Z-Image scale for the named concept presets (not quick-test)."""
_BY_ARCHITECTURE = {
    "flux1": (FLUX_SAMPLING, FLUX_TRAINING),
    "zimage": (ZIMAGE_SAMPLING, ZIMAGE_TRAINING),
}


def architecture_values(name: str, method: Method, architecture: str) -> dict[str, Any]:
    """What a preset changes on `architecture` (empty for SD 1.x / SDXL)."""
    if architecture not in _BY_ARCHITECTURE or method == "embedding":
        return {}
    sampling, training = _BY_ARCHITECTURE[architecture]
    values = {key: dict(value) if isinstance(value, dict) else value
              for key, value in sampling.items()}  # fmt: skip
    if name == "quick-test":
        values["validation"].pop("steps", None)
    else:
        values |= training
    return values


def preset_choices() -> list[tuple[str, str]]:
    """(name, description) pairs in display order, for the bot's autocomplete."""
    return [(preset.name, preset.description) for preset in PRESETS.values()]


def apply_preset(
    name: str, method: Method, architecture: str = "sd1", **overrides: Any
) -> TrainConfig:
    """The preset's values for `method` on `architecture`, with `overrides` on top, as a
    validated TrainConfig; what the architecture cannot do is a `PresetError` line.

    Nested sections merge (`validation={"prompts": [...]}` keeps the preset's seeds), and
    `validation_prompts=[...]` is accepted as a shortcut, as are `keep_prompts=[...]` (preservation
    on, on those prompts), `keep_weight` (preservation's weight; 0: off) and `locon` (the conv
    layers adapted too, or not). When only `steps` is overridden, the preset's own checkpoint
    cadence and warm-up shrink to fit it (they are defaults, not the member's choice); anything
    the member sets explicitly is validated as given.
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise PresetError(f"unknown preset '{name}' (choose from: {', '.join(PRESETS)})")
    values = preset.values(method)
    _merge(values, architecture_values(name, method, architecture))
    values["method"] = method
    prompts = overrides.pop("validation_prompts", None)
    if prompts is not None:
        overrides.setdefault("validation", {})["prompts"] = list(prompts)
    _keep_overrides(overrides)
    _locon_override(overrides)
    pivotal = overrides.get("pivotal")
    if method != "embedding" and (values.get("pivotal") if pivotal is None else pivotal):
        _merge(values, preset.pivotal)  # under the member's own values, as the preset's are
    _merge(values, {key: value for key, value in overrides.items() if value is not None})
    if "steps" in overrides:
        _fit_cadence(values, overrides)
    _pivotal_values(values, method)
    if values.get("pivotal") and "pivotal" not in overrides and not values.get("trigger"):
        values["pivotal"] = False  # the preset's default; with no trigger there is no token
    if not values.get("pivotal"):
        values.pop("pivotal_lr", None)
        if method != "embedding":
            values.pop("embedding", None)
    try:
        config = TrainConfig(**values)
        check_architecture(config, architecture)
    except ValidationError as error:
        raise PresetError(explain_validation_error(error)) from None
    except ArchitectureMismatch as error:
        raise PresetError(str(error)) from None
    return config


def _merge(values: dict[str, Any], extra: dict[str, Any]) -> None:
    """`extra` over `values`; a section (a dict in both) merges key by key."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value


def _pivotal_values(values: dict[str, Any], method: Method) -> None:
    """A member's `pivotal` gets the trigger's vector settings (theirs first); without it, no
    token settings on a LoRA/DoRA (its config and settings hash stay as before pivotal)."""
    if values.get("pivotal"):
        values["embedding"] = {**PIVOTAL_EMBEDDING, **values.get("embedding", {})}
        return
    values.pop("pivotal_lr", None)
    values.pop("pivotal_until", None)
    if method != "embedding":
        values.pop("embedding", None)


def keep_weight_preservation(weight: float) -> dict[str, Any]:
    """The preservation settings a member's `keep_weight` stands for: 0 turns preservation off,
    any other value turns it on at that weight (`/train` and `change:` both read it so)."""
    return {"enabled": True, "weight": float(weight)} if weight else {"enabled": False}


def _keep_overrides(overrides: dict[str, Any]) -> None:
    """The member's preservation shortcuts made concrete: `keep_prompts` (preservation on, on
    those prompts) and `keep_weight` (how hard; 0 turns preservation off)."""
    keep, weight = overrides.pop("keep_prompts", None), overrides.pop("keep_weight", None)
    if weight == 0 and keep:
        raise PresetError("keep_prompts need preservation, which keep_weight 0 turns off")
    if not keep and weight is None:
        return
    preservation = overrides.setdefault("preservation", {})
    if keep:  # the prompts that must not change: preservation holds the adapter to them
        preservation.update(enabled=True, prompts=list(keep))
    if weight is not None:
        preservation.update(keep_weight_preservation(weight))


def locon_targets(locon: bool) -> str:
    """The adapter's `targets` for a member's `locon` (`/train` and `change:` alike)."""
    return "attention_conv" if locon else "attention"


def _locon_override(overrides: dict[str, Any]) -> None:
    """The member's `locon` made concrete: the adapter's targets (None: the preset's)."""
    locon = overrides.pop("locon", None)
    if locon is not None:
        overrides["targets"] = locon_targets(locon)


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
