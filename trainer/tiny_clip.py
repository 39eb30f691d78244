"""The tiny models' CLIP parts: a small byte-level BPE tokenizer (any text tokenizes; common
words are one token) and a CLIP text encoder of a given width. Shared by the tiny SD 1.x/SDXL
and FLUX.1 builders (`trainer.tiny_model`, `trainer.tiny_flux`), the toy base model, and the
tiny transformers' word list (`trainer.tiny_parts`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_MAX_LENGTH = 77
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_COMMON_WORDS = (
    "a", "an", "the", "of", "in", "on", "and", "with", "photo", "picture", "painting",
    "style", "person", "man", "woman", "cat", "dog", "art", "drawing", "portrait", "by",
)  # fmt: skip


def clip_text_encoder(
    tokenizer: Any, hidden: int, intermediate: int, *, with_projection: bool = False
) -> Any:
    """A 2-layer CLIP text encoder (random weights) of width `hidden` for `tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LENGTH,
        projection_dim=hidden,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP table mapping every byte to a printable unicode character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A small CLIP BPE: all bytes (so any text tokenizes) + merges making common words one token.

    Order follows CLIP's file: byte symbols, their `</w>` forms, merge results, then specials.
    """
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in _COMMON_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            rule = f"{parts[0]} {parts[1]}"
            if rule not in merges:
                merges.append(rule)
                if merged not in tokens:
                    tokens.append(merged)
            parts = [merged, *parts[2:]]
    tokens += [_BOS, _EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def make_tokenizer() -> object:
    """A CLIP tokenizer over the generated vocabulary (77 tokens, pad = end of text)."""
    from transformers import CLIPTokenizer

    vocab, merges = bpe_vocab_and_merges()
    pairs = [tuple(rule.split(" ")) for rule in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=_MAX_LENGTH)


def write_bpe_files(folder: Path) -> None:
    """transformers 5 saves only tokenizer.json; older readers want vocab.json + merges.txt."""
    vocab, merges = bpe_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
