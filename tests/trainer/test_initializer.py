"""An embedding's `auto` templates and initializer come from the data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.train_helpers import _one_thread, model_cache
from trainer import loop
from trainer.caches import encode_prompts
from trainer.config import TrainConfig
from trainer.initializer import (
    caption_words,
    captions_describe,
    choose_initializer,
    nearest_words,
    resolve_templates,
    whole_words,
)

__all__ = ["_one_thread", "model_cache"]


def test_templates_auto_uses_captions_only_when_they_describe():
    config = TrainConfig(method="embedding", trigger="tkxw", embedding={"templates": "auto"})
    described = ["a big tkxw on a red background", "tkxw at the top left", "a small tkxw"]
    assert resolve_templates(config, described).embedding.templates == "captions"
    assert resolve_templates(config, ["tkxw", "tkxw", "tkxw, a"]).embedding.templates == "object"
    fixed = config.model_copy(update={"embedding": config.embedding.model_copy(
        update={"templates": "style"})})  # fmt: skip
    assert resolve_templates(fixed, ["tkxw"]) is fixed
    assert captions_describe(["tkxw, red", "tkxw"], "tkxw") is False  # half is not most


@pytest.fixture(scope="module")
def toy(model_cache: Path):
    config = TrainConfig(method="embedding", base_model="builtin:toy", trigger="tkxw")
    return loop.load_model(config, model_cache, torch.device("cpu"), torch.float32, None)


def test_caption_words_are_single_tokens_without_the_trigger(toy):
    vocabulary = whole_words(toy.tokenizers[0])
    assert "ring" in vocabulary and "tkxw" not in vocabulary
    words = caption_words(["a big tkxw on the red background", "tkxw on a red ring"], "tkxw",
                          vocabulary)  # fmt: skip
    assert words[0] == "red" and "tkxw" not in words and "the" not in words


def test_the_nearest_word_is_the_one_the_loss_points_to(toy):
    """With a loss that is lowest where the encoder reads 'ring', 'ring' ranks first."""
    target = encode_prompts(toy, ["a big ring"]).hidden.detach()

    def loss_of(word: str) -> torch.Tensor:
        return (encode_prompts(toy, [f"a big {word}"]).hidden - target).pow(2).mean()

    assert nearest_words(toy, loss_of, whole_words(toy.tokenizers[0]))[0] == "ring"
    config = TrainConfig(
        method="embedding", base_model="builtin:toy", trigger="tkxw",
        embedding={"initializer_token": "auto"},
    )  # fmt: skip
    assert choose_initializer(toy, config, [], loss_of).embedding.initializer_token == "ring"
    named = config.model_copy(update={"embedding": config.embedding.model_copy(
        update={"initializer_token": "person"})})  # fmt: skip
    assert choose_initializer(toy, named, [], loss_of) is named
