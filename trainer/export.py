"""Writing a checkpoint as the files members download, and reading them back.

Per checkpoint, in the (shared) `out_dir`:
- LoRA / DoRA: `{name}-step{step:08d}.safetensors` in kohya layout (what InvokeAI, ComfyUI, A1111
  load), alpha written as a float tensor equal to `config.alpha` (diffusers' converter writes
  alpha = rank, wrong when alpha != rank). LoRA also gets a diffusers copy in
  `diffusers/{name}-step{step:08d}/` with `lora_alpha` kept via adapter metadata. DoRA gets no
  diffusers copy: diffusers' DoRA is the PEFT (per-output-row) convention, a different model.
- Embedding: `{name}-step{step:08d}/<token>.safetensors` (`emb_params`, or `clip_l` + `clip_g`
  for SDXL; A1111 takes the prompt word from the file name, hence a folder per step), plus
  diffusers' `{token: tensor}` files in `diffusers/{name}-step{step:08d}/`.
Metadata never names dataset files (they are members' file names).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.adapters import (
    ADAPTER_NAME,
    adapted_components,
    iter_dora,
    learned_vectors,
    placeholder_tokens,
)
from trainer.base_models import LoadedModel
from trainer.config import TrainConfig
from trainer.formats.kohya import kohya_hashes, kohya_module_name

BASE_VERSION = {"sd1": "sd_v1", "sdxl": "sdxl_base_v1-0"}
SPEC_ARCH = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}
DIFFUSERS_EMBEDDING_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")


@dataclass(frozen=True)
class ExportedFiles:
    """What one checkpoint wrote: the downloadable file, the diffusers copy, the file's size."""

    primary: Path
    diffusers: Path | None
    size_bytes: int


def export_checkpoint(
    model: LoadedModel, config: TrainConfig, out_dir: Path, step: int, title: str
) -> ExportedFiles:
    """Write this step's model files (see the module docstring for the layout)."""
    out_dir = Path(out_dir)
    stem = f"{slug(title)}-step{step:08d}"
    if config.method == "embedding":
        return _export_embedding(model, config, out_dir, stem, step, title)
    tensors = kohya_tensors(model, config)
    metadata = kohya_metadata(model, config, step, title, tensors)
    primary = out_dir / f"{stem}.safetensors"
    _atomic_save(tensors, primary, metadata)
    diffusers_dir = None
    if config.method == "lora":
        diffusers_dir = out_dir / "diffusers" / stem
        save_diffusers_lora(model, config, diffusers_dir)
    return ExportedFiles(primary, diffusers_dir, primary.stat().st_size)


def slug(text: str) -> str:
    """A file-name-safe version of a title or token."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._")
    return cleaned[:64] or "atelier"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Readers (the bot, a download) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


# ---------------------------------------------------------------- LoRA / DoRA, kohya layout


def _unet_layout(model: LoadedModel) -> tuple[int, tuple[bool, ...]]:
    config = model.unet.config
    has_attention = tuple("CrossAttn" in name for name in config.up_block_types)
    return int(config.layers_per_block), has_attention


def adapter_layers(
    model: LoadedModel, config: TrainConfig
) -> list[tuple[str, str, dict[str, torch.Tensor]]]:
    """`(component, module path, {down, up[, dora_scale]})` for every adapted module."""
    from peft.utils import get_peft_model_state_dict

    layers = []
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


def kohya_tensors(model: LoadedModel, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The kohya state dict: float32 down/up (+ dora_scale) and a float `alpha` per module."""
    layers_per_block, has_attention = _unet_layout(model)
    out: dict[str, torch.Tensor] = {}
    for component, path, parts in adapter_layers(model, config):
        name = kohya_module_name(
            model.architecture, component, path, layers_per_block, has_attention
        )
        for suffix, tensor in parts.items():
            out[f"{name}.{suffix}"] = tensor.detach().float().cpu().clone()
        out[f"{name}.alpha"] = torch.tensor(float(config.alpha), dtype=torch.float32)
    return out


def _network_args(config: TrainConfig) -> dict[str, str]:
    args: dict[str, str] = {}
    if config.targets == "attention_conv":
        args |= {"conv_dim": str(config.rank), "conv_alpha": str(config.alpha)}
    if config.method == "dora":
        args |= {"algo": "locon" if args else "lora", "dora_wd": "True"}
    return args


def kohya_metadata(
    model: LoadedModel, config: TrainConfig, step: int, title: str, tensors: dict[str, torch.Tensor]
) -> dict[str, str]:
    """`ss_*` training metadata and `modelspec.*` (SAI model spec 1.0.1), all strings."""
    resolution = f"{config.side}x{config.side}"
    meta = {
        "ss_network_module": "lycoris.kohya" if config.method == "dora" else "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha),
        "ss_network_args": json.dumps(_network_args(config)),
        "ss_base_model_version": BASE_VERSION[model.architecture],
        "ss_v2": "False",
        "ss_steps": str(step),
        "ss_max_train_steps": str(config.steps),
        "ss_learning_rate": str(config.learning_rate),
        "ss_resolution": f"({config.side}, {config.side})",
        "ss_seed": str(config.seed),
        "ss_training_comment": "trained with Atelier",
        "ss_output_name": slug(title),
    }
    meta |= _modelspec(model, config, title, "lora", resolution)
    model_hash, legacy_hash = kohya_hashes(tensors, meta)
    return meta | {"sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash}


def _modelspec(
    model: LoadedModel, config: TrainConfig, title: str, kind: str, resolution: str
) -> dict[str, str]:
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{SPEC_ARCH[model.architecture]}/{kind}",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
        if model.architecture == "sdxl" else "diffusers",
        "modelspec.title": title,
        "modelspec.description": f"{config.method} trained with Atelier on {config.base_model}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "modelspec.resolution": resolution,
        "modelspec.prediction_type": model.prediction_type,
    }  # fmt: skip
    trigger = config.token if kind == "textual-inversion" else config.trigger
    if trigger:
        spec["modelspec.trigger_phrase"] = trigger
    return spec


def save_diffusers_lora(model: LoadedModel, config: TrainConfig, folder: Path) -> None:
    """diffusers' own format, with `lora_alpha` kept through the adapter metadata."""
    from peft.utils import get_peft_model_state_dict

    kwargs: dict[str, object] = {}
    for component, module in adapted_components(model, config).items():
        kwargs[f"{component}_lora_layers"] = get_peft_model_state_dict(
            module, adapter_name=ADAPTER_NAME
        )
        kwargs[f"{component}_lora_adapter_metadata"] = module.peft_config[ADAPTER_NAME].to_dict()
    type(model.pipeline).save_lora_weights(folder, safe_serialization=True, **kwargs)


# ---------------------------------------------------------------- embeddings


def _export_embedding(
    model: LoadedModel, config: TrainConfig, out_dir: Path, stem: str, step: int, title: str
) -> ExportedFiles:
    vectors = learned_vectors(model)
    if model.architecture == "sdxl":
        tensors = {"clip_l": vectors[0], "clip_g": vectors[1]}
    else:
        tensors = {"emb_params": vectors[0]}
    resolution = f"{config.side}x{config.side}"
    meta = _modelspec(model, config, title, "textual-inversion", resolution)
    meta |= {"ss_steps": str(step), "ss_base_model_version": BASE_VERSION[model.architecture]}
    primary = out_dir / stem / f"{slug(config.token)}.safetensors"
    _atomic_save(tensors, primary, meta)
    diffusers_dir = out_dir / "diffusers" / stem
    for file_name, tensor in zip(DIFFUSERS_EMBEDDING_FILES, vectors, strict=False):
        _atomic_save({config.token: tensor}, diffusers_dir / file_name, {"format": "pt"})
    return ExportedFiles(primary, diffusers_dir, primary.stat().st_size)


# ---------------------------------------------------------------- reading kohya files back


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        return tensors, dict(handle.metadata() or {})


def kohya_to_peft(
    state_dict: dict[str, torch.Tensor], model: LoadedModel
) -> dict[str, dict[str, torch.Tensor]]:
    """kohya keys → `{component: {<diffusers path>.lora_A.weight / lora_B.weight / alpha /
    dora_scale}}`, names resolved against `model`'s modules (kohya names are not reversible
    by string rules alone: module names contain `_`)."""
    names = _kohya_name_index(model)
    out: dict[str, dict[str, torch.Tensor]] = {}
    renames = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
    for key, tensor in state_dict.items():
        module_name, _, suffix = key.partition(".")
        if module_name not in names:
            raise ValueError(f"kohya key {key} matches no module of the {model.architecture} base")
        component, path = names[module_name]
        out.setdefault(component, {})[f"{path}.{renames.get(suffix, suffix)}"] = tensor
    return out


def _kohya_name_index(model: LoadedModel) -> dict[str, tuple[str, str]]:
    from trainer.adapters import components

    layers_per_block, has_attention = _unet_layout(model)
    index: dict[str, tuple[str, str]] = {}
    for component, module in components(model).items():
        for path, child in module.named_modules():
            if isinstance(child, torch.nn.Linear | torch.nn.Conv2d) and path:
                path = re.sub(r"\.base(_layer)?$", "", path)
                try:
                    name = kohya_module_name(
                        model.architecture, component, path, layers_per_block, has_attention
                    )
                except (ValueError, IndexError):
                    continue
                index.setdefault(name, (component, path))
    return index


def embedding_tokens(config: TrainConfig) -> list[str]:
    """The prompt words an embedding file stands for (first is the trigger)."""
    return placeholder_tokens(config)
