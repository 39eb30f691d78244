"""Leakage: how much a checkpoint changes images of prompts *without* its trigger.

Every checkpoint grid gains rows of prompts without the trigger, the base model's image beside,
and one number under the grid:

    outside the trigger, images changed by X / 255

X is the mean absolute difference, over every pixel and RGB channel (8-bit, 0–255), between the
checkpoint's image and the base model's image for the same prompt and seed, averaged over the
leak prompts × validation seeds. 0 means those prompts render exactly as the base model draws
them (an embedding always scores 0: its token is not in the prompts); a few units is dithering;
tens mean the adapter changed what it was not asked to change.

Leak prompts: `validation.leak_prompts` when the job names them; otherwise the job's validation
prompts with the trigger replaced by the preservation class word when one is set (what
DreamBooth calls language drift: does every "person" become the character?), else
`DEFAULT_LEAK_PROMPTS`.

The comparison grid marks one checkpoint as *suggested* (`suggest`): the one with the lowest sum
of its held-out loss and its leakage, each scaled to 0–1 over the job's checkpoints (min → 0,
max → 1). Members still choose by vote; without held-out images there is no suggestion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from trainer.adapters import adapter_disabled
from trainer.config import TrainConfig
from trainer.preservation import preserved_caption, trigger_words

DEFAULT_LEAK_PROMPTS = ("a photo of a person", "a city street at night")
MAX_LEAK_PROMPTS = 2
LABEL_PREFIX = "no trigger: "


def leak_prompts(
    config: TrainConfig, prompts: Sequence[str], concepts: Sequence[str] = ()
) -> list[str]:
    """The prompts without the trigger a job's grids show (see the module docstring)."""
    if config.validation.leak_prompts is not None:
        return [p.strip() for p in config.validation.leak_prompts if p.strip()]
    class_word = config.preservation.class_word.strip()
    triggers = trigger_words(config, concepts)
    if config.method == "embedding":
        triggers = sorted({*triggers, config.token}, key=lambda word: (-len(word), word))
    if class_word and triggers:
        derived = [preserved_caption(p, triggers, class_word) for p in prompts]
        unique = [p for p in dict.fromkeys(derived) if p and p not in prompts]
        if unique:
            return unique[:MAX_LEAK_PROMPTS]
    return list(DEFAULT_LEAK_PROMPTS)


def pixel_change(images: Sequence[Image.Image], bases: Sequence[Image.Image]) -> float:
    """Mean absolute difference (0–255) over all pixels and RGB channels of image pairs."""
    diffs = [
        np.abs(
            np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32)
        ).mean()
        for a, b in zip(images, bases, strict=True)
    ]
    return float(np.mean(diffs)) if diffs else 0.0


def change_text(change: float) -> str:
    """The plain sentence under a grid."""
    return f"outside the trigger, images changed by {change:.1f} / 255 (mean pixel difference)"


@dataclass
class LeakCheck:
    """One job's leak prompts, their base images (rendered once), and each checkpoint's rows."""

    prompts: list[str]
    seeds: list[int]
    width: int
    height: int
    base: list[list[Image.Image]] = field(default_factory=list)  # [prompt][seed]

    @classmethod
    def for_job(
        cls, config: TrainConfig, prompts: Sequence[str], width: int, height: int,
        concepts: Sequence[str] = (),
    ) -> LeakCheck:  # fmt: skip
        return cls(
            leak_prompts(config, prompts, concepts), list(config.validation.seeds), width, height
        )

    def _render_all(self, model: Any, config: TrainConfig) -> list[list[Image.Image]]:
        from trainer.validation import render

        return [
            [render(model, config, p, s, self.width, self.height) for s in self.seeds]
            for p in self.prompts
        ]

    def measure(
        self, model: Any, config: TrainConfig
    ) -> tuple[list[tuple[str, list[Image.Image]]], float | None]:
        """(grid rows: label, [base, seed images…]; the change number, None without prompts).

        The base images are rendered on the first call, with the adapter switched off."""
        if not self.prompts:
            return [], None
        if not self.base:
            with adapter_disabled(model):
                self.base = self._render_all(model, config)
        current = self._render_all(model, config)
        rows = [
            (f"{LABEL_PREFIX}{prompt}", [base[0], *images])
            for prompt, base, images in zip(self.prompts, self.base, current, strict=True)
        ]
        flat = [image for images in current for image in images]
        bases = [image for images in self.base for image in images]
        return rows, round(pixel_change(flat, bases), 2)


def suggest(checkpoints: Sequence[tuple[int, float | None, float | None]]) -> int | None:
    """The step that best balances held-out loss and leakage, from (step, held-out, change).

    Score = (h − h_min)/(h_max − h_min) + (c − c_min)/(c_max − c_min) over checkpoints that have
    both numbers (a term is 0 when all are equal); the lowest score wins, the earlier step on a
    tie. None with fewer than two such checkpoints."""
    usable = [
        (step, h, c)
        for step, h, c in checkpoints
        if h is not None and c is not None and math.isfinite(h) and math.isfinite(c)
    ]
    if len(usable) < 2:
        return None

    def scaled(values: list[float]) -> list[float]:
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 0.0 for v in values]

    held = scaled([h for _, h, _ in usable])
    change = scaled([c for _, _, c in usable])
    scores = [(h + c, step) for (step, _, _), h, c in zip(usable, held, change, strict=True)]
    return min(scores)[1]


def comparison_footer(
    steps: Sequence[int],
    heldout: Sequence[float | None],
    changes: Sequence[float | None],
    suggested: int | None,
) -> list[str]:
    """Lines under the comparison grid: each checkpoint's numbers, then the suggestion."""
    lines = []
    for number, (step, h, c) in enumerate(zip(steps, heldout, changes, strict=True), 1):
        parts = [f"{number}: step {step}"]
        if h is not None:
            parts.append(f"held-out loss {h:.4f}")
        if c is not None:
            parts.append(f"outside the trigger changed by {c:.1f}/255")
        lines.append(" · ".join(parts) + (" * suggested" if step == suggested else ""))
    if suggested is not None:
        lines.append("* suggested: lowest held-out loss + leakage (each scaled 0-1); vote freely")
    return lines
