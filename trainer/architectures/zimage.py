"""Z-Image (Tongyi-MAI, 6B; Turbo and base): a single-stream rectified-flow DiT over 2×2 patches.

- Conditioning: Qwen3's second-to-last hidden states of the chat-templated caption, padding
  dropped (`ZImagePipeline._encode_prompt`); no pooled vector. The transformer takes one
  variable-length tensor per caption, so the seam carries them padded with exact zeros to the
  sequence length and `predict` drops the zero rows again (a real token's state is never all
  zero), which keeps the text cache and batching architecture-blind.
- Latents: FLUX.1's 16-channel VAE, (mean − shift) × scale (`trainer.caches.encode_images`),
  patched 2×2 by the transformer: training sizes in steps of 16 px.
- Objective: the rectified flow of `trainer.architectures.flow` (x_σ = (1 − σ)·x + σ·ε,
  target ε − x; σ logit-normal, shifted by the scheduler's fixed shift, Z-Image-Turbo: 3.0, the
  shift its sampler applies at inference). The transformer is fed t = 1 − σ and predicts x − ε,
  which the pipeline negates before its Euler step; `predict` returns that negated output, so
  prediction and target are in the scheduler's convention.
- Adapter: attention q/k/v/out and the SwiGLU feed-forward (w1, w2, w3) of the main layers and
  both refiners; LoRA through peft, DoRA as kohya/LyCORIS per-layer `dora_scale` (1, in).
- Export: the layout ComfyUI's Lumina2/Z-Image branch reads (`comfy/lora.py` maps
  `diffusion_model.<diffusers path>` through `comfy.utils.z_image_to_diffusers`, q/k/v onto
  row slices of the fused `attention.qkv`) with kohya `lora_down`/`lora_up` and a float
  `.alpha` (ComfyUI scales by alpha / rank); diffusers' `ZImageLoraLoaderMixin` reads the same
  file (`_convert_non_diffusers_z_image_lora_to_diffusers` strips `diffusion_model.` and folds
  alpha / rank into the weights). DoRA: ComfyUI applies `dora_scale` per slice, which is per
  diffusers layer, as trained; diffusers drops `dora_scale`, so no diffusers copy.
- Metadata: musubi-tuner's sai_model_spec names (`Z-Image`, github.com/Tongyi-MAI/Z-Image).
- Sampling: the pipeline with its FlowMatchEuler scheduler; Turbo samples at guidance 0 (no
  CFG, negative prompt unused), base Z-Image with CFG and a negative prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.architectures.base import AdapterLayer, TextConditioning, kohya_layer
from trainer.architectures.flow import FlowTransformer

PREFIX = "diffusion_model."
"""Key prefix of the main file: ComfyUI's and diffusers' Z-Image loaders both read it."""
BLOCK_LISTS = ("noise_refiner", "context_refiner", "layers")
TARGETS = (
    "attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
    "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
)  # fmt: skip
MAX_TOKENS = 512
"""Caption tokens: ZImagePipeline's `max_sequence_length` default."""


def _pipeline_cls() -> Any:
    from diffusers import ZImagePipeline

    return ZImagePipeline


class ZImage(FlowTransformer):
    name = "zimage"
    base_version = "zimage"
    spec_architecture = "Z-Image"
    spec_implementation = "https://github.com/Tongyi-MAI/Z-Image"
    quantized_blocks = BLOCK_LISTS

    def pipeline_class(self) -> type:
        return _pipeline_cls()

    def max_sequence_length(self, pipeline: Any) -> int:
        return min(MAX_TOKENS, int(pipeline.tokenizer.model_max_length))

    # ---------------------------------------------------------------- conditioning

    def encode_prompts(self, model: Any, captions: list[str]) -> TextConditioning:
        length = self.max_sequence_length(model.pipeline)
        states = model.pipeline._encode_prompt(  # the pipeline's own template and layer
            prompt=list(captions), device=model.device, max_sequence_length=length
        )
        hidden = states[0].new_zeros(len(states), length, states[0].shape[-1])
        for row, state in enumerate(states):
            hidden[row, : state.shape[0]] = state
        return TextConditioning(hidden=hidden, pooled=None)

    @staticmethod
    def unpad(hidden: torch.Tensor) -> list[torch.Tensor]:
        """One tensor per caption without its zero padding rows (see the module docstring)."""
        return [row[row.abs().sum(dim=-1) > 0] for row in hidden]

    # ---------------------------------------------------------------- the objective

    def predict(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, text: TextConditioning
    ) -> torch.Tensor:
        transformer = model.denoiser
        dtype = next(transformer.parameters()).dtype
        frames = list(noisy.to(dtype).unsqueeze(2).unbind(0))  # (C, 1 frame, H, W) each
        captions = [c.to(noisy.device, dtype) for c in self.unpad(text.hidden)]
        out = transformer(
            frames, (1 - t.float()).to(noisy.device, dtype), captions, return_dict=False
        )[0]
        return -torch.stack(out).squeeze(2).to(noisy.dtype)

    # ---------------------------------------------------------------- the adapter

    def target_modules(self, component: str, module: nn.Module, config: Any) -> list[str]:
        if component != self.denoiser_name:
            return []
        names = []
        for block_list in BLOCK_LISTS:
            for index in range(len(getattr(module, block_list))):
                names += [f"{block_list}.{index}.{target}" for target in TARGETS]
        return names

    # ---------------------------------------------------------------- sampling

    def sample_options(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Base Z-Image samples with CFG and a negative prompt; Turbo (guidance 0) with neither."""
        guided = kw["guidance"] > 0
        return {"negative_prompt": (kw["negative_prompt"] or None) if guided else None}

    # ---------------------------------------------------------------- export

    def kohya_tensors(
        self, model: Any, layers: list[AdapterLayer], alpha: float
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for component, path, parts in layers:
            if component != self.denoiser_name:
                raise ValueError(f"Z-Image files hold the transformer only, not {component}")
            out |= kohya_layer(f"{PREFIX}{path}", parts, alpha)
        return out

    def kohya_to_peft(
        self, model: Any, tensors: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, torch.Tensor]]:
        known = set(self.target_modules(self.denoiser_name, model.denoiser, None))
        renames = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
        state: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            path, _, suffix = key.removeprefix(PREFIX).rpartition(".")
            if suffix == "weight":
                path, _, kind = path.rpartition(".")
                suffix = f"{kind}.weight"
            if path not in known:
                raise ValueError(f"key {key} matches no Z-Image layer of this base")
            state[f"{path}.{renames.get(suffix, suffix)}"] = tensor
        return {self.denoiser_name: state}

    def file_matches(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
        if metadata.get("ss_base_model_version") == self.base_version:
            return True
        if metadata.get("modelspec.architecture", "").startswith(self.spec_architecture):
            return True
        marks = (".noise_refiner.", ".context_refiner.", "noise_refiner.", "context_refiner.")
        return any(mark in key for key in tensors for mark in marks)
