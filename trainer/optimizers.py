"""The optimizer over the trainable weights: AdamW, 8-bit AdamW (bitsandbytes) or Prodigy.

Parameters are grouped by where they live: the UNet's adapter at `learning_rate`, the text
encoders' adapter (`train_text_encoder`) at `text_encoder_lr` (default: `learning_rate`), the
input embedding matrices that hold new token rows at `learning_rate` for an embedding and at
`pivotal_lr` beside a LoRA/DoRA, without weight decay (textual inversion's rows are not pulled
toward zero; the other rows are restored after each step). The lr schedule scales every group
alike.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.callbacks import TrainingFailed
from trainer.config import TrainConfig

TOKEN_GROUP = "tokens"
"""The name of the group of new token rows (`make_lr_scheduler` stops it for pivotal)."""


def param_groups(
    model: Any, config: TrainConfig, params: list[torch.nn.Parameter]
) -> list[dict[str, Any]]:
    """One group per kind of weight with its learning rate (empty groups left out)."""
    in_text = {id(p) for encoder in model.text_encoders for p in encoder.parameters()}
    tables = {id(encoder.get_input_embeddings().weight) for encoder in model.text_encoders}
    is_token = {id(p) for p in params if config.learns_token and id(p) in tables}
    tokens = [p for p in params if id(p) in is_token]
    unet = [p for p in params if id(p) not in in_text]
    text = [p for p in params if id(p) in in_text and id(p) not in is_token]
    text_lr = config.text_encoder_lr or config.learning_rate
    token_lr = config.pivotal_lr if config.pivotal else config.learning_rate
    groups = [
        {"params": unet, "lr": config.learning_rate},
        {"params": text, "lr": text_lr},
        {"params": tokens, "lr": token_lr, "weight_decay": 0.0, "name": TOKEN_GROUP},
    ]
    return [group for group in groups if group["params"]]


def make_optimizer(
    config: TrainConfig, params: list[torch.nn.Parameter], model: Any
) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names, over `params` grouped by `param_groups`."""
    if not params:
        raise TrainingFailed("the adapter has no trainable weights (check targets and rank)")
    groups = param_groups(model, config, params)
    if config.optimizer == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, weight_decay=config.weight_decay)
    if config.optimizer == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(groups, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay, **fast_adamw_options(params))


def fast_adamw_options(params: list[torch.nn.Parameter]) -> dict[str, bool]:
    """`fused=True` where torch has a fused AdamW kernel for these tensors (CUDA, and CPU in
    torch ≥ 2.4): one kernel over all parameters instead of a loop of small ops."""
    devices = {p.device.type for p in params}
    dtypes = {p.dtype for p in params}
    if len(devices) == 1 and dtypes <= {torch.float32, torch.float16, torch.bfloat16}:
        device = devices.pop()
        if device in ("cuda", "cpu"):
            return {"fused": True}
    return {}
