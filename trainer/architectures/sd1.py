"""Stable Diffusion 1.x: a UNet over 4-channel latents, one CLIP text encoder, DDPM ε/v objective.

The objective is the classic one (diffusers' `train_text_to_image_lora.py`, kohya): uniform
integer timesteps, `add_noise`, target ε or v by the scheduler's `prediction_type`, optionally
weighted by min-SNR-γ (Hang et al. 2023). Sampling uses the member-facing scheduler names of
`trainer.schedulers`. kohya names keep diffusers' UNet paths (`lora_unet_down_blocks_…`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from trainer.architectures.base import AdapterLayer, Architecture, TextConditioning, kohya_layer

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# kohya LoCon / C3Lier: every Linear/Conv in transformer blocks and resnets, plus resampler convs
UNET_CONV_EXTRA = (
    "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "time_emb_proj",
    "downsamplers.0.conv", "upsamplers.0.conv",
)  # fmt: skip
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_UNET_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class SD1(Architecture):
    name = "sd1"
    denoiser_name = "unet"
    base_version = "sd_v1"
    spec_architecture = "stable-diffusion-v1"

    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def training_scheduler(self, pipeline: Any) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipeline.scheduler.config)

    # ---------------------------------------------------------------- conditioning

    def encode_prompts(self, model: Any, captions: list[str]) -> TextConditioning:
        encoder = model.text_encoders[0]
        ids = tokenize(model.tokenizers[0], captions).to(model.device)
        return TextConditioning(hidden=encoder(ids)[0], pooled=None)

    # ---------------------------------------------------------------- the objective

    def sample_timesteps(
        self, model: Any, config: Any, latents: torch.Tensor, generator: Any
    ) -> torch.Tensor:
        count = model.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, count, (latents.shape[0],), generator=generator).to(latents.device)

    def fixed_timesteps(self, model: Any, count: int) -> list[float]:
        total = model.noise_scheduler.config.num_train_timesteps
        return [int((k + 0.5) * total / count) for k in range(count)]

    def noisy_and_target(
        self, model: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scheduler = model.noise_scheduler
        t = t.long()
        noisy = scheduler.add_noise(latents, noise, t)
        if scheduler.config.prediction_type == "v_prediction":
            return noisy, scheduler.get_velocity(latents, noise, t)
        return noisy, noise

    def unet_kwargs(self, model: Any, noisy: torch.Tensor, text: TextConditioning) -> dict:
        """Extra UNet inputs (none for SD 1.x)."""
        return {}

    def predict(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, text: TextConditioning
    ) -> torch.Tensor:
        dtype = next(model.denoiser.parameters()).dtype
        return model.denoiser(
            noisy.to(dtype),
            t.long(),
            text.hidden.to(dtype),
            **self.unet_kwargs(model, noisy, text),
        ).sample

    def loss_weight(self, model: Any, config: Any, t: torch.Tensor) -> torch.Tensor | None:
        """min-SNR-γ: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v."""
        if config.min_snr_gamma is None:
            return None
        scheduler = model.noise_scheduler
        alphas = scheduler.alphas_cumprod.to(t.device)[t.long()].float()
        snr = alphas / (1 - alphas)
        clipped = torch.clamp(snr, max=config.min_snr_gamma)
        if scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    # ---------------------------------------------------------------- the adapter

    def target_modules(self, component: str, module: nn.Module, config: Any) -> list[str]:
        if component == "unet":
            extra = UNET_CONV_EXTRA if config.targets == "attention_conv" else ()
            suffixes = UNET_ATTENTION + extra
        else:
            suffixes = TEXT_ENCODER_TARGETS
        names = []
        for name, child in module.named_modules():
            if not isinstance(child, nn.Linear | nn.Conv2d):
                continue
            if component == "unet" and not name.startswith(_UNET_BLOCKS):
                continue
            if any(name == s or name.endswith("." + s) for s in suffixes):
                names.append(name)
        return names

    # ---------------------------------------------------------------- sampling

    def sample(self, pipeline: Any, **kw: Any) -> Any:
        from trainer.schedulers import make_scheduler

        base = getattr(pipeline, "_atelier_base_scheduler_config", None)
        if base is None:
            base = dict(pipeline.scheduler.config)
            pipeline._atelier_base_scheduler_config = base
        pipeline.scheduler = make_scheduler(kw["scheduler"], base)
        result = pipeline(
            prompt=kw["prompt"],
            negative_prompt=kw["negative_prompt"] or None,
            num_inference_steps=kw["steps"],
            guidance_scale=kw["guidance"],
            generator=torch.Generator("cpu").manual_seed(kw["seed"]),
            width=kw["width"],
            height=kw["height"],
            output_type="pil",
        )
        return result.images[0]

    # ---------------------------------------------------------------- export

    def kohya_name(self, model: Any, component: str, path: str) -> str:
        from trainer.formats.kohya import kohya_module_name

        config = model.denoiser.config
        has_attention = tuple("CrossAttn" in name for name in config.up_block_types)
        return kohya_module_name(
            self.name, component, path, int(config.layers_per_block), has_attention
        )

    def kohya_tensors(
        self, model: Any, layers: list[AdapterLayer], alpha: float
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for component, path, parts in layers:
            out |= kohya_layer(self.kohya_name(model, component, path), parts, alpha)
        return out

    def kohya_to_peft(
        self, model: Any, tensors: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Names resolved against the model's modules (module names contain `_`, so kohya
        names are not reversible by string rules alone)."""
        names = self._kohya_index(model)
        out: dict[str, dict[str, torch.Tensor]] = {}
        renames = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
        for key, tensor in tensors.items():
            module_name, _, suffix = key.partition(".")
            if module_name not in names:
                raise ValueError(f"kohya key {key} matches no module of the {self.name} base")
            component, path = names[module_name]
            out.setdefault(component, {})[f"{path}.{renames.get(suffix, suffix)}"] = tensor
        return out

    def _kohya_index(self, model: Any) -> dict[str, tuple[str, str]]:
        from trainer.adapters import components

        index: dict[str, tuple[str, str]] = {}
        for component, module in components(model).items():
            for path, child in module.named_modules():
                if isinstance(child, nn.Linear | nn.Conv2d) and path:
                    path = re.sub(r"\.base(_layer)?$", "", path)
                    try:
                        name = self.kohya_name(model, component, path)
                    except (ValueError, IndexError):
                        continue
                    index.setdefault(name, (component, path))
        return index

    def file_matches(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
        version = metadata.get("ss_base_model_version")
        if version:
            return version == self.base_version
        marks = ("lora_te2_", "lora_unet_input_blocks", "clip_g", "lora_unet_double_blocks_")
        return not any(k.startswith(marks) for k in tensors)
