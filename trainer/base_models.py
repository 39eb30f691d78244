"""Loading a base model (frozen) from a local path: the one entry point for training and sampling.

Supported, all offline (the Hugging Face Hub is never contacted):
- `builtin:tiny` / `builtin:tiny-sdxl` / `builtin:tiny-flux`: the generated tiny models
  (`trainer.tiny_model`, `trainer.tiny_flux`).
- `builtin:toy`: the committed toy model (`trainer/builtin_models/toy`, drawn by `trainer.toy`).
- A diffusers pipeline folder (has `model_index.json`).
- A single-file checkpoint (`.safetensors`, `.ckpt`) **with a local diffusers config folder**:
  `from_single_file` otherwise fetches configs and tokenizers from the Hub. The config folder is
  the `single_file_config` argument, else a folder next to the file named like it without the
  suffix, or `<stem>.config`; it needs the component configs and tokenizer files (weights not
  needed). Without one, a `BaseModelError` says so. FLUX.1 and Z-Image single files hold the
  transformer only (as BFL and ComfyUI distribute them): the config folder then also holds the
  VAE, text encoder(s) and tokenizer(s) with their weights (the model's diffusers folder).

What differs per architecture (pipeline class, denoiser, training schedule) comes from
`trainer.architectures`.
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
    from trainer.architectures import Architecture as ArchitectureImpl

Architecture = Literal["sd1", "sdxl", "flux1", "zimage"]
BUILTINS: dict[str, Architecture] = {
    "builtin:tiny": "sd1", "builtin:tiny-sdxl": "sdxl", "builtin:toy": "sd1",
    "builtin:tiny-flux": "flux1", "builtin:tiny-zimage": "zimage",
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
    denoiser: torch.nn.Module  # the UNet (SD 1.x, SDXL) or transformer (FLUX.1)
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> ArchitectureImpl:
        """The architecture module: everything that differs between base models."""
        from trainer.architectures import get_architecture

        return get_architecture(self.architecture)

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser under its SD name (kept for SD-specific callers)."""
        return self.denoiser

    @property
    def prediction_type(self) -> str:
        """What the denoiser predicts: `epsilon`, `v_prediction` or `flow` (FLUX.1)."""
        fixed = self.arch.prediction_type
        return fixed or str(self.noise_scheduler.config.prediction_type)

    @property
    def is_sdxl(self) -> bool:
        return self.architecture == "sdxl"

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def native_resolution(self) -> int:
        """The side the model was trained at, in pixels: a UNet's latent sample size times the
        VAE's factor; else the VAE's own sample size (the DiT families' VAEs say 1024; the tiny
        models' 64); else the pipeline's default."""
        pipe = self.pipeline
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        latent = getattr(self.denoiser.config, "sample_size", None)
        if isinstance(latent, int) and latent > 0:
            return latent * scale
        vae_side = getattr(pipe.vae.config, "sample_size", None)
        if isinstance(vae_side, int) and vae_side > 0:
            return vae_side
        return int(getattr(pipe, "default_sample_size", 128)) * scale


def resolve_base_model(name_or_path: str, settings: Settings) -> tuple[str, Architecture]:
    """Map a catalogue name (or builtin / local path) to `(path, architecture)` with the one
    resolver the bot and doctor use (`storage.base_models`): a catalogue entry keeps its
    configured architecture; only a bare local path has it detected."""
    from storage.base_models import UnknownBaseModel, resolve

    try:
        model = resolve(name_or_path, settings)
    except UnknownBaseModel as error:
        raise BaseModelError(str(error)) from None
    if model.architecture:
        return model.path, model.architecture  # type: ignore[return-value]
    return model.path, detect_architecture(Path(model.path))


def detect_architecture(path: Path) -> Architecture:
    """Guess sd1 / sdxl / flux1 from a folder's model_index.json or a checkpoint's key names."""
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise BaseModelError(f"{path} is not a diffusers folder (no model_index.json)")
        data = json.loads(index.read_text(encoding="utf-8"))
        if str(data.get("_class_name", "")).startswith("Flux"):
            return "flux1"
        if str(data.get("_class_name", "")).startswith("ZImage"):
            return "zimage"
        return "sdxl" if "text_encoder_2" in data else "sd1"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
        if any("double_blocks.0.img_attn.qkv" in k for k in keys):
            return "flux1"
        if any("noise_refiner.0.attention" in k for k in keys):
            return "zimage"
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
    quantize: str = "none",
) -> LoadedModel:
    """Load a pipeline, freeze every weight, move the denoiser/text encoders to `dtype` and the
    VAE to fp32; `quantize` (`int8` / `nf4`) quantises the denoiser's blocks (`trainer.quantize`).

    The VAE stays fp32 because SD VAEs overflow in fp16 (NaN latents).
    """
    if architecture not in BUILTINS.values():
        known = ", ".join(sorted(set(BUILTINS.values())))
        raise BaseModelError(f"unknown architecture {architecture!r} (use one of: {known})")
    pipeline = _load_pipeline(path, architecture, cache_dir, single_file_config)
    return _wrap(
        pipeline, architecture, device=torch.device(device), dtype=dtype, source=path,
        quantize=quantize,
    )  # fmt: skip


def _load_pipeline(
    path: str, architecture: str, cache_dir: Path, single_file_config: str | Path | None
) -> Any:
    from trainer.architectures import get_architecture

    arch = get_architecture(architecture)
    cls = arch.pipeline_class()
    extra = arch.pipeline_kwargs()
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
        if architecture in TRANSFORMER_FILES:
            return _transformer_single_file(cls, architecture, local, config)
        return cls.from_single_file(str(local), config=str(config), local_files_only=True, **extra)
    raise BaseModelError(
        f"base model {path!r} not found: give a diffusers folder, a .safetensors/.ckpt file "
        "with a local config folder, or builtin:tiny"
    )


TRANSFORMER_FILES = {
    "flux1": ("FLUX.1", "FluxTransformer2DModel", ("vae", "text_encoder", "text_encoder_2",
              "tokenizer", "tokenizer_2"), "BFL or ComfyUI layout at FLUX.1's size"),
    "zimage": ("Z-Image", "ZImageTransformer2DModel", ("vae", "text_encoder", "tokenizer"),
               "ComfyUI layout"),
}  # fmt: skip
"""Architectures whose single files hold the transformer only (as BFL and ComfyUI ship them):
name, diffusers class, the components the config folder must hold with weights, layouts read."""


def _transformer_single_file(cls: Any, architecture: str, checkpoint: Path, config: Path) -> Any:
    """A transformer-only file + a diffusers folder of the same model for the other components."""
    import diffusers

    name, class_name, parts, layouts = TRANSFORMER_FILES[architecture]
    for part in parts:
        if not (config / part).is_dir():
            raise BaseModelError(
                f"{checkpoint.name} holds the {name} transformer only; its config folder {config} "
                f"needs the other components with weights (missing: {part}/)"
            )
    try:
        transformer = getattr(diffusers, class_name).from_single_file(
            str(checkpoint), config=str(config), subfolder="transformer", local_files_only=True
        )
    except (KeyError, RuntimeError, ValueError) as error:
        # diffusers' converters rename/split keys at the real model's widths: a file of another
        # layout or size fails deep inside them
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise BaseModelError(
            f"{checkpoint.name} is not a {name} transformer diffusers can convert "
            f"({layouts}): {reason}"
        ) from None
    return cls.from_pretrained(config, transformer=transformer, local_files_only=True)


def _single_file_config(checkpoint: Path, explicit: str | Path | None) -> Path:
    """Find the local diffusers config folder that replaces the Hub lookup of from_single_file."""
    from storage.base_models import single_file_config

    folder = single_file_config(checkpoint, explicit)
    if folder is not None:
        return folder
    raise BaseModelError(
        f"single-file checkpoint {checkpoint.name} needs a local diffusers config folder "
        f"(model_index.json + component configs + tokenizers) at "
        f"{Path(explicit) if explicit else checkpoint.with_suffix('')}; "
        "offline, configs cannot be fetched from the Hugging Face Hub"
    )


def _move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Cast only when needed (diffusers warns on every dtype `.to()`)."""
    current = next(module.parameters())
    if current.dtype != dtype:
        module.to(dtype=dtype)
    if current.device != device:
        module.to(device=device)


def _decode_in_vae_dtype(vae: torch.nn.Module) -> None:
    """Let the fp32 VAE decode latents of any dtype, outside autocast.

    Under bf16/fp16 the UNet and text encoders are cast down while the VAE stays fp32, so a
    pipeline hands bf16 latents to the fp32 VAE ("Input type (c10::BFloat16) and bias type
    (float) should be the same"); diffusers' SD pipeline does not cast them. The VAE also must
    not run under fp16 autocast (SD VAEs overflow to NaN), so its decode runs in fp32.
    """
    original = vae.decode
    if getattr(original, "_atelier_fp32", False):
        return

    def decode(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        dtype = next(vae.parameters()).dtype
        with torch.autocast(z.device.type, enabled=False):
            return original(z.to(dtype), *args, **kwargs)

    decode._atelier_fp32 = True  # type: ignore[attr-defined]
    vae.decode = decode  # type: ignore[method-assign]


def _wrap(
    pipeline: Any,
    architecture: Architecture,
    *,
    device: torch.device,
    dtype: torch.dtype,
    source: str,
    quantize: str = "none",
) -> LoadedModel:
    from trainer.architectures import get_architecture

    arch = get_architecture(architecture)
    denoiser = getattr(pipeline, arch.denoiser_name)
    if quantize != "none":
        if not arch.quantized_blocks:
            raise BaseModelError(f"{architecture} bases cannot be quantised here")
        from trainer.quantize import quantize_linears

        _move(denoiser, torch.device("cpu"), dtype)
        quantize_linears(denoiser, arch.quantized_blocks, quantize, device, dtype)
    text_encoders, tokenizers = [], []
    for suffix in ("", "_2"):
        if getattr(pipeline, f"text_encoder{suffix}", None) is not None:
            text_encoders.append(getattr(pipeline, f"text_encoder{suffix}"))
            tokenizers.append(getattr(pipeline, f"tokenizer{suffix}"))
    for module in (denoiser, *text_encoders):
        _move(module, device, dtype)
    _move(pipeline.vae, device, torch.float32)
    _decode_in_vae_dtype(pipeline.vae)
    for module in (denoiser, pipeline.vae, *text_encoders):
        module.requires_grad_(False)
        module.eval()
    return LoadedModel(
        architecture=architecture,
        pipeline=pipeline,
        denoiser=denoiser,
        vae=pipeline.vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=arch.training_scheduler(pipeline),
        source=source,
        extra={"quantized": quantize} if quantize != "none" else {},
    )
