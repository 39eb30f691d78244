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
- Pivotal (LoRA/DoRA + the trigger's embedding): both files in the step's folder,
  `{name}-step{step:08d}/{name}-step{step:08d}.safetensors` (the LoRA/DoRA, primary, naming its
  embedding in the `atelier.embedding` metadata key) and `{name}-step{step:08d}/<token>.safetensors`
  (the embedding, written first: the primary's presence marks the checkpoint whole); the
  diffusers copy holds the LoRA and the embedding files together.
Metadata never names dataset files (they are members' file names).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from storage.base_models import fingerprint, public_name
from storage.fsutil import TEMP_MARK, atomic_path, durable_replace
from storage.model_files import EMBEDDING_KEY
from trainer.adapters import (
    ADAPTER_NAME,
    adapted_components,
    adapter_layers,
    learned_vectors,
)
from trainer.base_models import LoadedModel
from trainer.config import TrainConfig
from trainer.formats.kohya import kohya_hashes

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
    folder, written = out_dir, []
    if config.pivotal:
        folder = out_dir / stem
        written.append(_write_embedding(model, config, folder, step, title))
        metadata[EMBEDDING_KEY] = written[0].name
    primary = folder / f"{stem}.safetensors"
    _atomic_save(tensors, primary, metadata)
    written.append(primary)
    diffusers_dir = None
    if config.method == "lora":
        diffusers_dir = out_dir / "diffusers" / stem
        save_diffusers_lora(model, config, diffusers_dir)
        if config.pivotal:
            _write_diffusers_embedding(model, config, diffusers_dir)
    return ExportedFiles(primary, diffusers_dir, sum(path.stat().st_size for path in written))


def slug(text: str) -> str:
    """A file-name-safe version of a title or token."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._")
    return cleaned[:64] or "atelier"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Readers (the bot, a download) never see half a file, nor does anyone after a power cut."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


# ---------------------------------------------------------------- LoRA / DoRA, kohya layout


def kohya_tensors(model: LoadedModel, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The kohya state dict: float32 down/up (+ dora_scale) and a float `alpha` per module,
    named (and, for FLUX.1, fused) by the architecture."""
    return model.arch.kohya_tensors(model, adapter_layers(model, config), config.alpha)


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
        "ss_base_model_version": model.arch.base_version,
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
    arch = model.arch
    base_name = public_name(config.base_model)
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{arch.spec_name(model)}/{kind}",
        "modelspec.implementation": arch.spec_implementation,
        "modelspec.title": title,
        "modelspec.description": f"{config.method} trained with Atelier on {base_name}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "modelspec.resolution": resolution,
    }
    if arch.spec_prediction_type(model):  # kohya writes none for FLUX.1
        spec["modelspec.prediction_type"] = arch.spec_prediction_type(model)
    trigger = config.token if kind == "textual-inversion" else config.trigger
    if trigger:
        spec["modelspec.trigger_phrase"] = trigger
    # the base model by catalogue name and a hash of its weights, never a host path
    return spec | {"ss_sd_model_name": base_name, "ss_sd_model_hash": fingerprint(model.source)}


def save_diffusers_lora(model: LoadedModel, config: TrainConfig, folder: Path) -> None:
    """diffusers' own format, with `lora_alpha` kept through the adapter metadata."""
    from peft.utils import get_peft_model_state_dict

    kwargs: dict[str, object] = {}
    for component, module in adapted_components(model, config).items():
        kwargs[f"{component}_lora_layers"] = get_peft_model_state_dict(
            module, adapter_name=ADAPTER_NAME
        )
        kwargs[f"{component}_lora_adapter_metadata"] = module.peft_config[ADAPTER_NAME].to_dict()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", suffix=TEMP_MARK, dir=folder.parent))
    try:
        type(model.pipeline).save_lora_weights(tmp, safe_serialization=True, **kwargs)
        if folder.exists():  # an earlier attempt at this step (resumed after it)
            shutil.rmtree(folder)
        durable_replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- embeddings


def _export_embedding(
    model: LoadedModel, config: TrainConfig, out_dir: Path, stem: str, step: int, title: str
) -> ExportedFiles:
    primary = _write_embedding(model, config, out_dir / stem, step, title)
    diffusers_dir = out_dir / "diffusers" / stem
    _write_diffusers_embedding(model, config, diffusers_dir)
    return ExportedFiles(primary, diffusers_dir, primary.stat().st_size)


def _write_embedding(
    model: LoadedModel, config: TrainConfig, folder: Path, step: int, title: str
) -> Path:
    """`folder/<token>.safetensors` in the layout A1111, ComfyUI and InvokeAI read."""
    vectors = learned_vectors(model)
    if model.architecture == "sdxl":
        tensors = {"clip_l": vectors[0], "clip_g": vectors[1]}
    else:
        tensors = {"emb_params": vectors[0]}
    resolution = f"{config.side}x{config.side}"
    meta = _modelspec(model, config, title, "textual-inversion", resolution)
    meta |= {"ss_steps": str(step), "ss_base_model_version": model.arch.base_version}
    path = folder / f"{slug(config.token)}.safetensors"
    _atomic_save(tensors, path, meta)
    return path


def _write_diffusers_embedding(model: LoadedModel, config: TrainConfig, folder: Path) -> None:
    """diffusers' `{token: tensor}` files, one per text encoder (`load_textual_inversion`)."""
    vectors = learned_vectors(model)
    for file_name, tensor in zip(DIFFUSERS_EMBEDDING_FILES, vectors, strict=False):
        _atomic_save({config.token: tensor}, folder / file_name, {"format": "pt"})


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
    dora_scale}}`, resolved by the model's architecture."""
    return model.arch.kohya_to_peft(model, state_dict)
