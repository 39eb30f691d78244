"""The built-in tiny Z-Image pipeline (`builtin:tiny-zimage`): random weights, no download.

Every part Z-Image has, at toy width: a `ZImageTransformer2DModel` (single-stream, 2 main layers
and 1 noise- and 1 context-refiner layer, 2×2 patches) over a 4-channel VAE with FLUX.1's shift
and scale (Z-Image reuses FLUX.1's VAE), a Qwen3 text encoder whose second-to-last hidden states
are the caption features (`ZImagePipeline._encode_prompt`), and a byte-level BPE tokenizer in
Qwen2's format with the chat template the pipeline applies, written locally. Shapes follow
diffusers' own Z-Image tests: head dim = dim / n_heads = sum(axes_dims); cap_feat_dim = the text
encoder's hidden size. The VAE halves the size twice (scale 4), so a 64-px image is 16×16
latents and 64 image tokens. The scheduler is Z-Image-Turbo's (FlowMatchEuler, fixed shift 3).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.tiny_parts import WORDS, flux_vae, save_seeded

_SEED = 2468
_DIM = 32  # transformer width
_TEXT_WIDTH = 32  # Qwen3 hidden size = cap_feat_dim
MAX_SEQUENCE_LENGTH = 64
"""Caption tokens (chat template included) for the tiny model; Z-Image's pipeline default is 512."""
_WORDS = (*WORDS, "user", "assistant")
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen3's chat format for one user turn and the generation prompt (what
`ZImagePipeline._encode_prompt` renders with `add_generation_prompt=True`)."""


def build_tiny_zimage(folder: Path) -> None:
    """Write the whole pipeline folder (weights, configs, tokenizer, model_index.json)."""
    from diffusers import ZImagePipeline

    save_seeded(folder, _SEED, lambda: ZImagePipeline(**_components()))


def _components() -> dict[str, object]:
    from diffusers import ZImageTransformer2DModel

    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=_DIM,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=_TEXT_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[256, 64, 64],
    )
    tokenizer = make_qwen_tokenizer()
    return {
        "transformer": transformer,
        "vae": flux_vae(),  # Z-Image uses FLUX.1's VAE
        "text_encoder": _qwen3_encoder(tokenizer),
        "tokenizer": tokenizer,
        "scheduler": zimage_scheduler(),
    }


def zimage_scheduler() -> object:
    """Z-Image-Turbo's scheduler config: FlowMatchEuler, 1000 steps, fixed shift 3.0."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )


def _byte_symbols() -> list[str]:
    from trainer.tiny_clip import _bytes_to_unicode

    return list(_bytes_to_unicode().values())


def qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE in GPT-2/Qwen2 form: every byte symbol, then merges that make each common
    word (with and without its leading space, `Ġ`) a single token."""
    tokens = _byte_symbols()
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = list(word)
        while len(parts) > 1:
            _merge(tokens, merges, parts[0], parts[1])
            parts = [parts[0] + parts[1], *parts[2:]]
        _merge(tokens, merges, "Ġ", word)
    return {token: index for index, token in enumerate(tokens)}, merges


def _merge(tokens: list[str], merges: list[tuple[str, str]], left: str, right: str) -> None:
    if (left, right) not in merges:
        merges.append((left, right))
    if left + right not in tokens:
        tokens.append(left + right)


def make_qwen_tokenizer() -> object:
    """A Qwen2-format tokenizer over the generated vocabulary, with Qwen3's chat specials."""
    from transformers import Qwen2Tokenizer

    vocab, merges = qwen_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    tokenizer.add_special_tokens({"pad_token": SPECIALS[0], "eos_token": SPECIALS[2]})
    tokenizer.model_max_length = MAX_SEQUENCE_LENGTH
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _qwen3_encoder(tokenizer: object) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=_TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=MAX_SEQUENCE_LENGTH * 4,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
    )
    return Qwen3Model(config)
