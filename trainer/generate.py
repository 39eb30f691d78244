"""Generating with an exported model file, as a member's app would: `atelier generate`.

Files are loaded the way other tools load them (diffusers' `load_lora_weights` for kohya LoRA,
`load_textual_inversion` for embeddings). Kohya DoRA files are the exception: diffusers drops
their `dora_scale`, so they are applied with our own `KohyaDora` layers (same maths as training).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trainer.adapters import KohyaDora, _set_submodule, components
from trainer.base_models import BUILTINS, LoadedModel, detect_architecture, load_base_model
from trainer.export import kohya_to_peft, read_safetensors
from trainer.schedulers import SCHEDULER_NAMES, make_scheduler

ADAPTER = "atelier"
_BASE_SCHEDULER = "_atelier_base_scheduler_config"


def file_kind(tensors: dict[str, torch.Tensor]) -> str:
    """`embedding`, `dora` or `lora`, from the keys."""
    if {"emb_params", "clip_l", "clip_g", "string_to_param"} & tensors.keys():
        return "embedding"
    return "dora" if any(k.endswith(".dora_scale") for k in tensors) else "lora"


def file_architecture(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sd1 or sdxl, from metadata or SDXL-only key names."""
    if metadata.get("ss_base_model_version", "").startswith("sdxl"):
        return "sdxl"
    sdxl_marks = ("lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks", "clip_g")
    return "sdxl" if any(k.startswith(sdxl_marks) for k in tensors) else "sd1"


def load_for_generation(
    base: LoadedModel | str,
    model_file: Path,
    weight: float = 1.0,
    *,
    cache_dir: Path = Path("data/cache"),
) -> Any:
    """A pipeline with `model_file` applied at strength `weight` (LoRA/DoRA; embeddings: 1)."""
    tensors, metadata = read_safetensors(Path(model_file))
    if isinstance(base, str):
        architecture = file_architecture(tensors, metadata)
        base = load_base_model(_base_path(base), architecture, cache_dir=cache_dir)
    kind = file_kind(tensors)
    pipe = base.pipeline
    if kind == "embedding":
        _load_embedding(pipe, base, Path(model_file), metadata)
    elif kind == "dora":
        apply_kohya_dora(base, tensors, weight)
    else:
        pipe.load_lora_weights(str(model_file), adapter_name=ADAPTER)
        pipe.set_adapters([ADAPTER], adapter_weights=[weight])
    return pipe


def _base_path(name: str) -> str:
    return f"builtin:{name}" if f"builtin:{name}" in BUILTINS else name


def _load_embedding(pipe: Any, base: LoadedModel, path: Path, metadata: dict[str, str]) -> None:
    """Load under the trigger word (metadata) or, like A1111, the file name."""
    token = metadata.get("modelspec.trigger_phrase") or path.stem
    tensors, _ = read_safetensors(path)
    if base.is_sdxl:
        pipe.load_textual_inversion(
            tensors["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
        )
        pipe.load_textual_inversion(
            tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer_2,
        )  # fmt: skip
    else:
        pipe.load_textual_inversion(str(path), token=token)


@torch.no_grad()
def apply_kohya_dora(model: LoadedModel, tensors: dict[str, torch.Tensor], weight: float) -> None:
    """Wrap each module named in a kohya DoRA file in a `KohyaDora` layer holding its weights."""
    roots = components(model)
    for component, state in kohya_to_peft(tensors, model).items():
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


@torch.no_grad()
def render(
    pipeline: Any,
    prompt: str,
    *,
    seed: int,
    steps: int = 20,
    guidance: float = 7.0,
    scheduler: str = "dpm++",
    negative_prompt: str = "",
    width: int | None = 512,
    height: int | None = 512,
) -> Image.Image:
    """One image with a CPU generator (same seed → same image on any device); a None side is
    the pipeline's default, the base model's native size."""
    base_config = getattr(pipeline, _BASE_SCHEDULER, None) or dict(pipeline.scheduler.config)
    setattr(pipeline, _BASE_SCHEDULER, base_config)
    pipeline.scheduler = make_scheduler(scheduler, base_config)
    result = pipeline(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return result.images[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported .safetensors file")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--weight", type=float, default=1.0, help="LoRA/DoRA strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    parser.add_argument("--width", type=int, default=None, help="default: the base model's size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--base", default="tiny", help="tiny, tiny-sdxl or a local model path")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, default=None, help="default: <model>.png")
    return parser


def generate_cli(argv: list[str] | None = None) -> int:
    """`atelier generate --model FILE --prompt P [...]`; returns the exit code."""
    args = _parser().parse_args(argv)
    if not args.model.is_file():
        print(f"error: model file {args.model} not found")
        return 2
    base = _base_path(args.base)
    if base not in BUILTINS and Path(base).exists():
        architecture = detect_architecture(Path(base))
        loaded = load_base_model(base, architecture, cache_dir=args.cache_dir)
        pipe = load_for_generation(loaded, args.model, args.weight)
    else:
        pipe = load_for_generation(base, args.model, args.weight, cache_dir=args.cache_dir)
    pipe.set_progress_bar_config(disable=True)
    default_side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    image = render(
        pipe, args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
        scheduler=args.scheduler, negative_prompt=args.negative_prompt,
        width=args.width or default_side, height=args.height or default_side,
    )  # fmt: skip
    out = args.out or args.model.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(out)
    return 0
