"""What a training job asks for: one validated model shared by the CLI, the worker and the bot.

This module imports only pydantic, so the bot validates a job with the same model the worker
trains from without importing torch. Impossible combinations are refused here, with one clear
line, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["lora", "dora", "embedding"]
Optimizer = Literal["adamw", "adamw8bit", "prodigy"]
Schedule = Literal["constant", "cosine", "linear"]
Precision = Literal["auto", "no", "fp16", "bf16"]
Targets = Literal["attention", "attention_conv"]
Quantize = Literal["none", "int8", "nf4"]
NOMINAL_RESOLUTION = 512
"""Stands in for an unset resolution where the model is not loaded (dataset reports)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ValidationConfig(_Strict):
    """Fixed prompts × fixed seeds rendered at every checkpoint, as a user would generate."""

    prompts: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Validation prompts; `{trigger}` is replaced. Empty: derived from the trigger.",
    )
    seeds: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, max_length=4)
    steps: int = Field(20, ge=1, le=150, description="Sampling steps (as in a generation app).")
    guidance: float = Field(
        7.0, ge=0.0, le=30.0, description="Classifier-free guidance scale (Z-Image-Turbo: 0)."
    )
    scheduler: Literal["dpm++", "euler_a", "ddim", "euler"] = "dpm++"
    negative_prompt: str = ""
    leak_prompts: list[str] | None = Field(
        None,
        max_length=4,
        description="Prompts without the trigger shown below the trigger rows (leakage); "
        "None: derived (see trainer.leakage), []: no leakage row.",
    )


class EmbeddingConfig(_Strict):
    """Textual-inversion settings."""

    placeholder_token: str | None = Field(
        None, description="Token to learn; default: the trigger phrase."
    )
    num_vectors: int = Field(4, ge=1, le=16)
    initializer_token: str = Field(
        "person",
        min_length=1,
        description="Word the vectors start from; 'auto': chosen from the data "
        "(trainer.initializer).",
    )
    templates: Literal["object", "style", "captions", "auto"] = Field(
        "captions",
        description="Use dataset captions, or 'a photo of a {}' style templates; 'auto': "
        "captions when they describe the images, else object templates.",
    )


class PreservationConfig(_Strict):
    """Differential output preservation (ai-toolkit's `diff_output_preservation`).

    For a share of each batch the caption with the trigger replaced by `class_word` (or removed)
    is also trained, with the base model's own prediction as the target: the adapter learns the
    trigger and leaves prompts without it alone (see trainer.preservation)."""

    enabled: bool = False
    class_word: str = Field(
        "", max_length=60, description="Replaces the trigger in preserved captions; '': removed."
    )
    weight: float = Field(1.0, gt=0.0, le=10.0, description="Preservation loss multiplier.")
    share: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of each batch (rounded, at least 1) preserved."
    )
    unconditional: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Share of the preserved samples held on the empty prompt, whose prediction "
        "classifier-free guidance subtracts from every image (0: none).",
    )
    pool: int = Field(
        8,
        ge=0,
        le=64,
        description="Base-model predictions kept per training image and reused (0: the base "
        "model predicts every step).",
    )
    prior: bool = Field(
        False,
        description="Preserve on the base model's own renders of the preserved captions "
        "(rendered once at the start, as DreamBooth's class images) instead of the training "
        "images.",
    )
    prompts: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=list,
        max_length=64,
        description="Ordinary prompts without the trigger (what the team makes besides this "
        "concept, kohya's regularisation captions): the base model renders each once at the "
        "start and preserved samples are drawn from them instead of the training captions. "
        "[]: the training captions with the trigger replaced.",
    )


class TrainConfig(_Strict):
    """One training job. Defaults are invoke-training's SD 1.5 LoRA defaults."""

    method: Method = "lora"
    base_model: str = Field("tiny", description="Catalogue name or local path.")
    dataset: str = Field("", description="Dataset folder (ingested) or zip; set by the caller.")
    trigger: str = Field("", max_length=100, description="Trigger phrase / placeholder.")
    caption_prefix: str = Field("", max_length=200)
    output_dir: Path | None = None

    # data
    resolution: int | None = Field(
        None,
        ge=32,
        le=2048,
        multiple_of=8,
        description="Training side in px; None: the base model's native size.",
    )
    bucketing: bool = True
    caption_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    shuffle_captions: bool = False
    keep_tokens: int = Field(1, ge=0, description="Leading comma-separated tags kept in place.")
    flip: bool = False
    crop_jitter: float = Field(
        0.0,
        ge=0.0,
        le=0.25,
        description="Random crop within the bucket: zoom up to this fraction, then shift.",
    )
    heldout_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Share of images kept out of training for the held-out loss (0: none). "
        "None are held out from a set of fewer than 10 images.",
    )
    cache_latents: bool = True
    cache_text: bool = True

    # optimisation
    steps: int = Field(1000, ge=1, le=100_000)
    batch_size: int = Field(4, ge=1, le=64)
    gradient_accumulation: int = Field(1, ge=1, le=64)
    learning_rate: float = Field(1e-4, gt=0.0, le=10.0)
    text_encoder_lr: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="Text-encoder adapter lr (train_text_encoder); default: learning_rate.",
    )
    optimizer: Optimizer = "adamw"
    weight_decay: float = Field(1e-2, ge=0.0, le=1.0)
    schedule: Schedule = "constant"
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    min_snr_gamma: float | None = Field(5.0, gt=0.0)
    noise_offset: float = Field(0.0, ge=0.0, le=1.0)
    mixed_precision: Precision = Field(
        "auto",
        description="'auto': bf16 on a CUDA GPU that supports it (fp16 on older ones); on a CPU "
        "with bf16 instructions bf16 for denoisers of 8 M weights or more; else full fp32.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower."
    )
    quantize_base: Quantize = Field(
        "none",
        description="Quantise the frozen transformer's block layers with bitsandbytes (int8: "
        "LLM.int8, nf4: 4-bit NormalFloat) under the LoRA: less memory (FLUX.1, Z-Image).",
    )
    seed: int = 42
    max_nan_steps: int = Field(5, ge=1, description="Consecutive NaN/inf steps before failing.")

    # adapter
    rank: int = Field(4, ge=1, le=256)
    alpha: float = Field(1.0, gt=0.0)
    targets: Targets = "attention"
    train_text_encoder: bool = False
    pivotal: bool = Field(
        False,
        description="LoRA/DoRA: also learn the trigger as new token vectors (an embedding with "
        "the `embedding` settings) alongside the adapter: pivotal tuning, as in cog-sdxl and "
        "diffusers' advanced DreamBooth script. Delivered as two files: LoRA + embedding.",
    )
    pivotal_lr: float = Field(
        1e-3, gt=0.0, le=1.0, description="Learning rate of the trigger's vectors (pivotal)."
    )
    pivotal_until: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of the steps the trigger's vectors train (pivotal); then they stay "
        "fixed and the adapter goes on (diffusers' train_text_encoder_ti_frac).",
    )
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    preservation: PreservationConfig = Field(default_factory=PreservationConfig)

    # checkpoints and validation
    checkpoint_every: int = Field(250, ge=1)
    keep_last: int | None = Field(None, ge=1, description="Keep only the newest N (None: all).")
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _coherent(self) -> TrainConfig:
        if self.method == "embedding":
            if self.train_text_encoder:
                raise ValueError(
                    "embedding training learns a token: train_text_encoder must be off"
                )
            if not (self.embedding.placeholder_token or self.trigger):
                raise ValueError("an embedding needs a trigger (the token it learns)")
            if self.preservation.enabled:
                raise ValueError(
                    "preservation is for LoRA/DoRA: an embedding never changes prompts "
                    "without its token"
                )
        if self.pivotal:
            if self.method == "embedding":
                raise ValueError("pivotal is for LoRA/DoRA: an embedding learns its token already")
            if not (self.embedding.placeholder_token or self.trigger):
                raise ValueError("pivotal learns the trigger as an embedding: it needs a trigger")
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})"
            )
        if self.checkpoint_every > self.steps:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) is larger than steps ({self.steps})"
            )
        if self.text_encoder_lr is not None and not self.train_text_encoder:
            raise ValueError(
                "text_encoder_lr needs train_text_encoder (LoRA/DoRA on the text encoder)"
            )
        if self.quantize_base != "none" and self.method != "lora":
            raise ValueError(
                f"quantize_base {self.quantize_base!r} works under a LoRA only (DoRA needs the "
                "base weights unquantised): train a LoRA or set quantize_base to 'none'"
            )
        if self.preservation.prompts and self.trigger.strip():
            for prompt in self.preservation.prompts:
                if self.trigger.strip().lower() in prompt.lower():
                    raise ValueError(
                        f"preservation prompt {prompt[:60]!r} contains the trigger: these are "
                        "the prompts that must not change, so leave the trigger out"
                    )
        if self.optimizer == "prodigy" and self.learning_rate < 0.1:
            raise ValueError("Prodigy expects learning_rate ≈ 1.0 (it adapts the step size)")
        return self

    @property
    def side(self) -> int:
        """The training resolution; 512 (SD 1.x native) until the loop resolves a None."""
        return self.resolution or NOMINAL_RESOLUTION

    def with_native_resolution(self, native: int) -> TrainConfig:
        """This config with `resolution` set: the member's value, else the model's `native`."""
        if self.resolution is not None:
            return self
        return self.model_copy(update={"resolution": int(native)})

    @property
    def token(self) -> str:
        """The prompt token of an embedding."""
        return self.embedding.placeholder_token or self.trigger

    @property
    def learns_token(self) -> bool:
        """New token vectors train: an embedding, or a LoRA/DoRA with `pivotal`."""
        return self.method == "embedding" or self.pivotal

    @property
    def uses_text_cache(self) -> bool:
        """Text-encoder outputs can be cached only when captions and the encoder never change."""
        return (
            self.cache_text
            and not self.learns_token
            and not self.train_text_encoder
            and self.caption_dropout == 0.0
            and not self.shuffle_captions
        )

    @property
    def uses_latent_cache(self) -> bool:
        """VAE latents can be cached only without pixel augmentation (flip, crop jitter)."""
        return self.cache_latents and not self.flip and self.crop_jitter == 0.0

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps at which a checkpoint (and a validation grid) is written; always the last."""
        steps = list(range(self.checkpoint_every, self.steps + 1, self.checkpoint_every))
        if not steps or steps[-1] != self.steps:
            steps.append(self.steps)
        return steps


class ArchitectureMismatch(ValueError):
    """A job that asks a base architecture for something it cannot do; one readable line."""


ARCHITECTURES: dict[str, dict[str, object]] = {
    "sd1": {"label": "SD 1.x", "methods": ("lora", "dora", "embedding"), "multiple": 8},
    "sdxl": {"label": "SDXL", "methods": ("lora", "dora", "embedding"), "multiple": 8},
    "flux1": {"label": "FLUX.1", "methods": ("lora", "dora"), "multiple": 16, "quantize": True},
    "zimage": {"label": "Z-Image", "methods": ("lora", "dora"), "multiple": 16, "quantize": True},
}
"""What each base architecture can train (torch-free: the bot checks a job with it).
`multiple`: the pixel step of training sizes (FLUX.1 packs, Z-Image patches, 2×2 latents of an
8× VAE). `quantize`: `quantize_base` is offered (the large transformers; SD 1.x / SDXL fit
without it)."""


_PLURAL = {"lora": "LoRAs", "dora": "DoRAs", "embedding": "embeddings"}


def check_architecture(config: TrainConfig, architecture: str) -> None:
    """Refuse, with one line, what `architecture` cannot do (the bot and the worker both call
    this: the member hears it at /train time, and a stale job fails with the same sentence)."""
    caps = ARCHITECTURES.get(architecture)
    if caps is None:
        raise ArchitectureMismatch(f"unknown base architecture {architecture!r}")
    label = caps["label"]
    if config.method not in caps["methods"]:  # type: ignore[operator]
        can = " or ".join(caps["methods"])  # type: ignore[arg-type]
        raise ArchitectureMismatch(
            f"{label} models cannot train {_PLURAL[config.method]}; train a {can} instead"
        )
    multiple = int(caps["multiple"])  # type: ignore[call-overload]
    if config.resolution is not None and config.resolution % multiple:  # None: native size
        raise ArchitectureMismatch(
            f"{label} trains at sizes in steps of {multiple} px; {config.resolution} is not one"
        )
    if config.pivotal and "embedding" not in caps["methods"]:  # type: ignore[operator]
        raise ArchitectureMismatch(
            f"{label} has no embeddings to learn the trigger as (pivotal is for SD 1.x and "
            "SDXL); turn pivotal off"
        )
    if config.quantize_base != "none" and not caps.get("quantize"):
        raise ArchitectureMismatch(
            f"{label} bases are not quantised here (quantize_base is for the FLUX.1 and "
            "Z-Image transformers); set it to 'none'"
        )
    if architecture in ("flux1", "zimage"):
        _check_flow(config, str(label))
    if architecture == "flux1" and config.validation.negative_prompt:
        raise ArchitectureMismatch("FLUX.1 is guidance-distilled and ignores negative prompts; "
                                   "leave negative_prompt empty")  # fmt: skip
    turbo = config.validation.guidance <= 0
    if architecture == "zimage" and config.validation.negative_prompt and turbo:
        raise ArchitectureMismatch("Z-Image uses a negative prompt only with guidance above 0 "
                                   "(Turbo samples at 0); set one or leave it empty")  # fmt: skip


def _check_flow(config: TrainConfig, label: str) -> None:
    """Flow-matching transformer options that would be accepted and silently do nothing are
    refused instead (FLUX.1, Z-Image)."""
    if config.train_text_encoder:
        raise ArchitectureMismatch(f"{label} LoRAs here train the transformer only; turn off "
                                   "train_text_encoder")  # fmt: skip
    if config.targets != "attention":
        raise ArchitectureMismatch(f"{label} has no convolution layers for LoCon; turn it "
                                   "off (targets 'attention' adapts every layer)")  # fmt: skip
    if config.min_snr_gamma is not None:
        raise ArchitectureMismatch(f"min_snr_gamma weights DDPM timesteps; {label} is trained "
                                   "with flow matching: set it to none")  # fmt: skip
    if config.validation.scheduler != "euler":
        raise ArchitectureMismatch(f"{label} samples with its own flow-matching Euler sampler; "
                                   "set the validation scheduler to 'euler'")  # fmt: skip


class TrainOverrides(_Strict):
    """What a member may set from Discord on top of a preset (all optional)."""

    steps: Annotated[int, Field(ge=10, le=20_000)] | None = None
    rank: Annotated[int, Field(ge=1, le=128)] | None = None
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    resolution: Annotated[int, Field(ge=64, le=1536, multiple_of=64)] | None = None
    validation_prompts: list[str] | None = None
    keep_prompts: list[str] | None = None
    keep_weight: Annotated[float, Field(ge=0.0, le=10.0)] | None = None
    pivotal: bool | None = None
    locon: bool | None = None
    """Also adapt the UNet's convolution and feed-forward layers (`targets: attention_conv`,
    kohya's LoCon); None: the preset's targets."""
    dora: bool = False
