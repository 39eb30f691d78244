"""Sampler names a member picks → diffusers schedulers, shared by validation and generation.

Validation grids and `atelier generate` use this one mapping, so a grid shows what a member
gets with the same settings in their app (names follow A1111: "DPM++ 2M Karras", "Euler a").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SCHEDULER_NAMES = ("dpm++", "euler_a", "ddim", "euler")
NOISE_SCHEDULE_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "steps_offset", "timestep_spacing", "rescale_betas_zero_snr",
)  # fmt: skip
"""Only the base model's noise schedule is kept: sampler options (Karras sigmas, order, …) of a
previously used scheduler must not leak into the next one."""


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> Any:
    """A fresh scheduler of kind `name` over the base model's noise schedule (`base_config`)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    config = {k: v for k, v in dict(base_config).items() if k in NOISE_SCHEDULE_KEYS}
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False, clip_sample=False)
    raise ValueError(f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULER_NAMES)})")
