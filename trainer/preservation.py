"""Differential output preservation: the adapter learns its trigger and leaves the rest alone.

For a share of every batch, the caption with the trigger replaced by a class word (or removed) is
trained as well, on the *same* noisy latents and timesteps as the training sample: the target is
the base model's own prediction for that caption (the adapter switched off for one no-grad
forward, no second copy of the model), so whatever the adapter changes on prompts without the
trigger is pulled back. This is ai-toolkit's `diff_output_preservation` (there on the whole
batch); the adapted pass here runs in the same forward as the training samples (one batch of
n + k), and only `share` of the batch is preserved.

The base model's predictions are kept (`pool` per training image, on the CPU) and reused: the
first `pool` times an image is preserved, its noisy latent, timestep and the base prediction are
stored; later steps draw from that store instead of running the base model again, as DreamBooth
renders its prior images once. What remains per step is the k extra adapted samples, so the step
costs about (n + k) / n of one without preservation (`bench/learn.py --cost-steps` measures it).
With `prompts` (ordinary prompts without the trigger, what the team makes besides this
concept: kohya's regularisation captions, DreamBooth's class prompts made specific), the
preserved samples come from those prompts instead of the training captions, each on the base
model's own render of it (rendered once per bucket size before the adapter exists, noised like a
training image): the adapter is held to the base model on the kind of prompt the team actually
writes, not only on the training captions with the trigger taken out. On the toy model this
roughly halves the change of ordinary prompts at the same concept score (docs/toy-model/README.md).

A share of the preserved samples (`unconditional`, 0.1 by default) is held on the empty prompt:
its prediction is the one classifier-free guidance subtracts from every image, so an adapter that
moves it moves every prompt, the ones without the trigger included. With `prompts` the empty prompt
joins them (enough copies for its share, each on its own base render); without, every
1/`unconditional`-th preserved training image is preserved on the empty prompt instead of its
caption. On the toy model's benchmark it brought the character preset's change of ordinary
prompts under the goal (4.8 of 255 against 5.4 on 48 images; docs/toy-model/README.md, sixth
pass). FLUX.1-dev and Z-Image-Turbo sample without a negative prompt, so there the empty prompt
is one more trigger-free prompt held to the base.

The store lives in memory, at most `max_store_bytes` (1 GiB; past it the base model predicts as
without a store); a resumed job fills it again (the same images, new draws).

Nothing here knows the architecture: the caller hands over its batch (a dataclass whose tensor
fields are batched along dim 0, with the text conditioning in a field named `text`), a `predict`
function (batch, noisy, timesteps) → prediction, and its per-sample loss function. The adapter
is switched off through `trainer.adapters.adapter_disabled`, which covers peft LoRA and DoRA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from trainer.adapters import adapter_disabled
from trainer.config import TrainConfig

Predict = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def trigger_words(config: TrainConfig, concepts: Sequence[str] = ()) -> list[str]:
    """What preservation leaves out of a caption: the job's trigger and the dataset's concepts,
    longest first (so a trigger containing another is removed whole)."""
    words = {w.strip() for w in (config.trigger, *concepts) if w and w.strip()}
    return sorted(words, key=lambda word: (-len(word), word))


def preserved_caption(caption: str, triggers: Sequence[str], class_word: str = "") -> str:
    """`caption` with every trigger replaced by `class_word`, or removed with its separators
    tidied ("ohwx, a man" → "a man"; "a photo of ohwx outdoors" → "a photo of outdoors")."""
    out = caption
    for trigger in triggers:
        out = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", class_word, out)
    if not class_word:
        out = re.sub(r"\s*,\s*(,\s*)+", ", ", out)  # empty tags left by a removed trigger
        out = re.sub(r"\s{2,}", " ", out)
        out = re.sub(r"\s+([,.])", r"\1", out)
        out = out.strip().strip(",").strip()
    return out


@dataclass
class Preserver:
    """How a job preserves: which words go, what replaces them, how much of a batch, how hard.

    `texts` holds the preserved captions' encoder outputs per training example when the job
    caches text (set by `for_job`); otherwise they are encoded each step. `pool` is how many
    (noisy latent, timestep, base prediction) draws are kept per training example (0: the base
    model predicts every step); `draws` holds them, `current` the micro-batch's preserved
    items (set by `batches`): training-example indices, or indices into `prompts` when the job
    preserves on its own prompts; without `prompts`, an item of `examples` or more is training
    example item - `examples` on the empty prompt. `priors` (when the job asks for them, always
    with `prompts`) are the base model's own latents, keyed by (item, latent height and width),
    noised in place of the training latent (DreamBooth's class images, in latent space)."""

    triggers: tuple[str, ...]
    class_word: str
    weight: float
    share: float
    texts: list[Any] | None = None
    pool: int = 0
    priors: dict[tuple[int, tuple[int, int]], torch.Tensor] | None = None
    seed: int = 0
    prompts: tuple[str, ...] = ()
    unconditional: float = 0.0
    examples: int = 0
    turn: int = 0
    draws: dict[int, list[Draw]] = field(default_factory=dict)
    uses: dict[int, int] = field(default_factory=dict)
    noised: dict[int, int] = field(default_factory=dict)
    current: list[int] = field(default_factory=list)
    max_store_bytes: int = 1 << 30
    stored_bytes: int = 0

    @classmethod
    def from_config(cls, config: TrainConfig, concepts: Sequence[str] = ()) -> Preserver | None:
        """None when the job does not preserve; ValueError (one line) when it cannot."""
        settings = config.preservation
        if not settings.enabled or config.method == "embedding":
            return None
        triggers = trigger_words(config, concepts)
        if not triggers:
            raise ValueError(
                "preservation keeps prompts without the trigger unchanged, but this job has no "
                "trigger; set one or turn preservation off"
            )
        prompts = tuple(settings.prompts)
        prompts += ("",) * empty_copies(len(prompts), settings.unconditional)
        return cls(
            tuple(triggers), settings.class_word.strip(), settings.weight, settings.share,
            pool=settings.pool, seed=config.seed, prompts=prompts,
            unconditional=settings.unconditional,
        )  # fmt: skip

    def count(self, batch_size: int) -> int:
        """How many samples of a micro-batch are preserved: share × size, rounded, at least 1."""
        return max(1, min(batch_size, round(batch_size * self.share)))

    def caption(self, caption: str) -> str:
        return preserved_caption(caption, self.triggers, self.class_word)

    def captions(self, captions: Sequence[str]) -> list[str]:
        return [self.caption(c) for c in captions]

    @classmethod
    def for_job(
        cls,
        model: Any,
        config: TrainConfig,
        concepts: Sequence[str],
        examples: Sequence[Any],
        text_file: Path | None,
    ) -> Preserver | None:
        """`from_config`, with every example's preserved caption encoded once into a cache file
        beside the job's `text_file` when the job caches text (None: encoded each step)."""
        preserver = cls.from_config(config, concepts)
        if preserver is None:
            return None
        if not preserver.prompts and preserver.unconditional:
            preserver.examples = len(examples)
        if preserver.prompts or config.preservation.prior:
            preserver.priors = render_priors(model, config, preserver.renders(examples))
        if text_file is not None:
            from trainer.caches import text_cache

            key = hashlib.sha256(
                repr((preserver.triggers, preserver.class_word, preserver.prompts)).encode()
            )
            own = text_file.with_name(f"preserved-{key.hexdigest()[:12]}-{text_file.name}")
            captions = list(preserver.prompts) or [
                *preserver.captions([example.caption for example in examples]),
                *([""] if preserver.examples else []),
            ]
            preserver.texts = text_cache(model, captions, own)[0]
        return preserver

    def renders(self, examples: Sequence[Any]) -> list[PriorRender]:
        """What the prior renders are: every prompt at every bucket size of the dataset (seed:
        the job's + the prompt's index), else every example's preserved caption at its own, and
        with `examples` set each example's empty-prompt item too (seed: the job's + the item)."""
        if not self.prompts:
            own = [(e.index, self.caption(e.caption), e.bucket) for e in examples]
            if self.examples:
                own += [(self.examples + e.index, "", e.bucket) for e in examples]
            return [PriorRender(item, text, self.seed + item, size) for item, text, size in own]
        buckets = sorted({tuple(example.bucket) for example in examples})
        return [
            PriorRender(i, prompt, self.seed + i, bucket)
            for bucket in buckets
            for i, prompt in enumerate(self.prompts)
        ]

    def items(self, indices: Sequence[int], k: int) -> list[int]:
        """The preserved items of a micro-batch: its first k examples, or with `prompts` the
        next k prompts of a seeded order that visits every prompt once per round."""
        if not self.prompts:
            return [self.examples + int(i) if self.empty_next() else int(i) for i in indices[:k]]
        chosen = []
        for _ in range(k):
            rounds, position = divmod(self.turn, len(self.prompts))
            generator = torch.Generator().manual_seed(self.seed * 7_919 + rounds)
            chosen.append(int(torch.randperm(len(self.prompts), generator=generator)[position]))
            self.turn += 1
        return chosen

    def empty_next(self) -> bool:
        """Whether the next preserved training image is preserved on the empty prompt: every
        1/`unconditional`-th, evenly spaced (never when `examples` is 0)."""
        if not self.examples:
            return False
        self.turn += 1
        return int(self.turn * self.unconditional) > int((self.turn - 1) * self.unconditional)

    def on_empty(self, item: int) -> bool:
        """Whether a training-caption item stands for its image on the empty prompt."""
        return bool(self.examples) and item >= self.examples

    def batches(
        self,
        model: Any,
        batch: Any,
        indices: Sequence[int],
        captions: Sequence[str],
        encode: Callable[[list[str]], Any],
        text_trained: bool,
    ) -> tuple[Any, Any | None]:
        """(preserved batch, the same as the base model reads it or None): the first k samples
        of `batch` with their preserved captions' conditioning in place of `text`.

        `captions` are the micro-batch's full captions (no dropout: a dropped caption is not a
        trigger-free caption of the image); `encode` turns captions into conditioning."""
        k = self.count(len(indices))
        self.current = self.items(indices, k)
        if self.texts is not None:
            rows = [self.examples if self.on_empty(i) else i for i in self.current]
            text = stack([self.texts[i] for i in rows], device=batch.text.hidden.device)
            return take(batch, k, text=text), None
        if self.prompts:
            chosen = [self.prompts[i] for i in self.current]
        else:
            chosen = [
                "" if self.on_empty(item) else self.caption(caption)
                for item, caption in zip(self.current, captions, strict=False)
            ]
        with torch.set_grad_enabled(text_trained):
            text = encode(chosen)
        base = None
        if text_trained and self.fresh():  # the target reads the caption through the base encoder
            with torch.no_grad(), adapter_disabled(model):
                base = take(batch, k, text=encode(chosen))
        return take(batch, k, text=text), base

    def loss(
        self,
        model: Any,
        predict: Predict,
        batch: Any,
        preserved: Any,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        target: torch.Tensor,
        loss_fn: LossFn,
        base_preserved: Any | None = None,
    ) -> torch.Tensor:
        """Training loss on `batch` plus `weight` × the loss of the adapted model's prediction
        for `preserved` (the first k samples with preserved captions) against the base model's.

        `base_preserved` is `preserved` as the base model reads it (text encoded without the
        adapter) when the text encoder is trained too; otherwise the same batch is used."""
        k = len(preserved.text.hidden)
        noisy_k, t_k, prior = self.targets(
            model, predict, base_preserved or preserved, noisy[:k], timesteps[:k]
        )
        both = predict(concat(batch, preserved), torch.cat([noisy, noisy_k]),
                       torch.cat([timesteps, t_k]))  # fmt: skip
        n = len(noisy)
        training = loss_fn(both[:n], target, timesteps)
        kept = loss_fn(both[n:], prior, t_k)
        return training + self.weight * kept

    def fresh(self) -> list[int]:
        """Positions in `current` whose base prediction must be computed this step."""
        if not self.pool:
            return list(range(len(self.current)))
        return [j for j, i in enumerate(self.current) if len(self.draws.get(i, ())) < self.pool]

    def store(self, index: int, draw: Draw) -> None:
        """Keep `draw` for example `index` unless the store holds `max_store_bytes` already;
        an example whose store stays short keeps its base forward every step (pool 0's cost),
        so a large dataset at a large size cannot fill the host's memory."""
        size = sum(v.numel() * v.element_size() for v in draw)
        if self.stored_bytes + size > self.max_store_bytes:
            return
        self.draws.setdefault(index, []).append(draw)
        self.stored_bytes += size

    def targets(
        self, model: Any, predict: Predict, base_batch: Any, noisy: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy latents, timesteps, base predictions) for the k preserved samples: this
        step's own where the example's store is not yet full (the base model predicts them, and
        they are stored), a stored draw (taken in turn) for the rest."""
        fresh = self.fresh()
        prior = torch.empty_like(noisy)
        if fresh and self.priors is not None:
            noisy = noisy.clone()
            for j in fresh:
                size = (int(noisy.shape[-2]), int(noisy.shape[-1]))
                noisy[j] = self.noised_prior(model, self.current[j], t[j : j + 1], size)
        if fresh:
            rows = torch.tensor(fresh, device=noisy.device)
            with torch.no_grad(), adapter_disabled(model):
                chosen = _map(base_batch, lambda tensor: tensor[rows])
                prior[rows] = predict(chosen, noisy[rows], t[rows]).detach().to(prior.dtype)
        if not self.pool:
            return noisy, t, prior
        noisy, t = noisy.clone(), t.clone()
        for j, index in enumerate(self.current):
            if j in fresh:
                self.store(index, Draw(*(v[j].to("cpu", copy=True) for v in (noisy, t, prior))))
                continue
            store = self.draws[index]
            turn = self.uses.get(index, 0)
            self.uses[index] = turn + 1
            draw = store[turn % len(store)]
            noisy[j], t[j], prior[j] = (v.to(noisy.device) for v in draw)
        return noisy, t, prior

    def noised_prior(
        self, model: Any, index: int, t: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Item `index`'s prior latent at latent `size` noised at timestep `t` (seeded per item
        and draw)."""
        latent = self.priors[(index, size)][None].to(t.device)  # type: ignore[index]
        draw = self.noised.get(index, 0)
        self.noised[index] = draw + 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 64 + draw)
        noise = torch.randn(latent.shape, generator=generator).to(latent.device, latent.dtype)
        return model.arch.noisy_and_target(model, latent, noise, t)[0][0]


def empty_copies(prompts: int, share: float) -> int:
    """How many empty prompts join `prompts` keep prompts for them to be `share` of the visits
    (at least one when asked for; none without keep prompts)."""
    if not prompts or not share:
        return 0
    return max(1, round(prompts * share / (1.0 - share)))


PRIOR_STEPS = 20
"""Sampler steps of a prior render at least (grids may sample fewer for speed)."""


class PriorRender(NamedTuple):
    """One prior image to render: for which item, from which prompt and seed, at which size."""

    item: int
    prompt: str
    seed: int
    bucket: tuple[int, int]


def render_priors(
    model: Any, config: TrainConfig, renders: Sequence[PriorRender]
) -> dict[tuple[int, tuple[int, int]], torch.Tensor]:
    """The base model's latent for every render, keyed by (item, latent height and width),
    rendered once before the adapter exists."""
    import numpy as np

    from trainer.caches import encode_images
    from trainer.validation import render

    steps = max(config.validation.steps, PRIOR_STEPS)
    settings = config.model_copy(
        update={"validation": config.validation.model_copy(update={"steps": steps})}
    )
    latents = {}
    for job in renders:
        width, height = job.bucket
        image = render(model, settings, job.prompt, job.seed, width, height)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
        pixels = pixels.permute(2, 0, 1) / 127.5 - 1.0
        with torch.no_grad():
            latent = encode_images(model.vae, pixels[None])[0].float().cpu()
        latents[(job.item, (int(latent.shape[-2]), int(latent.shape[-1])))] = latent
    return latents


class Draw(NamedTuple):
    """One stored preservation target: the noisy latent, its timestep, the base prediction."""

    noisy: torch.Tensor
    timestep: torch.Tensor
    prior: torch.Tensor


def take(batch: Any, k: int, **replace: Any) -> Any:
    """The first `k` samples of a batch dataclass (every tensor field sliced, nested too)."""
    return dataclasses.replace(_map(batch, lambda t: t[:k]), **replace)


def stack(items: Sequence[Any], device: torch.device | None = None) -> Any:
    """Per-sample values (tensors or dataclasses of tensors) stacked into one batch."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(items)).to(device or first.device)
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first,
            **{
                f.name: stack([getattr(item, f.name) for item in items], device)
                for f in dataclasses.fields(first)
            },
        )
    return first


def concat(first: Any, second: Any) -> Any:
    """Two batches of the same kind as one (tensor fields concatenated along dim 0)."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second.to(first.device, first.dtype)])
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        return dataclasses.replace(
            first,
            **{
                f.name: concat(getattr(first, f.name), getattr(second, f.name))
                for f in dataclasses.fields(first)
            },
        )
    return first


def _map(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _map(getattr(value, f.name), fn) for f in dataclasses.fields(value)}
        )
    return value
