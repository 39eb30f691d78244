"""The training loop: one linear function, `train()`, reading top to bottom.

seed → accelerator → load → data and caches → inject adapter → optimizer and lr schedule →
resume → loop (step, NaN guard, progress, checkpoint + validation grid + state) → final grids.

It never reads the environment or the database: the caller passes the config, folders, device
and (optionally) the settings used to resolve a catalogue name; it reports only through
`TrainCallbacks`. Randomness that shapes the trajectory (data order, captions, noise,
timesteps) is drawn from generators seeded by (seed, micro-batch index), so a resumed job
continues exactly where the interrupted one was.

Length: `train()` and its step are kept in one file on purpose, read top to bottom like
invoke-training's; the parts around it live in caches, checkpointing, validation, adapters.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from trainer import adapters
from trainer.caches import (
    TextConditioning,
    cache_files,
    encode_images,
    encode_prompts,
    latent_cache,
    model_fingerprint,
    park_text_encoders,
    text_cache,
    text_encoders_back,
)
from trainer.callbacks import CheckpointInfo, Progress, TrainCallbacks, TrainingFailed, TrainResult
from trainer.checkpointing import (
    SavedState,
    TrainState,
    apply_state,
    config_hash,
    newest_readable_state,
    prune_states,
    save_state,
)
from trainer.config import TrainConfig
from trainer.data import (
    BatchOrder,
    DatasetSplit,
    Example,
    caption_rng,
    crop_choice,
    dataset_fingerprint,
    embedding_caption,
    load_dataset,
    load_pixels,
    training_caption,
)
from trainer.heldout import HeldoutSet, heldout_loss, overfitting_from
from trainer.initializer import choose_initializer, resolve_templates
from trainer.leakage import LeakCheck, change_text, comparison_footer, suggest
from trainer.optimizers import TOKEN_GROUP, make_optimizer
from trainer.precision import Precision, keep_trainables_fp32, make_precision, settle_auto
from trainer.preservation import Preserver
from trainer.speed import apply_attention_kernel, apply_memory_options, keep_freed_memory
from trainer.validation import (
    ValidationPlan,
    comparison_grid,
    loss_curve,
    make_plan,
    prepare_pipeline,
    render_base,
    validation_grid,
)

log = logging.getLogger(__name__)


def train(
    config: TrainConfig,
    dataset_dir: Path,
    output_dir: Path,
    callbacks: TrainCallbacks | None = None,
    *,
    resume: bool = True,
    device: str | torch.device | None = None,
    cache_dir: Path,
    settings: Any | None = None,
    title: str | None = None,
) -> TrainResult:
    """Train `config` on the dataset folder, writing checkpoints, grids and states to `output_dir`.

    Returns a completed or cancelled `TrainResult`; raises `TrainingFailed(reason)` for a job
    that cannot go on (bad runtime option, dataset problem, too many NaN steps).
    `settings` (optional) resolves catalogue names of base models; without it only the built-in
    tiny models and local paths resolve.
    """
    started = time.monotonic()
    requested = config_hash(config)  # before anything is resolved from the model or data
    callbacks = callbacks or TrainCallbacks()
    output_dir, cache_dir = Path(output_dir), Path(cache_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_runtime(config)

    # 1. seed and precision (device, mixed precision, fp16 loss scaling)
    torch.manual_seed(config.seed)
    accelerator = make_accelerator(config, device)
    keep_freed_memory(accelerator.device)

    # 2. the frozen base model (VAE stays fp32); `auto` on CPU settles once its size is known
    model = load_model(config, cache_dir, accelerator.device, accelerator.dtype, settings)
    accelerator = settle_auto(accelerator, model)
    if config.resolution is None:  # the member set none: the base model's native size
        config = config.with_native_resolution(model.native_resolution)

    # 3. data: captions, buckets, held-out split, resumable order (each image `repeats` times
    #    per epoch), caches (only where an option allows them)
    dataset = _load_dataset(dataset_dir, config)
    examples = dataset.train
    order = BatchOrder(examples, config.batch_size, config.seed)
    latents, texts = build_caches(model, config, examples, cache_dir)
    config = resolve_embedding(model, config, examples, order, latents)
    # preserved captions never drop out or shuffle: their text is cached unless the encoder trains
    cached = config.cache_text and not config.train_text_encoder
    preserver = make_preserver(model, config, dataset, cache_dir, cached=cached)
    heldout = HeldoutSet(model, dataset.heldout)
    parked = park_text_encoders(model) if texts is not None else None
    if len(heldout):
        log.info("%d of %d images held out", len(heldout), len(heldout) + len(examples))

    # 4. the adapter (or the new embedding rows): the only weights that change
    torch.manual_seed(config.seed)
    params = adapters.inject_adapter(model, config)
    keep_trainables_fp32(model, config.learns_token, params)  # fp32 even when the base is bf16
    apply_memory_options(model, config)
    apply_attention_kernel(model, accelerator.device, accelerator.dtype)
    prompt_token = embedding_prompt(model, config)

    # 5. optimizer and learning-rate schedule
    optimizer = make_optimizer(config, params, model)
    lr_scheduler = make_lr_scheduler(config, optimizer)
    optimizer = accelerator.prepare(optimizer)

    # 6. resume from the newest complete state, if any
    state = TrainState(step=0, micro_index=0, config_hash=requested)
    resumed_from = None
    if resume and (saved := newest_readable_state(output_dir)) is not None:
        state = restore(saved, model, config, optimizer, lr_scheduler, requested)
        resumed_from = state.step
    checkpoints = [CheckpointInfo.from_json(item) for item in state.checkpoints]
    plan = make_plan(config, _initializer(config), concepts=dataset.concepts)
    prepare_pipeline(model, config)
    base_column: list = []
    leaks = LeakCheck.for_job(config, plan.prompts, plan.width, plan.height, dataset.concepts)
    callbacks.on_start(state.step, config.steps)
    if resumed_from is not None:
        callbacks.on_resumed(list(checkpoints))

    # 7. the loop
    trainables = [
        m
        for m in (model.denoiser, *model.text_encoders)
        if any(p.requires_grad for p in m.parameters())
    ]
    train_seconds, steps_this_run = 0.0, 0
    for step in range(state.step + 1, config.steps + 1):
        if callbacks.should_stop():
            if steps_this_run and callbacks.keep_progress_on_stop():
                save_state(
                    output_dir, state, adapters.adapter_state(model, config), optimizer,
                    lr_scheduler,
                )  # fmt: skip
            return _finish(
                "cancelled",
                state,
                checkpoints,
                config,
                started,
                steps_this_run,
                resumed_from,
                callbacks,
            )
        step_started = time.monotonic()
        for module in trainables:
            module.train()
        loss = optimizer_step(
            model, config, accelerator, optimizer, lr_scheduler, params, examples, order, state,
            latents, texts, prompt_token, preserver,
        )  # fmt: skip
        state.step = step
        state.losses.append(loss)
        if math.isfinite(loss):
            state.nan_in_a_row = 0
        else:
            state.nan_in_a_row += 1
            state.nan_skipped += 1
            callbacks.on_nan_skipped(step, state.nan_in_a_row)
            if state.nan_in_a_row >= config.max_nan_steps:
                raise TrainingFailed(
                    f"training diverged: the loss was not a number for {state.nan_in_a_row} steps "
                    f"in a row (at step {step}); try a lower learning rate or mixed_precision 'no'"
                )
        train_seconds += time.monotonic() - step_started
        steps_this_run += 1
        rate = steps_this_run / max(train_seconds, 1e-9)
        callbacks.on_progress(
            Progress(
                step, config.steps, _recent_loss(state.losses), rate, (config.steps - step) / rate
            )
        )

        if step in config.checkpoint_steps:
            for module in trainables:
                module.eval()
            with text_encoders_back(model, parked):
                if not base_column:
                    base_column = render_base(model, config, plan)
                held = heldout_loss(
                    model, heldout, heldout_captions(config, heldout, prompt_token),
                    accelerator.autocast(),
                )  # fmt: skip
                info = save_checkpoint(
                    model,
                    config,
                    output_dir,
                    state,
                    optimizer,
                    lr_scheduler,
                    plan,
                    base_column,
                    checkpoints,
                    title,
                    heldout_loss=held,
                    leaks=leaks,
                )
            callbacks.on_checkpoint(info)

    # 8. what the team compares at the end
    return _finish(
        "completed",
        state,
        checkpoints,
        config,
        started,
        steps_this_run,
        resumed_from,
        callbacks,
        output_dir,
    )


# ---------------------------------------------------------------- set-up helpers


def check_runtime(config: TrainConfig) -> None:
    """Options the config model cannot check without importing torch: refused with one line."""
    if config.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingFailed(
            "optimizer 'adamw8bit' needs the bitsandbytes package on the worker; use 'adamw'"
        )
    if config.quantize_base != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingFailed(
            f"quantize_base {config.quantize_base!r} needs the bitsandbytes package on the "
            "worker; set it to 'none'"
        )
    if config.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise TrainingFailed(
            "optimizer 'prodigy' needs the prodigyopt package on the worker; use 'adamw'"
        )


def make_accelerator(config: TrainConfig, device: str | torch.device | None) -> Precision:
    """Device, mixed precision and fp16 loss scaling for this job (`trainer.precision`)."""
    return make_precision(config.mixed_precision, device)


def resolve_model(config: TrainConfig, settings: Any | None) -> tuple[str, str]:
    """(path, architecture) for `config.base_model`, from `settings` when given (no env reads)."""
    from trainer.base_models import resolve_base_model

    catalogue = getattr(settings, "base_models", None)
    if catalogue is None:  # defaults without touching the environment
        catalogue = {
            "tiny": SimpleNamespace(path="builtin:tiny", architecture="sd1"),
            "tiny-sdxl": SimpleNamespace(path="builtin:tiny-sdxl", architecture="sdxl"),
            "tiny-flux": SimpleNamespace(path="builtin:tiny-flux", architecture="flux1"),
            "tiny-zimage": SimpleNamespace(path="builtin:tiny-zimage", architecture="zimage"),
        }
    return resolve_base_model(config.base_model, SimpleNamespace(base_models=catalogue))


def load_model(
    config: TrainConfig,
    cache_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    settings: Any | None,
) -> Any:
    from trainer.base_models import BaseModelError, load_base_model
    from trainer.config import ArchitectureMismatch, check_architecture

    try:
        path, architecture = resolve_model(config, settings)
        check_architecture(config, architecture)
        return load_base_model(
            path, architecture, cache_dir=cache_dir, device=device, dtype=dtype,
            quantize=config.quantize_base,
        )  # fmt: skip
    except (BaseModelError, ArchitectureMismatch) as error:
        raise TrainingFailed(str(error)) from None


def _load_dataset(dataset_dir: Path, config: TrainConfig) -> DatasetSplit:
    from trainer.data import DatasetError

    try:
        return load_dataset(dataset_dir, config)
    except DatasetError as error:
        raise TrainingFailed(str(error)) from None


def heldout_captions(
    config: TrainConfig, heldout: HeldoutSet, prompt_token: str | None
) -> list[str]:
    """Held-out prompts as the model reads them: no dropout or shuffle; an embedding's token."""
    if prompt_token is None:
        return [example.caption for example in heldout.examples]
    plain = config.model_copy(update={"caption_dropout": 0.0, "shuffle_captions": False})
    return [
        embedding_caption(
            example.caption, plain, prompt_token, random.Random(f"atelier-heldout-{example.file}")
        )
        for example in heldout.examples
    ]


def build_caches(
    model: Any, config: TrainConfig, examples: list[Example], cache_dir: Path
) -> tuple[list[torch.Tensor] | None, list[TextConditioning] | None]:
    """Cached latents / text states, or None where an option makes a cache invalid."""
    if not (config.uses_latent_cache or config.uses_text_cache):
        return None, None
    latent_file, text_file = cache_files(
        cache_dir,
        model_fingerprint(model),
        dataset_fingerprint(examples),
        config.resolution,
        config.bucketing,
    )
    latents = texts = None
    if config.uses_latent_cache:
        latents, hit = latent_cache(model, examples, latent_file)
        log.info("latent cache %s: %s", "hit" if hit else "built", latent_file)
    if config.uses_text_cache:
        texts, hit = text_cache(model, [example.caption for example in examples], text_file)
        log.info("text cache %s: %s", "hit" if hit else "built", text_file)
    return latents, texts


def resolve_embedding(
    model: Any,
    config: TrainConfig,
    examples: list[Example],
    order: BatchOrder,
    latents: list[torch.Tensor] | None,
) -> TrainConfig:
    """The new token's `"auto"` initializer (an embedding's or pivotal's) and an embedding's
    `"auto"` templates made concrete (trainer.initializer)."""
    if not config.learns_token:
        return config
    config = resolve_templates(config, [example.caption for example in examples])
    micros = range(min(16, order.batches_per_epoch))

    def loss_of(word: str) -> torch.Tensor:  # the first batches, fixed noise, token → word
        losses = []
        for m in micros:
            batch = make_batch(model, config, examples, order.batch(m), m, latents, None, word)
            generator = torch.Generator().manual_seed(config.seed * 7919 + m)
            losses.append(micro_batch_loss(model, config, batch, generator))
        return torch.stack(losses).mean()

    return choose_initializer(model, config, [e.caption for e in examples], loss_of)


def make_preserver(
    model: Any, config: TrainConfig, dataset: DatasetSplit, cache_dir: Path, cached: bool
) -> Preserver | None:
    """Differential output preservation for this job (None: off)."""
    text_file = None
    if cached:
        key = (model_fingerprint(model), dataset_fingerprint(dataset.train), config.side, False)
        text_file = cache_files(cache_dir, *key)[1]
    started = time.monotonic()
    try:
        preserver = Preserver.for_job(model, config, dataset.concepts, dataset.train, text_file)
    except ValueError as error:
        raise TrainingFailed(str(error)) from None
    if preserver is not None:
        log.info(
            "preservation: share %.2f, weight %g, pool %d, empty prompt %.2f, %d prior renders; "
            "ready in %.1f s",
            preserver.share, preserver.weight, preserver.pool, preserver.unconditional,
            len(preserver.priors or ()),
            time.monotonic() - started,
        )  # fmt: skip
    return preserver


def embedding_prompt(model: Any, config: TrainConfig) -> str | None:
    """What stands for the learned vectors in a training caption: `tok tok_1 … tok_{n-1}`
    (an embedding, or pivotal's trigger)."""
    if not config.learns_token:
        return None
    return " ".join(adapters.placeholder_tokens(config))


def _initializer(config: TrainConfig) -> str | None:
    return config.embedding.initializer_token if config.learns_token else None


def make_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The configured schedule for every group; pivotal's token rows stop (lr 0, no weight
    decay: they stay as they are) after `pivotal_until` of the steps."""
    from diffusers.optimization import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(config.schedule, config.schedule)
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    if config.pivotal and config.pivotal_until < 1.0:
        stop, shared = round(config.pivotal_until * config.steps), scheduler.lr_lambdas[0]

        def tokens(step: int) -> float:
            return shared(step) if step < stop else 0.0

        scheduler.lr_lambdas = [
            tokens if group.get("name") == TOKEN_GROUP else shared
            for group in optimizer.param_groups
        ]
    return scheduler


def restore(
    saved: SavedState,
    model: Any,
    config: TrainConfig,
    optimizer: Any,
    lr_scheduler: Any,
    requested: str | None = None,
) -> TrainState:
    """Load a saved state into the freshly built adapter, optimizer, scheduler and RNGs;
    `requested` is the hash of the config as the job asked for it."""
    state, path = saved.meta, saved.path
    if state.config_hash and state.config_hash != (requested or config_hash(config)):
        raise TrainingFailed(
            f"{path.parent.parent} holds a run with different settings; use a new output folder"
        )
    apply_state(saved, optimizer, lr_scheduler)
    adapters.load_adapter_state(model, config, saved.adapter)
    log.info("resumed from %s (step %s)", path, state.step)
    return state


# ---------------------------------------------------------------- one step


@dataclass
class Batch:
    latents: torch.Tensor
    text: TextConditioning


def make_batch(
    model: Any,
    config: TrainConfig,
    examples: list[Example],
    indices: list[int],
    micro_index: int,
    latents: list[torch.Tensor] | None,
    texts: list[TextConditioning] | None,
    prompt_token: str | None,
) -> Batch:
    """Latents and text conditioning for one micro-batch (from caches, or encoded now)."""
    device = model.device
    rngs = [caption_rng(config.seed, micro_index, i) for i in indices]
    if latents is not None:
        batch_latents = torch.stack([latents[i] for i in indices]).to(device)
    else:
        flips = [config.flip and rng.random() < 0.5 for rng in rngs]
        crops = [crop_choice(config, rng) for rng in rngs]
        pixels = torch.stack(
            [
                load_pixels(examples[i], flip, crop)
                for i, flip, crop in zip(indices, flips, crops, strict=True)
            ]
        )
        batch_latents = encode_images(model.vae, pixels)
    if texts is not None:
        chosen = [texts[i] for i in indices]
        pooled = [c.pooled for c in chosen]
        text = TextConditioning(
            hidden=torch.stack([c.hidden for c in chosen]).to(device),
            pooled=torch.stack(pooled).to(device) if pooled[0] is not None else None,  # type: ignore[arg-type]
        )
    else:
        captions = [
            embedding_caption(examples[i].caption, config, prompt_token, rng)
            if prompt_token is not None
            else training_caption(examples[i].caption, config, rng)
            for i, rng in zip(indices, rngs, strict=True)
        ]
        with torch.set_grad_enabled(config.learns_token or config.train_text_encoder):
            text = encode_prompts(model, captions)
    return Batch(batch_latents, text)


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    """MSE per sample, times the architecture's per-sample weight (min-SNR-γ for SD)."""
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def micro_batch_loss(
    model: Any,
    config: TrainConfig,
    batch: Batch,
    generator: torch.Generator,
    preserved: tuple[Preserver, Batch, Batch | None] | None = None,
) -> torch.Tensor:
    """Noise the latents at random timesteps and score the denoiser's prediction against the
    architecture's target (ε or v for SD, the flow velocity for FLUX.1); with `preserved`
    (preserver, preserved batch, its base-text twin) add the preservation loss."""
    arch = model.arch
    noisy, timesteps, target = noised_inputs(model, config, batch, generator)

    def loss_fn(prediction: torch.Tensor, goal: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion_loss(prediction, goal, arch.loss_weight(model, config, t))

    def predict(inputs: Batch, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return arch.predict(model, x, t, inputs.text)

    if preserved is None:
        return loss_fn(predict(batch, noisy, timesteps), target, timesteps)
    preserver, kept, base = preserved
    return preserver.loss(model, predict, batch, kept, noisy, timesteps, target, loss_fn, base)


def noised_inputs(
    model: Any, config: TrainConfig, batch: Batch, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, target) for one micro-batch, as the architecture trains."""
    arch = model.arch
    latents = batch.latents.float()
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    if config.noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        noise = noise + config.noise_offset * offset.to(latents.device)
    timesteps = arch.sample_timesteps(model, config, latents, generator)
    noisy, target = arch.noisy_and_target(model, latents, noise, timesteps)
    return noisy, timesteps, target


def optimizer_step(
    model: Any,
    config: TrainConfig,
    accelerator: Any,
    optimizer: Any,
    lr_scheduler: Any,
    params: list[torch.nn.Parameter],
    examples: list[Example],
    order: BatchOrder,
    state: TrainState,
    latents: list[torch.Tensor] | None,
    texts: list[TextConditioning] | None,
    prompt_token: str | None,
    preserver: Preserver | None = None,
) -> float:
    """One optimizer step over `gradient_accumulation` micro-batches; NaN if it was skipped.

    A non-finite loss or gradient skips the update (weights and optimizer moments untouched);
    the lr schedule still advances so the job's length and schedule stay tied to step numbers.
    """
    total = 0.0
    finite = True
    for _ in range(config.gradient_accumulation):
        micro = state.micro_index
        state.micro_index += 1
        if not finite:
            continue  # keep the data order aligned with step numbers
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro)
        indices = order.batch(micro)
        batch = make_batch(model, config, examples, indices, micro, latents, texts, prompt_token)
        preserved = None
        if preserver is not None:
            captions = [examples[i].caption for i in indices]
            encode = partial(encode_prompts, model)
            kept, base = preserver.batches(
                model, batch, indices, captions, encode, config.train_text_encoder
            )
            preserved = (preserver, kept, base)
        with accelerator.autocast():
            loss = micro_batch_loss(model, config, batch, generator, preserved)
            loss = loss / config.gradient_accumulation
        if not torch.isfinite(loss):
            finite = False
            continue
        accelerator.backward(loss)
        total += loss.item()
    finite = accelerator.step(optimizer, params, config.max_grad_norm, finite)
    if finite and config.learns_token:
        adapters.restore_frozen_embedding_rows(model)
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # torch warns when a skipped step did not call optimizer.step
        warnings.simplefilter("ignore", UserWarning)
        lr_scheduler.step()
    return total if finite else float("nan")


# ---------------------------------------------------------------- checkpoints and the end


def save_checkpoint(
    model: Any,
    config: TrainConfig,
    output_dir: Path,
    state: TrainState,
    optimizer: Any,
    lr_scheduler: Any,
    plan: ValidationPlan,
    base_column: list,
    checkpoints: list[CheckpointInfo],
    title: str | None,
    heldout_loss: float | None = None,
    leaks: LeakCheck | None = None,
) -> CheckpointInfo:
    """Model file, validation grid (with the leakage rows and number), then the resume state
    (last: it marks the checkpoint done)."""
    from trainer.export import export_checkpoint

    step = state.step
    exported = export_checkpoint(
        model, config, output_dir / "checkpoints", step, title or config.trigger or config.method
    )
    rows, change = leaks.measure(model, config) if leaks is not None else ([], None)
    grid = validation_grid(
        model, config, plan, base_column, step, output_dir / "grids" / f"step-{step:08d}.png",
        rows, [change_text(change)] if change is not None else None,
    )  # fmt: skip
    info = CheckpointInfo(
        step=step,
        file=Path(exported.primary),
        diffusers_dir=Path(exported.diffusers) if getattr(exported, "diffusers", None) else None,
        grid_path=grid,
        state_path=None,
        loss=_recent_loss(state.losses),
        heldout_loss=heldout_loss,
        leakage=change,
    )
    from trainer.checkpointing import state_dir

    info = CheckpointInfo(**{**info.__dict__, "state_path": state_dir(output_dir, step)})
    checkpoints[:] = [c for c in checkpoints if c.step != step] + [info]
    state.checkpoints = [c.to_json() for c in checkpoints]
    save_state(output_dir, state, adapters.adapter_state(model, config), optimizer, lr_scheduler)
    prune_states(output_dir, config.keep_last)
    return info


def _recent_loss(losses: list[float], window: int = 10) -> float:
    """Mean of the last finite losses: a readable number for progress and checkpoints."""
    recent = [value for value in losses[-window:] if math.isfinite(value)]
    return sum(recent) / len(recent) if recent else float("nan")


def _finish(
    status: str,
    state: TrainState,
    checkpoints: list[CheckpointInfo],
    config: TrainConfig,
    started: float,
    steps_this_run: int,
    resumed_from: int | None,
    callbacks: TrainCallbacks,
    output_dir: Path | None = None,
) -> TrainResult:
    seconds = time.monotonic() - started
    result = TrainResult(
        status=status,  # type: ignore[arg-type]
        step=state.step,
        total=config.steps,
        checkpoints=list(checkpoints),
        seconds=seconds,
        steps_per_second=steps_this_run / seconds if seconds > 0 else 0.0,
        resumed_from=resumed_from,
        nan_skipped=state.nan_skipped,
        heldout_losses=[
            (c.step, c.heldout_loss) for c in checkpoints if c.heldout_loss is not None
        ],
        overfit_after=overfitting_from([(c.step, c.loss, c.heldout_loss) for c in checkpoints]),
        suggested_step=suggest([(c.step, c.heldout_loss, c.leakage) for c in checkpoints]),
    )
    if output_dir is not None and checkpoints:
        grids = [c.grid_path for c in checkpoints if c.grid_path and c.grid_path.is_file()]
        if grids:
            shown = [c for c in checkpoints if c.grid_path and c.grid_path.is_file()]
            steps = [c.step for c in shown]
            held, changes = [c.heldout_loss for c in shown], [c.leakage for c in shown]
            footer = comparison_footer(steps, held, changes, result.suggested_step)
            result.comparison_grid = comparison_grid(
                grids, steps, output_dir / "comparison.png",
                footer=footer, suggested=result.suggested_step,
            )  # fmt: skip
        result.loss_curve = loss_curve(
            state.losses, output_dir / "loss.png", heldout=result.heldout_losses
        )
    callbacks.on_done(result)
    return result
