"""What the rectified-flow transformers (FLUX.1, Z-Image) share behind the `Architecture` seam.

Both are trained and sampled the same way; only conditioning, the denoiser call, the adapter's
layers and the file layout differ (their own modules):

- the noise schedule is the pipeline's FlowMatchEuler scheduler;
- objective (rectified flow, as diffusers' `train_dreambooth_lora_flux.py`, kohya and
  SimpleTuner): x_σ = (1 − σ)·x + σ·ε, target ε − x, uniform loss weight; σ drawn logit-normal
  (SD3 paper, mean 0, std 1) and then shifted as the model's own scheduler shifts at inference:
  by the resolution-dependent μ when it uses dynamic shifting (FLUX.1-dev, kohya's
  `flux_shift`), by its fixed `shift` otherwise (schnell: 1, Z-Image-Turbo: 3);
- the held-out loss at σ spread evenly over (0, 1);
- sampling with the pipeline's own scheduler, cut at the architecture's caption length;
  a negative prompt only where `sample_options` adds one;
- the default size: 1024 px for the real 8× VAE, 64 px for the tiny models;
- no `modelspec.prediction_type` in the file (kohya writes none for these models).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch

from trainer.architectures.base import Architecture


class FlowTransformer(Architecture):
    """A rectified-flow transformer over 2×2-patched latents (see the module docstring)."""

    denoiser_name = "transformer"
    prediction_type = "flow"

    def training_scheduler(self, pipeline: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)

    @abstractmethod
    def max_sequence_length(self, pipeline: Any) -> int:
        """Caption tokens the text encoder is cut at (training and sampling alike)."""

    # ---------------------------------------------------------------- the objective

    def sample_timesteps(
        self, model: Any, config: Any, latents: torch.Tensor, generator: Any
    ) -> torch.Tensor:
        u = torch.sigmoid(torch.randn(latents.shape[0], generator=generator, dtype=torch.float64))
        image_tokens = latents.shape[-2] * latents.shape[-1] // 4  # 2×2 patches
        return self.shift(model, u, image_tokens).float().to(latents.device)

    @staticmethod
    def shift(model: Any, sigmas: torch.Tensor, image_tokens: int) -> torch.Tensor:
        """The scheduler's own shift: resolution-dependent (dynamic) or fixed (`shift`)."""
        cfg = model.noise_scheduler.config
        if cfg.use_dynamic_shifting:
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            mu = calculate_shift(
                image_tokens, cfg.base_image_seq_len, cfg.max_image_seq_len,
                cfg.base_shift, cfg.max_shift,
            )  # fmt: skip
            return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        return cfg.shift * sigmas / (1 + (cfg.shift - 1) * sigmas)

    def fixed_timesteps(self, model: Any, count: int) -> list[float]:
        return [(k + 0.5) / count for k in range(count)]

    def noisy_and_target(
        self, model: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = t.float().reshape(-1, *([1] * (latents.ndim - 1)))
        return (1 - sigma) * latents + sigma * noise, noise - latents

    # ---------------------------------------------------------------- sampling

    def sample_options(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Pipeline arguments beyond the shared ones (none: no negative prompt, no CFG)."""
        return {}

    def sample(self, pipeline: Any, **kw: Any) -> Any:
        result = pipeline(
            prompt=kw["prompt"],
            **self.sample_options(kw),
            num_inference_steps=kw["steps"],
            guidance_scale=kw["guidance"],
            generator=torch.Generator("cpu").manual_seed(kw["seed"]),
            width=kw["width"],
            height=kw["height"],
            max_sequence_length=self.max_sequence_length(pipeline),
            output_type="pil",
        )
        return result.images[0]

    def default_side(self, pipeline: Any) -> int:
        return 1024 if pipeline.vae_scale_factor == 8 else 64

    # ---------------------------------------------------------------- export

    def spec_prediction_type(self, model: Any) -> str | None:
        return None
