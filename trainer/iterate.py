"""The worker's side of `/iterate` and `/compare`: the prompt matrix, candidate rendering and the
side-by-side comparison grid.

Importing this module loads no torch (the bot imports `prompt_matrix` and the defaults); the
rendering functions import it when called.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage import comparisons
from storage import iterations as it
from storage.models import Checkpoint, Comparison, Iteration, Job, utcnow
from storage.requests import Lease
from trainer.config import TrainConfig
from trainer.render_pipeline import describe_crash, render_pipeline

if TYPE_CHECKING:
    from PIL import Image

    from trainer.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_CONTEXTS = (
    "in a busy city street at night",
    "on a beach at sunset",
    "in a misty forest",
    "in a cozy kitchen",
    "on a snowy mountain top",
    "standing, full body shot",
    "sitting, close-up portrait",
    "running, dynamic pose",
    "seen from behind, looking over the shoulder",
    "in the rain with an umbrella",
    "in a library, soft window light",
    "at a crowded market, wide shot",
)
"""Backgrounds, poses and framing: spread so the next dataset is not twenty copies of one shot."""

DEFAULT_STYLES = (
    "photo",
    "digital painting",
    "watercolor",
    "3d render",
    "pencil sketch",
    "flat illustration",
)


@dataclass(frozen=True)
class PromptCell:
    prompt: str
    context: str
    style: str
    seed: int


def prompt_matrix(
    trigger: str,
    count: int,
    contexts: list[str] | None = None,
    styles: tuple[str, ...] = DEFAULT_STYLES,
    base_seed: int = 0,
) -> list[PromptCell]:
    """`count` prompts from trigger × contexts × styles: the member's contexts first, then the
    defaults; the style rotates with each pass over the contexts, so neither repeats in step."""
    own = [c.strip() for c in contexts or [] if c.strip()]
    pool = own + [c for c in DEFAULT_CONTEXTS if c not in own]
    cells = []
    for index in range(count):
        context = pool[index % len(pool)]
        style = styles[(index % len(pool) + index // len(pool)) % len(styles)]
        subject = trigger.strip() or "the character"
        cells.append(
            PromptCell(f"{subject}, {context}, {style}", context, style, base_seed + index)
        )
    return cells


@contextmanager
def _load(worker: Worker, job: Job, checkpoint: Checkpoint) -> Iterator[Any]:
    model_file = Path(checkpoint.path)
    with render_pipeline(
        worker.settings, job.base_model, model_file, 1.0, worker.warm_base
    ) as pipeline:
        pipeline.set_progress_bar_config(disable=True)
        yield pipeline


def _render(pipeline: Any, config: TrainConfig, prompt: str, seed: int) -> Image.Image:
    from trainer.generate import render

    v = config.validation
    return render(
        pipeline,
        prompt,
        seed=seed,
        steps=v.steps,
        guidance=v.guidance,
        scheduler=v.scheduler,
        negative_prompt=v.negative_prompt,
        width=config.resolution,
        height=config.resolution,
    )


def render_iteration(worker: Worker, iteration_id: int) -> list[dict[str, Any]]:
    """Render every cell of the iteration's matrix with the model's winning checkpoint."""
    iteration, job, checkpoint = it.iteration_inputs(worker.engine, iteration_id)
    config = TrainConfig.model_validate(job.config)
    out = worker.settings.data_dir / "iterations" / str(iteration_id)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = prompt_matrix(
        config.trigger, iteration.count, iteration.contexts, base_seed=1000 * iteration_id
    )
    with _load(worker, job, checkpoint) as pipeline:
        for index, cell in enumerate(cells, start=1):
            path = out / f"{index:02d}.png"
            _render(pipeline, config, cell.prompt, cell.seed).save(path)
            rows.append({**asdict(cell), "image_path": str(path)})
    return rows


def comparison_label(job: Job, diff: dict[str, list[Any]], side: int) -> str:
    """`A (left): #3 name — rank=4`: the side, the job, the settings that differ (at most
    three)."""
    settings = ", ".join(f"{k}={v[side]}" for k, v in list(diff.items())[:3])
    letter = ("A (left)", "B (right)")[side]
    return f"{letter}: #{job.id} {job.name} — {settings or 'same settings'}"


def render_comparison(worker: Worker, comparison_id: int) -> Path:
    """Same prompts and seeds for both winners, side by side (A left, B right), labelled."""
    comparison, sides = comparisons.comparison_inputs(worker.engine, comparison_id)
    config_a = TrainConfig.model_validate(sides[0][0].config)
    trigger = config_a.trigger or "the character"
    prompts = [p.replace("{trigger}", trigger) for p in config_a.validation.prompts][:2] or [
        trigger,
        f"{trigger}, {DEFAULT_CONTEXTS[1]}",
    ]
    seeds = config_a.validation.seeds[:2]
    columns: list[list[Image.Image]] = []
    for job, checkpoint in sides:
        config = TrainConfig.model_validate(job.config)
        side_config = config_a if config.resolution == config_a.resolution else config
        with _load(worker, job, checkpoint) as pipeline:  # each side on its own view of the base
            columns.append([_render(pipeline, side_config, p, s) for p in prompts for s in seeds])
    labels = [comparison_label(job, comparison.diff, i) for i, (job, _) in enumerate(sides)]
    grid = comparison_image(columns, labels)
    path = worker.settings.data_dir / "comparisons" / f"{comparison_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def comparison_image(columns: list[list[Image.Image]], labels: list[str]) -> Image.Image:
    """Two columns of tiles (A left, B right) under both labels, each wrapped across the whole
    width and measured; small renders are enlarged so the labels stay readable on a phone."""
    from PIL import Image, ImageDraw

    from storage.drawing import block_height, draw_lines, font, legible_size, wrap
    from trainer.grids import BAND, BG, FG
    from trainer.validation import enlarge

    columns = [[enlarge(image) for image in column] for column in columns]
    side = max(image.width for column in columns for image in column)
    gap = max(4, side // 32)
    width = 2 * side + gap
    face = font(legible_size(width))
    pad = max(4, face.size // 3)
    wrapped = [wrap(label, face, width - 2 * pad) for label in labels]
    header = sum(block_height(len(lines), face) for lines in wrapped) + 2 * pad
    rows = len(columns[0])
    grid = Image.new("RGB", (width, header + rows * (side + gap)), BG)
    draw = ImageDraw.Draw(grid)
    draw.rectangle((0, 0, width - 1, header - 1), fill=BAND)
    y = pad
    for lines in wrapped:
        y += draw_lines(draw, (pad, y), lines, face, FG)
    for c, column in enumerate(columns):
        for r, image in enumerate(column):
            grid.paste(image.resize((side, side)), (c * (side + gap), header + r * (side + gap)))
    return grid


def run_iteration(worker: Worker, iteration: Iteration, lease: Lease) -> None:
    """Render a claimed iteration's candidates; written only while `lease` holds it."""
    started = time.monotonic()
    try:
        rows = render_iteration(worker, iteration.id)  # type: ignore[arg-type]
    except Exception as error:
        log.exception("iteration %s: failed", iteration.id)
        written = it.fail_iteration(
            worker.engine,
            iteration.id,  # type: ignore[arg-type]
            describe_crash(error),
            lease=lease,
        )
    else:
        deadline = utcnow() + timedelta(hours=worker.vote_window_hours(iteration.guild_id))
        written = it.complete_iteration(
            worker.engine,
            iteration.id,  # type: ignore[arg-type]
            rows,
            deadline,
            lease=lease,
        )
        log.info(
            "iteration %s: %s candidates in %.1f s",
            iteration.id,
            len(rows),
            time.monotonic() - started,
        )
    if not written:
        log.warning("iteration %s: another worker holds it now; result dropped", iteration.id)


def run_comparison(worker: Worker, comparison: Comparison, lease: Lease) -> None:
    """Render a claimed comparison grid; written only while `lease` holds it."""
    try:
        path = render_comparison(worker, comparison.id)  # type: ignore[arg-type]
    except Exception as error:
        log.exception("comparison %s: failed", comparison.id)
        written = comparisons.fail_comparison(
            worker.engine,
            comparison.id,  # type: ignore[arg-type]
            describe_crash(error),
            lease=lease,
        )
    else:
        written = comparisons.complete_comparison(
            worker.engine,
            comparison.id,  # type: ignore[arg-type]
            str(path),
            lease=lease,
        )
    if not written:
        log.warning("comparison %s: another worker holds it now; result dropped", comparison.id)
