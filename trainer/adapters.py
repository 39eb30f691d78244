"""Adding the trainable part to a frozen base model: LoRA, DoRA or a textual-inversion token.

- LoRA uses PEFT (`LoraConfig`, gaussian init so B = 0 and training starts at the base model).
- DoRA uses our own `KohyaDora` layer in the LyCORIS/kohya convention: the magnitude
  `dora_scale` has one entry per *input* column (shape (1, in)), the direction norm is taken over
  the output dim. PEFT's DoRA normalises per *output* row (shape (out,)); the two are different
  models, and A1111 / InvokeAI / ComfyUI read `dora_scale` the LyCORIS way. Training in that
  convention makes the file users download exactly the adapter that was trained.
- Embeddings add `token`, `token_1` … `token_{n-1}` to every tokenizer and train the input
  embedding matrix; `restore_frozen_embedding_rows` puts every other row back after each step
  (a grad mask alone is not enough: AdamW's weight decay moves rows with zero grad).
- Pivotal tuning (`config.pivotal`) is a LoRA/DoRA and an embedding of the trigger at once.

Every adapter is described by diffusers' component names: the denoiser (`unet` or `transformer`),
`text_encoder`, `text_encoder_2`. Which layers are wrapped, and how DoRA is built, is the
architecture's choice (`trainer.architectures`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import TrainConfig

if TYPE_CHECKING:
    from trainer.architectures.base import AdapterLayer
    from trainer.base_models import LoadedModel

ADAPTER_NAME = "default"


class AdapterError(RuntimeError):
    """An adapter that cannot be added or restored, with one line saying why."""


# ---------------------------------------------------------------- which modules


def components(model: LoadedModel) -> dict[str, nn.Module]:
    """The denoiser (`unet` / `transformer`) and the text encoders, as diffusers names them."""
    named = {model.arch.denoiser_name: model.denoiser}
    for index, encoder in enumerate(model.text_encoders):
        named["text_encoder" if index == 0 else f"text_encoder_{index + 1}"] = encoder
    return named


def adapted_components(model: LoadedModel, config: TrainConfig) -> dict[str, nn.Module]:
    """The components that carry an adapter for this config."""
    named = components(model)
    denoiser = model.arch.denoiser_name
    if config.method == "embedding":
        return {k: v for k, v in named.items() if k != denoiser}
    if not config.train_text_encoder:
        return {denoiser: named[denoiser]}
    return named


# ---------------------------------------------------------------- DoRA (kohya convention)


class DoraLayer(nn.Module):
    """What every DoRA layer has: `lora_down`, `lora_up`, `dora_scale` (1, in), `alpha`, and two
    switches: `enabled` (False: the base layer alone) and `multiplier` (generation strength)."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True
        self.multiplier = 1.0  # generation strength: base + multiplier · (DoRA weight − base)


class KohyaDora(DoraLayer):
    """DoRA around a frozen Linear/Conv2d, magnitude per input column (LyCORIS `dora_scale`).

    W' = (W + up·down·alpha/r) · dora_scale / ‖W + up·down·alpha/r‖ (norm over the output dim).
    """

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        if isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_down.weight, std=1.0 / rank)
        nn.init.zeros_(self.lora_up.weight)
        with torch.no_grad():
            scale = column_norm(base.weight.float())
        self.dora_scale = nn.Parameter(scale)
        self.to(device=base.weight.device)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def merged_weight(self) -> torch.Tensor:
        """The effective weight (fp32 maths, base dtype out)."""
        base = self.base.weight.float()
        up = self.lora_up.weight.float().flatten(1)
        down = self.lora_down.weight.float().flatten(1)
        weight = base + (up @ down).reshape(base.shape) * self.scale
        weight = weight * (self.dora_scale.float() / column_norm(weight))
        if self.multiplier != 1.0:
            weight = base + self.multiplier * (weight - base)
        return weight.to(self.base.weight.dtype)

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        weight = self.merged_weight()
        if isinstance(self.base, nn.Conv2d):
            return self.base._conv_forward(x, weight, self.base.bias)
        return F.linear(x, weight, self.base.bias)


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ over the output dim, one value per input column: (1, in) or (1, in, 1, 1)."""
    flat = weight.transpose(0, 1).reshape(weight.shape[1], -1)
    norm = flat.norm(dim=1) + torch.finfo(torch.float32).eps
    return norm.reshape(1, weight.shape[1], *([1] * (weight.dim() - 2)))


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def iter_dora(module: nn.Module) -> Iterator[tuple[str, DoraLayer]]:
    """`(module path, layer)` for every DoRA layer (a wrapped layer's path, or a fused group's)."""
    for name, child in module.named_modules():
        if isinstance(child, DoraLayer):
            yield name, child


@contextlib.contextmanager
def adapter_disabled(model: LoadedModel) -> Iterator[None]:
    """The base model for a moment: peft LoRA layers and DoRA layers switched off.

    Used for the base column of validation grids and for preservation's base predictions."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    roots = (model.denoiser, *model.text_encoders)
    layers = [m for root in roots for m in root.modules() if isinstance(m, BaseTunerLayer)]
    dora = [layer for root in roots for _, layer in iter_dora(root)]
    for layer in layers:
        layer.enable_adapters(False)
    for layer in dora:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for layer in dora:
            layer.enabled = True


# ---------------------------------------------------------------- inject


def inject_adapter(model: LoadedModel, config: TrainConfig) -> list[nn.Parameter]:
    """Add the adapter `config.method` asks for; return exactly the parameters to train."""
    if config.method == "embedding":
        return _inject_embedding(model, config)
    params: list[nn.Parameter] = []
    for component, module in adapted_components(model, config).items():
        names = model.arch.target_modules(component, module, config)
        if not names:
            raise AdapterError(f"no target modules found in {component}")
        if config.method == "dora":
            params += model.arch.inject_dora(component, module, names, config)
        else:
            params += _inject_lora(module, names, config)
    if config.pivotal:
        params += _inject_embedding(model, config)
    return params


def _inject_lora(module: nn.Module, names: list[str], config: TrainConfig) -> list[nn.Parameter]:
    from peft import LoraConfig

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        init_lora_weights="gaussian",
        target_modules=names,
    )
    module.add_adapter(lora, adapter_name=ADAPTER_NAME)
    params = [p for n, p in module.named_parameters() if "lora_" in n]
    for param in params:
        param.data = param.data.float()  # fp32 adapter over an fp16/bf16 base
        param.requires_grad_(True)
    return params


def inject_kohya_dora(
    module: nn.Module, names: list[str], config: TrainConfig
) -> list[nn.Parameter]:
    """One `KohyaDora` per named layer (SD 1.x, SDXL)."""
    params: list[nn.Parameter] = []
    for name in names:
        layer = KohyaDora(module.get_submodule(name), config.rank, config.alpha)
        _set_submodule(module, name, layer)
        for param in (layer.lora_down.weight, layer.lora_up.weight, layer.dora_scale):
            param.requires_grad_(True)
            params.append(param)
    return params


# ---------------------------------------------------------------- embeddings


@dataclass
class EmbeddingRows:
    """Where the new tokens live in one text encoder, and the frozen matrix to restore."""

    token_ids: list[int]
    original: torch.Tensor


def placeholder_tokens(config: TrainConfig) -> list[str]:
    """`token`, `token_1` … `token_{n-1}` (diffusers' multi-vector naming)."""
    token = config.token
    return [token] + [f"{token}_{i}" for i in range(1, config.embedding.num_vectors)]


def _inject_embedding(model: LoadedModel, config: TrainConfig) -> list[nn.Parameter]:
    tokens = placeholder_tokens(config)
    rows: list[EmbeddingRows] = []
    params: list[nn.Parameter] = []
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
        init_ids = tokenizer.encode(config.embedding.initializer_token, add_special_tokens=False)
        if not init_ids:
            raise AdapterError(f"initializer {config.embedding.initializer_token!r} has no tokens")
        if tokenizer.add_tokens(tokens) != len(tokens):
            raise AdapterError(f"token {config.token!r} is already in the vocabulary; pick another")
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = encoder.get_input_embeddings().weight
        token_ids = tokenizer.convert_tokens_to_ids(tokens)
        with torch.no_grad():
            weight[token_ids] = weight[init_ids].mean(dim=0, keepdim=True)
        weight.requires_grad_(True)
        rows.append(EmbeddingRows(token_ids, weight.detach().clone()))
        params.append(weight)
    model.extra["embedding_rows"] = rows
    return params


def embedding_rows(model: LoadedModel) -> list[EmbeddingRows]:
    rows = model.extra.get("embedding_rows")
    if rows is None:
        raise AdapterError("no embedding was injected into this model")
    return rows


@torch.no_grad()
def restore_frozen_embedding_rows(
    model: LoadedModel, original_rows: list[EmbeddingRows] | None = None
) -> None:
    """Call after each optimizer step: every row except the new tokens' goes back to the base."""
    rows = original_rows or embedding_rows(model)
    for encoder, info in zip(model.text_encoders, rows, strict=True):
        weight = encoder.get_input_embeddings().weight
        keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        keep[info.token_ids] = False
        weight[keep] = info.original.to(weight.device, weight.dtype)[keep]


def learned_vectors(model: LoadedModel) -> list[torch.Tensor]:
    """The new tokens' vectors, one [n, dim] float32 tensor per text encoder."""
    out = []
    for encoder, info in zip(model.text_encoders, embedding_rows(model), strict=True):
        weight = encoder.get_input_embeddings().weight
        out.append(weight[info.token_ids].detach().float().cpu().clone())
    return out


# ---------------------------------------------------------------- state (resume)


ENCODERS = ("text_encoder", "text_encoder_2")
TOKEN_KEY = "embedding"
"""Resume-state key of new token vectors: `<text encoder>.embedding`."""


def adapter_state(model: LoadedModel, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The trainable state, keyed `<component>.<key>`, for resume files (not for users); new
    token vectors as `<text encoder>.embedding`."""
    state: dict[str, torch.Tensor] = {}
    if config.learns_token:
        vectors = learned_vectors(model)
        state |= {f"{name}.{TOKEN_KEY}": v for name, v in zip(ENCODERS, vectors, strict=False)}
    if config.method == "embedding":
        return state
    for component, module in adapted_components(model, config).items():
        for key, value in _module_state(module, config).items():
            state[f"{component}.{key}"] = value.detach().cpu().clone()
    return state


def _module_state(module: nn.Module, config: TrainConfig) -> dict[str, torch.Tensor]:
    if config.method == "dora":
        state = {}
        for name, layer in iter_dora(module):
            state[f"{name}.lora_down.weight"] = layer.lora_down.weight
            state[f"{name}.lora_up.weight"] = layer.lora_up.weight
            state[f"{name}.dora_scale"] = layer.dora_scale
        return state
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)


@torch.no_grad()
def load_adapter_state(
    model: LoadedModel, config: TrainConfig, state: dict[str, torch.Tensor]
) -> None:
    """Put a saved `adapter_state` back into a model that already has the adapter injected."""
    if config.learns_token:
        encoders = dict(zip(ENCODERS, model.text_encoders, strict=False))
        for (name, encoder), info in zip(encoders.items(), embedding_rows(model), strict=True):
            key = f"{name}.{TOKEN_KEY}"
            if key not in state:
                raise AdapterError(f"resume state has no vectors for the token in {name}")
            weight = encoder.get_input_embeddings().weight
            weight[info.token_ids] = state[key].to(weight.device, weight.dtype)
    if config.method == "embedding":
        return
    for component, module in adapted_components(model, config).items():
        prefix = f"{component}."
        sub = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and k != f"{component}.{TOKEN_KEY}"
        }
        if not sub:
            raise AdapterError(f"resume state has no weights for {component}")
        _load_module_state(module, config, sub)


def _load_module_state(
    module: nn.Module, config: TrainConfig, sub: dict[str, torch.Tensor]
) -> None:
    if config.method == "dora":
        own = dict(module.named_parameters())
        for key, value in sub.items():
            if key not in own:
                raise AdapterError(f"resume state key {key} does not match the model")
            own[key].copy_(value.to(own[key].device, own[key].dtype))
        return
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(module, sub, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise AdapterError(f"resume state has unexpected keys, e.g. {unexpected[0]}")


@torch.no_grad()
def apply_dora_layers(
    model: LoadedModel, states: dict[str, dict[str, torch.Tensor]], weight: float
) -> None:
    """Wrap each layer named in `{component: {<path>.lora_A.weight / lora_B.weight / alpha /
    dora_scale}}` in a `KohyaDora` holding those weights, at strength `weight`."""
    roots = components(model)
    for component, state in states.items():
        root = roots[component]
        for path in sorted({k.rsplit(".", 2)[0] for k in state if k.endswith("lora_A.weight")}):
            down = state[f"{path}.lora_A.weight"]
            rank = down.shape[0]
            alpha = float(state.get(f"{path}.alpha", torch.tensor(float(rank))))
            layer = KohyaDora(root.get_submodule(path), rank, alpha)
            layer.lora_down.weight.copy_(down)
            layer.lora_up.weight.copy_(state[f"{path}.lora_B.weight"])
            layer.dora_scale.copy_(state[f"{path}.dora_scale"])
            layer.multiplier = weight
            layer.requires_grad_(False)
            _set_submodule(root, path, layer)


def adapter_layers(model: LoadedModel, config: TrainConfig) -> list[AdapterLayer]:
    """`(component, module path, {down, up[, dora_scale]})` for every adapted module."""
    from peft.utils import get_peft_model_state_dict

    layers: list[AdapterLayer] = []
    for component, module in adapted_components(model, config).items():
        if config.method == "dora":
            for path, layer in iter_dora(module):
                parts = {
                    "lora_down.weight": layer.lora_down.weight,
                    "lora_up.weight": layer.lora_up.weight,
                    "dora_scale": layer.dora_scale,
                }
                layers.append((component, path, parts))
            continue
        state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
        for key in sorted(state):
            if key.endswith(".lora_A.weight"):
                path = key.removesuffix(".lora_A.weight")
                parts = {
                    "lora_down.weight": state[key],
                    "lora_up.weight": state[f"{path}.lora_B.weight"],
                }
                layers.append((component, path, parts))
    return layers
