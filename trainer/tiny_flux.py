"""The built-in tiny FLUX.1-dev-shaped pipeline (`builtin:tiny-flux`): random weights, no download.

Every part FLUX.1 has, at toy width: a `FluxTransformer2DModel` with 2 double-stream and 2
single-stream blocks and the guidance embedding (as dev), a 4-channel VAE with FLUX.1's shift and
scale factors, a CLIP text encoder for the pooled vector and a T5 encoder for the token states,
and both tokenizers written locally (CLIP: the generated BPE of `trainer.tiny_model`; T5: a small
unigram vocabulary given as (piece, score) pairs, which `T5Tokenizer` in transformers 5 accepts
without sentencepiece). Shapes follow diffusers' own FLUX tests: sum(axes_dims_rope) =
attention_head_dim, joint_attention_dim = T5 d_model, pooled_projection_dim = CLIP hidden size,
in_channels = 4 × VAE latent channels (2×2 packing). The VAE halves the size twice (scale 4), so a
64-px image is 16×16 latents and 64 packed tokens: about 2 training steps per second on one core.
The scheduler is FLUX.1-dev's (dynamic, resolution-dependent shift).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.tiny_parts import WORDS, flux_vae, save_seeded

_SEED = 4321
_WIDTH = 32  # transformer inner width = CLIP hidden = T5 d_model
T5_MAX_LENGTH = 32
"""Tokens of T5 conditioning for the tiny model (FLUX.1-dev: 512, schnell: 256)."""


def build_tiny_flux(folder: Path) -> None:
    """Write the whole pipeline folder (weights, configs, tokenizers, model_index.json)."""
    from diffusers import FluxPipeline

    save_seeded(folder, _SEED, lambda: FluxPipeline(**_components()))


def _components() -> dict[str, object]:
    from diffusers import FluxTransformer2DModel

    from trainer.tiny_clip import clip_text_encoder, make_tokenizer

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_WIDTH,
        pooled_projection_dim=_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    clip_tokenizer = make_tokenizer()
    t5_tokenizer = make_t5_tokenizer()
    return {
        "transformer": transformer,
        "vae": flux_vae(),
        "text_encoder": clip_text_encoder(clip_tokenizer, 32, 37),  # tiny SD 1.x's CLIP
        "tokenizer": clip_tokenizer,
        "text_encoder_2": _t5_encoder(len(t5_tokenizer)),
        "tokenizer_2": t5_tokenizer,
        "scheduler": flux_dev_scheduler(),
    }


def flux_dev_scheduler() -> object:
    """FLUX.1-dev's scheduler config (shift 3, dynamic shifting between 256 and 4096 tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def make_t5_tokenizer() -> object:
    """A T5 unigram tokenizer: specials, whole common words, then single characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in WORDS]
    pieces += [(chr(code), -5.0) for code in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _t5_encoder(vocab_size: int) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=_WIDTH,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)
