"""Loading a base model (frozen) from a local path: the one entry point for training and sampling.

Supported, all offline (the Hugging Face Hub is never contacted):
- `builtin:tiny` / `builtin:tiny-sdxl`: the generated tiny models (`trainer.tiny_model`).
- `builtin:toy`: the committed toy model (`trainer/builtin_models/toy`, drawn by `trainer.toy`).
- A diffusers pipeline folder (has `model_index.json`).
- A single-file checkpoint (`.safetensors`, `.ckpt`) **with a local diffusers config folder**:
  `from_single_file` otherwise fetches configs and tokenizers from the Hub. The config folder is
  the `single_file_config` argument, else a folder next to the file named like it without the
  suffix, or `<stem>.config`; it needs the component configs and tokenizer files (weights not
  needed). Without one, a `BaseModelError` says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from trainer.tiny_model import ensure_tiny_model

if TYPE_CHECKING:
    from storage.settings import Settings

Architecture = Literal["sd1", "sdxl"]
BUILTINS: dict[str, Architecture] = {
    "builtin:tiny": "sd1", "builtin:tiny-sdxl": "sdxl", "builtin:toy": "sd1",
}  # fmt: skip
TOY_MODEL_DIR = Path(__file__).parent / "builtin_models" / "toy"
"""`builtin:toy`: the committed toy model that draws coloured shapes (`trainer/toy/`)."""
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class BaseModelError(RuntimeError):
    """A base model that cannot be loaded here, with one line saying why."""


@dataclass
class LoadedModel:
    """A frozen base model and the pieces the loop, export and sampling need."""

    architecture: Architecture
    pipeline: Any
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        """`epsilon` or `v_prediction`: what the UNet predicts (the loss target)."""
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def is_sdxl(self) -> bool:
        return self.architecture == "sdxl"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def native_resolution(self) -> int:
        """The side the model was trained at: the pipeline's default sample size in pixels."""
        pipe = self.pipeline
        latent = getattr(pipe, "default_sample_size", None) or self.unet.config.sample_size
        return int(latent * getattr(pipe, "vae_scale_factor", 8))


def resolve_base_model(name_or_path: str, settings: Settings) -> tuple[str, Architecture]:
    """Map a catalogue name (or builtin / local path) to `(path, architecture)`."""
    entry = settings.base_models.get(name_or_path)
    if entry is not None:
        return entry.path, entry.architecture
    if name_or_path in BUILTINS:
        return name_or_path, BUILTINS[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path), detect_architecture(path)
    known = ", ".join(sorted(settings.base_models)) or "none"
    raise BaseModelError(f"unknown base model {name_or_path!r} (catalogue: {known})")


def detect_architecture(path: Path) -> Architecture:
    """Guess sd1 / sdxl from a folder's model_index.json or a checkpoint's key names."""
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise BaseModelError(f"{path} is not a diffusers folder (no model_index.json)")
        data = json.loads(index.read_text(encoding="utf-8"))
        return "sdxl" if "text_encoder_2" in data else "sd1"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = handle.keys()
            return "sdxl" if any(k.startswith("conditioner.embedders.1") for k in keys) else "sd1"
    return "sd1"


def load_base_model(
    path: str,
    architecture: str,
    *,
    cache_dir: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    single_file_config: str | Path | None = None,
) -> LoadedModel:
    """Load a pipeline, freeze every weight, move UNet/text encoders to `dtype` and the VAE to fp32.

    The VAE stays fp32 because SD VAEs overflow in fp16 (NaN latents).
    """
    if architecture not in ("sd1", "sdxl"):
        raise BaseModelError(f"unknown architecture {architecture!r} (use 'sd1' or 'sdxl')")
    pipeline = _load_pipeline(path, architecture, cache_dir, single_file_config)
    return _wrap(pipeline, architecture, device=torch.device(device), dtype=dtype, source=path)


def _pipeline_class(architecture: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline


def _load_pipeline(
    path: str, architecture: str, cache_dir: Path, single_file_config: str | Path | None
) -> Any:
    cls = _pipeline_class(architecture)
    extra: dict[str, Any] = {}
    if architecture == "sd1":
        extra = {"safety_checker": None, "requires_safety_checker": False}
    if path in BUILTINS:
        if BUILTINS[path] != architecture:
            raise BaseModelError(f"{path} is {BUILTINS[path]}, not {architecture}")
        if path == "builtin:toy":
            if not (TOY_MODEL_DIR / "model_index.json").is_file():
                raise BaseModelError(f"the toy model is missing from {TOY_MODEL_DIR}")
            return cls.from_pretrained(TOY_MODEL_DIR, local_files_only=True, **extra)
        folder = ensure_tiny_model(Path(cache_dir), BUILTINS[path])
        return cls.from_pretrained(folder, local_files_only=True, **extra)
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise BaseModelError(f"{local} is not a diffusers folder (no model_index.json)")
        return cls.from_pretrained(local, local_files_only=True, **extra)
    if local.is_file() and local.suffix in SINGLE_FILE_SUFFIXES:
        config = _single_file_config(local, single_file_config)
        return cls.from_single_file(str(local), config=str(config), local_files_only=True, **extra)
    raise BaseModelError(
        f"base model {path!r} not found: give a diffusers folder, a .safetensors/.ckpt file "
        "with a local config folder, or builtin:tiny"
    )


def _single_file_config(checkpoint: Path, explicit: str | Path | None) -> Path:
    """Find the local diffusers config folder that replaces the Hub lookup of from_single_file."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [
            checkpoint.with_suffix(""),
            checkpoint.with_suffix(".config"),
        ]
    )
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return folder
    raise BaseModelError(
        f"single-file checkpoint {checkpoint.name} needs a local diffusers config folder "
        f"(model_index.json + component configs + tokenizers) at {candidates[0]}; "
        "offline, configs cannot be fetched from the Hugging Face Hub"
    )


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Cast only when needed (diffusers warns on every dtype `.to()`)."""
    current = next(module.parameters())
    if current.dtype != dtype:
        module.to(dtype=dtype)
    if current.device != device:
        module.to(device=device)


def _wrap(
    pipeline: Any,
    architecture: Architecture,
    *,
    device: torch.device,
    dtype: torch.dtype,
    source: str,
) -> LoadedModel:
    from diffusers import DDPMScheduler

    text_encoders = [pipeline.text_encoder]
    tokenizers = [pipeline.tokenizer]
    if architecture == "sdxl":
        text_encoders.append(pipeline.text_encoder_2)
        tokenizers.append(pipeline.tokenizer_2)
    for module in (pipeline.unet, *text_encoders):
        _move(module, device, dtype)
    _move(pipeline.vae, device, torch.float32)
    for module in (pipeline.unet, pipeline.vae, *text_encoders):
        module.requires_grad_(False)
        module.eval()
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    return LoadedModel(
        architecture=architecture,
        pipeline=pipeline,
        unet=pipeline.unet,
        vae=pipeline.vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=noise_scheduler,
        source=source,
    )
