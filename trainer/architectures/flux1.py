"""FLUX.1 (dev and schnell): a rectified-flow transformer over packed latents.

- Conditioning: CLIP-L's pooled vector + T5's token states (`FluxPipeline.encode_prompt`), T5
  cut at 512 tokens for dev and 256 for schnell (the pipelines' and kohya's defaults), or at
  the tokenizer's own limit when that is smaller (the tiny model).
- Latents: the 16-channel VAE's (mean − shift) × scale (`trainer.caches.encode_images`), packed
  into 2×2 patches for the transformer (`FluxPipeline._pack_latents`), hence training sizes in
  steps of 16 px (`trainer.config.ARCHITECTURES`).
- Objective: the rectified flow of `trainer.architectures.flow` (x_σ = (1 − σ)·x + σ·ε,
  target ε − x); σ logit-normal, shifted by the resolution-dependent μ for dev
  (`use_dynamic_shifting`, kohya's `flux_shift`), by the fixed `shift` otherwise (schnell: 1).
- dev is guidance-distilled: the transformer gets a guidance value during training too
  (3.5, the default of diffusers' and kohya's FLUX trainers); schnell has no guidance input.
- Adapter: every attention and MLP linear of the double- and single-stream blocks (kohya's
  FLUX LoRA covers the same layers of `DoubleStreamBlock` / `SingleStreamBlock`); LoRA through
  peft on diffusers' separate layers, DoRA on the fused BFL layers (`flux_dora`).
- Export: kohya names on BFL modules with q/k/v (and the single blocks' MLP input) fused
  (`trainer.formats.flux`); metadata as kohya's `sai_model_spec` writes it for FLUX.1.
- Sampling (`flow`): the pipeline with its FlowMatchEuler scheduler (no negative prompt, no CFG).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.architectures.base import AdapterLayer, TextConditioning, kohya_layer
from trainer.architectures.flow import FlowTransformer
from trainer.architectures.flux_dora import FusedDora, install, unwrap
from trainer.formats import flux as names

TRAINING_GUIDANCE = 3.5
"""Guidance fed to dev's guidance embedding while training (diffusers' and kohya's default)."""
T5_TOKENS = {True: 512, False: 256}
"""T5 sequence length: dev (guidance embedding) 512, schnell 256."""


def _pipeline_cls() -> Any:
    from diffusers import FluxPipeline

    return FluxPipeline


class Flux1(FlowTransformer):
    name = "flux1"
    base_version = "flux1"
    spec_architecture = "flux-1"
    spec_implementation = "https://github.com/black-forest-labs/flux"
    quantized_blocks = ("transformer_blocks", "single_transformer_blocks")

    def pipeline_class(self) -> type:
        return _pipeline_cls()

    @staticmethod
    def is_dev(model: Any) -> bool:
        return bool(model.denoiser.config.guidance_embeds)

    def max_sequence_length(self, pipeline: Any) -> int:
        dev = bool(pipeline.transformer.config.guidance_embeds)
        return min(T5_TOKENS[dev], int(pipeline.tokenizer_2.model_max_length))

    # ---------------------------------------------------------------- conditioning

    def encode_prompts(self, model: Any, captions: list[str]) -> TextConditioning:
        hidden, pooled, _ = model.pipeline.encode_prompt(
            prompt=captions,
            prompt_2=None,
            device=model.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length(model.pipeline),
        )
        return TextConditioning(hidden=hidden, pooled=pooled)

    # ---------------------------------------------------------------- the objective

    def predict(
        self, model: Any, noisy: torch.Tensor, t: torch.Tensor, text: TextConditioning
    ) -> torch.Tensor:
        pipe_cls = _pipeline_cls()
        transformer = model.denoiser
        dtype = next(transformer.parameters()).dtype
        b, c, h, w = noisy.shape
        device = noisy.device
        packed = pipe_cls._pack_latents(noisy.to(dtype), b, c, h, w)
        img_ids = pipe_cls._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(text.hidden.shape[1], 3, device=device, dtype=dtype)
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), TRAINING_GUIDANCE, device=device, dtype=torch.float32)
        out = transformer(
            hidden_states=packed,
            timestep=t.to(device, dtype),
            guidance=guidance,
            pooled_projections=text.pooled.to(dtype),  # type: ignore[union-attr]
            encoder_hidden_states=text.hidden.to(dtype),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        scale = model.pipeline.vae_scale_factor
        return pipe_cls._unpack_latents(out, h * scale, w * scale, scale)

    # ---------------------------------------------------------------- the adapter

    @staticmethod
    def block_counts(transformer: nn.Module) -> tuple[int, int]:
        return len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)

    def target_modules(self, component: str, module: nn.Module, config: Any) -> list[str]:
        if component != self.denoiser_name:
            return []
        groups = names.groups(*self.block_counts(module))
        return [member for _, members in groups.values() for member in members]

    def inject_dora(
        self, component: str, module: nn.Module, targets: list[str], config: Any
    ) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for kohya, (block, members) in names.groups(*self.block_counts(module)).items():
            if not set(members) <= set(targets):
                continue
            group = self._install_group(module, kohya, block, members, config.rank, config.alpha)
            for param in (group.lora_down.weight, group.lora_up.weight, group.dora_scale):
                param.requires_grad_(True)
                params.append(param)
        return params

    @staticmethod
    def _install_group(
        root: nn.Module, kohya: str, block: str, members: list[str], rank: int, alpha: float
    ) -> FusedDora:
        parent = root.get_submodule(block)
        relative = [m.removeprefix(block + ".") for m in members]
        group = FusedDora([unwrap(parent.get_submodule(p)) for p in relative], rank, alpha)
        install(parent, names.dora_attribute(kohya), relative, group)
        return group

    # ---------------------------------------------------------------- sampling

    # ---------------------------------------------------------------- export

    def spec_name(self, model: Any) -> str:
        return "flux-1-dev" if self.is_dev(model) else "flux-1-schnell"

    def kohya_tensors(
        self, model: Any, layers: list[AdapterLayer], alpha: float
    ) -> dict[str, torch.Tensor]:
        groups = names.groups(*self.block_counts(model.denoiser))
        members = names.member_index(*self.block_counts(model.denoiser))
        by_path = {f"{block}.{names.dora_attribute(k)}": k for k, (block, _) in groups.items()}
        out: dict[str, torch.Tensor] = {}
        pending: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        for component, path, parts in layers:
            if component != self.denoiser_name:
                raise ValueError(f"FLUX.1 files hold the transformer only, not {component}")
            if "dora_scale" in parts:  # a fused group: `<block>.dora_<bfl name>`
                out |= kohya_layer(by_path[path], parts, alpha)
                continue
            kohya, position = members[path]
            pending.setdefault(kohya, {})[position] = (
                parts["lora_down.weight"].detach().cpu(),
                parts["lora_up.weight"].detach().cpu(),
            )
        for kohya, found in pending.items():
            expected = len(groups[kohya][1])
            if len(found) != expected:
                raise ValueError(f"{kohya}: LoRA on {len(found)} of its {expected} fused layers")
            down, up, fused_alpha = names.fuse([found[i] for i in range(expected)], alpha)
            out[f"{kohya}.lora_down.weight"] = down.contiguous()
            out[f"{kohya}.lora_up.weight"] = up.contiguous()
            out[f"{kohya}.alpha"] = torch.tensor(fused_alpha)
        return out

    def kohya_to_peft(
        self, model: Any, tensors: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """A LoRA file split back onto diffusers' layers (exact for our block-diagonal fusion)."""
        groups = names.groups(*self.block_counts(model.denoiser))
        state: dict[str, torch.Tensor] = {}
        for kohya in sorted({key.partition(".")[0] for key in tensors}):
            if kohya not in groups:
                raise ValueError(f"kohya key {kohya} matches no FLUX.1 layer of this base")
            if f"{kohya}.dora_scale" in tensors:
                raise ValueError("a FLUX.1 DoRA file lives on fused layers; apply_kohya_dora it")
            members = groups[kohya][1]
            down, up = tensors[f"{kohya}.lora_down.weight"], tensors[f"{kohya}.lora_up.weight"]
            alpha = float(tensors.get(f"{kohya}.alpha", torch.tensor(float(down.shape[0]))))
            widths = [unwrap(model.denoiser.get_submodule(m)).out_features for m in members]
            pieces = names.split(down, up, widths) if len(members) > 1 else [(down, up)]
            for member, (part_down, part_up) in zip(members, pieces, strict=True):
                state[f"{member}.lora_A.weight"] = part_down
                state[f"{member}.lora_B.weight"] = part_up
                state[f"{member}.alpha"] = torch.tensor(alpha / len(members))
        return {self.denoiser_name: state}

    def diffusers_lora(
        self, model: Any, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        """diffusers' kohya FLUX converter hard-codes FLUX.1's `linear1` widths, so a file for
        any other width (the tiny model) fails there; the exact split of `kohya_to_peft`, with
        alpha / rank folded into B, loads on every width (and equals diffusers' own result on
        FLUX.1)."""
        state = self.kohya_to_peft(model, tensors)[self.denoiser_name]
        out: dict[str, torch.Tensor] = {}
        for key in state:
            if key.endswith(".lora_A.weight"):
                path = key.removesuffix(".lora_A.weight")
                down = state[key]
                scale = float(state[f"{path}.alpha"]) / down.shape[0]
                out[f"transformer.{path}.lora_A.weight"] = down
                out[f"transformer.{path}.lora_B.weight"] = state[f"{path}.lora_B.weight"] * scale
        return out

    @torch.no_grad()
    def apply_kohya_dora(self, model: Any, tensors: dict[str, torch.Tensor], weight: float) -> None:
        groups = names.groups(*self.block_counts(model.denoiser))
        for kohya in sorted({key.partition(".")[0] for key in tensors}):
            if kohya not in groups:
                raise ValueError(f"kohya key {kohya} matches no FLUX.1 layer of this base")
            block, members = groups[kohya]
            down = tensors[f"{kohya}.lora_down.weight"]
            alpha = float(tensors.get(f"{kohya}.alpha", torch.tensor(float(down.shape[0]))))
            group = self._install_group(model.denoiser, kohya, block, members, down.shape[0], alpha)
            group.lora_down.weight.copy_(down)
            group.lora_up.weight.copy_(tensors[f"{kohya}.lora_up.weight"])
            group.dora_scale.copy_(tensors[f"{kohya}.dora_scale"])
            group.multiplier = weight
            group.requires_grad_(False)

    def file_matches(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
        if metadata.get("ss_base_model_version", "").startswith("flux"):
            return True
        marks = ("lora_unet_double_blocks_", "lora_unet_single_blocks_")
        return any(k.startswith(marks) for k in tensors)
