"""An embedding's starting word and caption templates, chosen from the data (`"auto"`).

Initializer: textual inversion starts the new vectors at a word's embedding (Gal et al. 2022
use a one-word class description, e.g. "sculpture"); a word the base model already draws close
to the images leaves less to learn. With `initializer_token: "auto"` the trainer picks it:

the whole-word vocabulary token nearest to the images to first order: the gradient g of the
denoising loss on the first (up to 16) training batches, fixed noise and timesteps, with respect
to a probe word's embedding at the trigger's place in the captions scores every word v by
g·(e_v − e_probe); the lowest wins. (Measured on the toy concept, a purple star in a yellow
ring: star, top, background, yellow… ranked first. Exact losses of the candidates differed by
less than their noise, so they are not used to re-rank.) Without a probe word in the
vocabulary, the most common single-token caption word is used.

Templates: `"auto"` uses the dataset's own captions (trigger → token) when they describe the
images beyond the trigger, else the object templates ("a photo of a {}", as textual inversion).

The caller supplies `loss_of(word)`: the training loss of a fixed micro-batch with the token
replaced by `word` (the loop builds it from its own batch and loss code), so nothing here knows
the architecture.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trainer.config import TrainConfig

log = logging.getLogger(__name__)

PROBES = ("person", "object", "thing", "art", "a")
TOP_VOCABULARY = 8
MIN_WORD = 3
_STOP = {"the", "and", "with", "from", "into", "onto", "for", "its", "his", "her", "their"}


def captions_describe(captions: Sequence[str], token: str) -> bool:
    """True when most captions say more than the trigger (then they make better templates)."""
    rest = [re.sub(re.escape(token), "", c).strip(" ,.") for c in captions if c]
    return sum(bool(r) for r in rest) * 2 > len(captions)


def resolve_templates(config: TrainConfig, captions: Sequence[str]) -> TrainConfig:
    """An embedding config with `templates: "auto"` made concrete."""
    if config.method != "embedding" or config.embedding.templates != "auto":
        return config
    chosen = "captions" if captions_describe(captions, config.token) else "object"
    return _with_embedding(config, templates=chosen)


def _with_embedding(config: TrainConfig, **values: Any) -> TrainConfig:
    embedding = config.embedding.model_copy(update=values)
    return config.model_copy(update={"embedding": embedding})


def whole_words(tokenizer: Any) -> dict[str, int]:
    """Vocabulary entries that are whole alphabetic words (CLIP BPE: ending in `</w>`)."""
    words = {}
    for token, index in tokenizer.get_vocab().items():
        word = token.removesuffix("</w>")
        if token.endswith("</w>") and word.isalpha() and len(word) >= MIN_WORD:
            words[word] = index
    return words


def caption_words(captions: Sequence[str], token: str, vocabulary: dict[str, int]) -> list[str]:
    """Single-token words of the captions (not the trigger, not stop words), most common first."""
    counts: dict[str, int] = {}
    for caption in captions:
        for word in re.findall(r"[a-zA-Z]+", caption.replace(token, " ").lower()):
            if word in vocabulary and word not in _STOP:
                counts[word] = counts.get(word, 0) + 1
    return sorted(counts, key=lambda w: (-counts[w], w))[:4]


def nearest_words(
    model: Any, loss_of: Callable[[str], torch.Tensor], vocabulary: dict[str, int]
) -> list[str]:
    """The `TOP_VOCABULARY` words whose embeddings lower the loss most, to first order."""
    encoder, tokenizer = model.text_encoders[0], model.tokenizers[0]
    probe = next((p for p in PROBES if p in vocabulary), None)
    if probe is None:
        return []
    probe_id = vocabulary[probe]
    table = encoder.get_input_embeddings()
    leaf = table.weight[probe_id].detach().clone().float().requires_grad_(True)

    def swap(_module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        mask = (inputs[0] == probe_id).unsqueeze(-1)
        return torch.where(mask, leaf.to(output.dtype), output)

    handle = table.register_forward_hook(swap)
    try:
        with torch.enable_grad():
            loss = loss_of(probe)
            (grad,) = torch.autograd.grad(loss, leaf)
    finally:
        handle.remove()
    del tokenizer
    ids = torch.tensor(list(vocabulary.values()), device=leaf.device)
    rows = table.weight.detach()[ids].float()
    scores = (rows - leaf.detach()) @ grad
    order = torch.argsort(scores)[:TOP_VOCABULARY].tolist()
    names = list(vocabulary)
    return [names[i] for i in order]


def choose_initializer(
    model: Any, config: TrainConfig, captions: Sequence[str], loss_of: Callable[[str], torch.Tensor]
) -> TrainConfig:
    """A config whose new token (an embedding, or pivotal's trigger) starts from `"auto"`,
    with the chosen word instead."""
    if not config.learns_token or config.embedding.initializer_token != "auto":
        return config
    vocabulary = whole_words(model.tokenizers[0])
    ranked = nearest_words(model, loss_of, vocabulary)
    fallback = caption_words(captions, config.token, vocabulary)
    chosen = (ranked or fallback or ["person"])[0]
    log.info("embedding initializer: %r (nearest: %s)", chosen, ", ".join(ranked[:5]))
    return _with_embedding(config, initializer_token=chosen)
