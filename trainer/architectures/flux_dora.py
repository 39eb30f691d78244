"""DoRA on FLUX.1's fused BFL layers, in the kohya/LyCORIS convention ComfyUI and InvokeAI read.

A kohya DoRA file has one `dora_scale` per BFL module, shaped (1, in): the magnitude of each input
column of the *fused* weight (e.g. q, k and v stacked for `img_attn_qkv`). Separate DoRA layers
on diffusers' q, k and v would normalise each part alone, a different model that no file can
hold. So DoRA is trained on the fused layout: one `FusedDora` group per BFL module (down (r, in),
up (Σ out, r), dora_scale (1, in)), attached to its block as `dora_<bfl name>`, and one
`DoraSlice` in place of each diffusers layer, computing its rows of the fused output.

Maths (kohya, LyCORIS): W' = (W + up·down·α/r) · diag(dora_scale / ‖W + up·down·α/r‖_col), so
y = W'x + b = (W + up·down·α/r)(c ⊙ x) + b with c = dora_scale / ‖…‖_col: the input is scaled per
column and the weight is never materialised in the graph. The norm is computed without gradient
(the DoRA paper's §4.3 memory saving, as PEFT does): the forward is exact, the gradient treats the
norm as a constant. A multiplier m (generation strength) gives W + m·(W' − W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.adapters import DoraLayer, column_norm


class FusedDora(DoraLayer):
    """The trainable part of one fused BFL module; the frozen members are `DoraSlice.base`."""

    def __init__(self, members: list[nn.Linear], rank: int, alpha: float) -> None:
        super().__init__()
        in_features = members[0].in_features
        if any(m.in_features != in_features for m in members):
            raise ValueError("fused layers must share their input")
        self.rank, self.alpha = rank, float(alpha)
        self.widths = [m.out_features for m in members]
        self.lora_down = nn.Linear(in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, sum(self.widths), bias=False)
        nn.init.normal_(self.lora_down.weight, std=1.0 / rank)
        nn.init.zeros_(self.lora_up.weight)
        self._members = members  # a plain list: not registered (the slices own the bases)
        with torch.no_grad():
            self.dora_scale = nn.Parameter(column_norm(self._fused_base()))
        self.to(device=members[0].weight.device)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def _fused_base(self) -> torch.Tensor:
        return torch.cat([m.weight.float() for m in self._members], dim=0)

    @torch.no_grad()
    def merged_norm(self) -> torch.Tensor:
        """‖W + up·down·α/r‖ per input column, (1, in), without gradient."""
        delta = self.lora_up.weight.float() @ self.lora_down.weight.float()
        return column_norm(self._fused_base() + delta * self.scale)

    def input_scale(self) -> torch.Tensor:
        """c = dora_scale / ‖W + ΔW‖_col, shape (in,), differentiable in dora_scale."""
        return (self.dora_scale.float() / self.merged_norm()).reshape(-1)

    def rows(self, index: int) -> slice:
        start = sum(self.widths[:index])
        return slice(start, start + self.widths[index])


class DoraSlice(nn.Module):
    """Stands in for one diffusers layer: its rows of the fused DoRA output."""

    def __init__(self, base: nn.Linear, group: FusedDora, index: int) -> None:
        super().__init__()
        self.base = base
        self.index = index
        object.__setattr__(self, "group", group)  # not a submodule: the block owns the group

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        group: FusedDora = self.group  # type: ignore[assignment]
        if not group.enabled:
            return self.base(x)
        scaled = x * group.input_scale().to(x.dtype)
        weight = self.base.weight
        out = F.linear(scaled.to(weight.dtype), weight, self.base.bias)
        down = group.lora_down.weight
        up = group.lora_up.weight[group.rows(self.index)]
        lora = F.linear(F.linear(scaled.to(down.dtype), down), up) * group.scale
        out = out + lora.to(out.dtype)
        if group.multiplier != 1.0:
            plain = self.base(x)
            out = plain + group.multiplier * (out - plain)
        return out


def install(block: nn.Module, attribute: str, member_paths: list[str], group: FusedDora) -> None:
    """Attach `group` to `block` and put a slice in place of each member (paths under block)."""
    from trainer.adapters import _set_submodule

    setattr(block, attribute, group)
    for index, path in enumerate(member_paths):
        _set_submodule(block, path, DoraSlice(block.get_submodule(path), group, index))


def unwrap(module: nn.Module) -> nn.Linear:
    """The frozen layer behind a slice (or the layer itself)."""
    return module.base if isinstance(module, DoraSlice) else module  # type: ignore[return-value]
