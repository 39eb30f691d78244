"""What the operator's base-model catalogue decides for a member's job (not the member)."""

from __future__ import annotations

from typing import Any

from bot.errors import BadInput


def quantize_base_for(base_model: str, entry: Any, method: str) -> str:
    """The job's `quantize_base` on catalogue model `base_model`: the entry's `quantize` (the
    operator knows the GPU; a member cannot ask it for more memory than it has). A DoRA on a
    quantised model is refused: it needs the weights unquantised."""
    quantize = getattr(entry, "quantize", "none")
    if quantize != "none" and method != "lora":
        raise BadInput(
            f"`{base_model}` is quantised ({quantize}) to fit this server's GPU, and a DoRA "
            "needs the weights unquantised; train a LoRA on it (without `dora`)."
        )
    return quantize
