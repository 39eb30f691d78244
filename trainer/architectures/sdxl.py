"""SDXL: SD 1.x's objective with two CLIP encoders (penultimate states concatenated + the second
encoder's pooled projection) and the `text_time` size conditioning.

The size ids are (original h, w, crop top, left, target h, w); every image is resized to cover its
bucket and centre-cropped, so original = target = the bucket, read from the latent's shape.
kohya files use the original Stability (SGM) UNet names and `lora_te1_` / `lora_te2_`.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.architectures.base import TextConditioning
from trainer.architectures.sd1 import SD1, tokenize


class SDXL(SD1):
    name = "sdxl"
    base_version = "sdxl_base_v1-0"
    spec_architecture = "stable-diffusion-xl-v1-base"
    spec_implementation = "https://github.com/Stability-AI/generative-models"

    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {}

    def encode_prompts(self, model: Any, captions: list[str]) -> TextConditioning:
        states, pooled = [], None
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
            output = encoder(
                tokenize(tokenizer, captions).to(model.device), output_hidden_states=True
            )
            states.append(output.hidden_states[-2])
            pooled = output[0]  # the second encoder's projected pooled embedding
        return TextConditioning(hidden=torch.cat(states, dim=-1), pooled=pooled)

    def unet_kwargs(self, model: Any, noisy: torch.Tensor, text: TextConditioning) -> dict:
        scale = model.pipeline.vae_scale_factor
        h, w = noisy.shape[-2] * scale, noisy.shape[-1] * scale
        time_ids = torch.tensor(
            [[h, w, 0, 0, h, w]] * noisy.shape[0], dtype=torch.float32, device=noisy.device
        )
        return {"added_cond_kwargs": {"text_embeds": text.pooled, "time_ids": time_ids}}

    def file_matches(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
        version = metadata.get("ss_base_model_version", "")
        if version:
            return version.startswith("sdxl")
        marks = ("lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks", "clip_g")
        return any(k.startswith(marks) for k in tensors)
