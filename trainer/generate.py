"""Generating with an exported model file, as a member's app would: `atelier generate`.

Files are loaded the way other tools load them (diffusers' `load_lora_weights` for kohya LoRA,
`load_textual_inversion` for embeddings). Kohya DoRA files are the exception: diffusers drops
their `dora_scale`, so they are applied with our own DoRA layers (same maths as training; the
architecture decides how, `Architecture.apply_kohya_dora`). Images are drawn with the base
architecture's own sampler (`Architecture.sample`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from storage.model_files import EMBEDDING_KEY, safetensors_metadata
from trainer.architectures import for_pipeline, get_architecture, names
from trainer.base_models import BUILTINS, LoadedModel, detect_architecture, load_base_model
from trainer.export import read_safetensors
from trainer.schedulers import SCHEDULER_NAMES

ADAPTER = "atelier"
SAMPLING_DEFAULTS = {
    "flux1": {"guidance": 3.5, "scheduler": "euler", "steps": 20},
    "zimage": {"guidance": 0.0, "scheduler": "euler", "steps": 9},
}
"""What `atelier generate` uses when not told; FLUX.1-dev's model card: guidance 3.5, its own
flow-matching Euler sampler; Z-Image-Turbo's model card: 9 steps at guidance 0."""
_SD_DEFAULTS = {"guidance": 7.0, "scheduler": "dpm++", "steps": 20}


def file_kind(tensors: dict[str, torch.Tensor]) -> str:
    """`embedding`, `dora` or `lora`, from the keys."""
    if {"emb_params", "clip_l", "clip_g", "string_to_param"} & tensors.keys():
        return "embedding"
    return "dora" if any(k.endswith(".dora_scale") for k in tensors) else "lora"


def file_architecture(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The architecture a file was trained for, from metadata or key names (most specific
    first; SD 1.x when nothing else matches)."""
    for name in reversed(names()):
        if get_architecture(name).file_matches(tensors, metadata):
            return name
    return "sd1"


def load_for_generation(
    base: LoadedModel | str,
    model_file: Path,
    weight: float = 1.0,
    *,
    cache_dir: Path = Path("data/cache"),
) -> Any:
    """A pipeline with `model_file` applied at strength `weight` (LoRA/DoRA; embeddings: 1);
    a pivotal LoRA/DoRA brings the trigger's embedding named in its metadata (beside it)."""
    tensors, metadata = read_safetensors(Path(model_file))
    if isinstance(base, str):
        architecture = file_architecture(tensors, metadata)
        base = load_base_model(_base_path(base), architecture, cache_dir=cache_dir)
    kind = file_kind(tensors)
    pipe = base.pipeline
    if kind == "embedding":
        _load_embedding(pipe, base, Path(model_file), metadata)
    elif kind == "dora":
        base.arch.apply_kohya_dora(base, tensors, weight)
    else:
        converted = base.arch.diffusers_lora(base, tensors)
        source = converted if converted is not None else str(model_file)
        pipe.load_lora_weights(source, adapter_name=ADAPTER)
        pipe.set_adapters([ADAPTER], adapter_weights=[weight])
    if kind != "embedding" and metadata.get(EMBEDDING_KEY):
        companion = Path(model_file).parent / Path(metadata[EMBEDDING_KEY]).name
        _load_embedding(pipe, base, companion, safetensors_metadata(companion))
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
    """Apply a kohya DoRA file with our own DoRA layers (diffusers drops `dora_scale`)."""
    model.arch.apply_kohya_dora(model, tensors, weight)


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
    """One image with a CPU generator (same seed → same image on any device), with the
    architecture's own sampler; a None side is the pipeline's default, the base model's
    native size."""
    return for_pipeline(pipeline).sample(
        pipeline,
        prompt=prompt,
        seed=seed,
        steps=steps,
        guidance=guidance,
        scheduler=scheduler,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported .safetensors file")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--weight", type=float, default=1.0, help="LoRA/DoRA strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default: 20")
    parser.add_argument(
        "--guidance", type=float, default=None, help="default: 7 (SD), 3.5 (FLUX.1)"
    )
    parser.add_argument(
        "--scheduler", choices=SCHEDULER_NAMES, default=None, help="default: dpm++ (SD), euler"
    )
    parser.add_argument("--width", type=int, default=None, help="default: the base model's size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument(
        "--base",
        default="tiny",
        help="tiny, tiny-sdxl, tiny-flux, tiny-zimage or a local model path",
    )
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
    arch = for_pipeline(pipe)
    default_side = arch.default_side(pipe)
    defaults = SAMPLING_DEFAULTS.get(arch.name, _SD_DEFAULTS)
    image = render(
        pipe, args.prompt, seed=args.seed, steps=args.steps or defaults["steps"],
        guidance=args.guidance if args.guidance is not None else defaults["guidance"],
        scheduler=args.scheduler or defaults["scheduler"], negative_prompt=args.negative_prompt,
        width=args.width or default_side, height=args.height or default_side,
    )  # fmt: skip
    out = args.out or args.model.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(out)
    return 0
