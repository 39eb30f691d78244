"""`atelier train`: the headless trainer, for people without Discord and for scripts.

    atelier train CONFIG.yaml [--out DIR] [--json]
    atelier train --dataset DIR_OR_ZIP --method lora|dora|embedding --trigger WORD
                  [--preset NAME] [--steps N] [--out DIR] [--json]

A progress bar on a terminal (plain lines otherwise) goes to stderr; `--json` prints one summary
object on stdout at the end. Running the same command again resumes from the newest state in
the output folder. A refusal (bad option, dataset, model) exits 2 with one `error:` line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from tqdm import tqdm

from storage.settings import Settings, SettingsError
from trainer.callbacks import CheckpointInfo, Progress, TrainCallbacks, TrainingFailed, TrainResult
from trainer.config import ArchitectureMismatch, TrainConfig, check_architecture
from trainer.presets import (
    DEFAULT_PRESET,
    PRESETS,
    PresetError,
    apply_preset,
    explain_validation_error,
)


class CliError(Exception):
    """A refusal: printed as one `error:` line, exit status 2."""


class AboveBar:
    """A stream for log lines that prints them above a running tqdm bar (`tqdm.write`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.strip():
            tqdm.write(text.rstrip("\n"), file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class ConsoleCallbacks(TrainCallbacks):
    """A tqdm progress bar on a terminal, else a plain line every ~5 %; Ctrl-C stops cleanly."""

    def __init__(self, stream: TextIO, interactive: bool) -> None:
        self.stream, self.interactive = stream, interactive
        self.stop_requested = False
        self._bar: tqdm | None = None

    def on_start(self, step: int, total: int) -> None:
        where = f"resuming at step {step}" if step else "starting"
        self.stream.write(f"training: {where} of {total}\n")
        self.stream.flush()
        if self.interactive:
            self._bar = tqdm(total=total, initial=step, file=self.stream, unit="step")

    def on_progress(self, progress: Progress) -> None:
        if self._bar is not None:
            self._bar.update(progress.step - self._bar.n)
            self._bar.set_postfix_str(f"loss {progress.loss:.4f}")
            if progress.step == progress.total:
                self._bar.close()
            return
        if progress.step == progress.total or progress.step % max(1, progress.total // 20) == 0:
            eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, progress.eta_seconds)))
            self.stream.write(
                f"step {progress.step}/{progress.total}  loss {progress.loss:.4f}  "
                f"{progress.steps_per_second:.2f} it/s  ETA {eta}\n"
            )
            self.stream.flush()

    def _say(self, line: str) -> None:
        """A line that keeps the bar (if any) intact below it."""
        if self._bar is not None:
            tqdm.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self._say(f"checkpoint step {info.step}: {info.file} (grid {info.grid_path})")

    def on_nan_skipped(self, step: int, count: int) -> None:
        self._say(f"step {step}: loss not finite, update skipped ({count} in a row)")

    def should_stop(self) -> bool:
        return self.stop_requested


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier train", description="Train a LoRA, DoRA or embedding."
    )
    parser.add_argument("config", nargs="?", type=Path, help="YAML file of TrainConfig fields")
    parser.add_argument(
        "--dataset", type=Path, help="ingested dataset folder, image folder, or zip"
    )
    parser.add_argument("--method", choices=("lora", "dora", "embedding"))
    parser.add_argument("--trigger", help="trigger word (the embedding's token)")
    parser.add_argument("--preset", help=f"named defaults: {', '.join(PRESETS)}")
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--base-model",
        help="catalogue name (tiny, tiny-sdxl, tiny-flux, tiny-zimage, …) or a local path",
    )
    parser.add_argument("--out", type=Path, help="output folder (run again to resume)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 …")
    parser.add_argument(
        "--cache-dir", type=Path, help="model and latent caches (default: settings)"
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start over even if a state exists"
    )
    return parser


def train_cli(argv: list[str], load_settings: Callable[[], Settings]) -> int:
    """Run `atelier train` with the settings `load_settings` builds (the entry point's composed
    settings); returns the exit status (0 done, 1 stopped early, 2 refused)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(load_settings)
        config, dataset = resolve_job(args, settings)
        dataset_dir = prepare_dataset(dataset, config, settings)
        output_dir = args.out or config.output_dir or settings.data_dir / "runs" / _run_name(config)
        cache_dir = args.cache_dir or settings.cache_dir
        result = _run(config, dataset_dir, output_dir, cache_dir, args, settings)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingFailed as error:
        print(f"error: {error.reason}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    if result.status == "cancelled":
        print(
            f"stopped at step {result.step}; run the same command again to resume", file=sys.stderr
        )
        return 1
    return 0


def resolve_job(args: argparse.Namespace, settings: Any = None) -> tuple[TrainConfig, Path]:
    """The validated config and dataset path, from a YAML file or from the flags; presets and
    checks follow the base model's architecture (from `settings`' catalogue or the path)."""
    if args.config is None and args.dataset is None:
        raise CliError("give a CONFIG.yaml or --dataset DIR_OR_ZIP")
    overrides: dict[str, Any] = {}
    if args.config is not None:
        overrides = _read_yaml(args.config)
    for key in ("method", "trigger", "steps", "base_model"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.dataset is not None:
        overrides["dataset"] = str(args.dataset)
    preset = args.preset or overrides.pop("preset", None)
    method = overrides.pop("method", "lora")
    architecture = _architecture(str(overrides.get("base_model", "tiny")), settings)
    try:
        if preset is not None or args.config is None:
            config = apply_preset(preset or DEFAULT_PRESET, method, architecture, **overrides)
        else:
            config = TrainConfig(method=method, **overrides)
            check_architecture(config, architecture)
    except (PresetError, ArchitectureMismatch) as error:
        raise CliError(str(error)) from None
    except ValidationError as error:
        raise CliError(explain_validation_error(error)) from None
    if not config.dataset:
        raise CliError("no dataset: give --dataset or a `dataset:` entry in the config")
    return config, Path(config.dataset)


def _architecture(base_model: str, settings: Any) -> str:
    """sd1 / sdxl / flux1 of a catalogue name or a local model; sd1 when it cannot be told
    (the loop then says what is wrong with the model)."""
    entry = getattr(settings, "base_models", {}).get(base_model)
    if entry is not None:
        return str(entry.architecture)
    from trainer.base_models import BUILTINS, BaseModelError, detect_architecture

    if f"builtin:{base_model}" in BUILTINS:
        return BUILTINS[f"builtin:{base_model}"]
    path = Path(base_model).expanduser()
    try:
        return detect_architecture(path) if path.exists() else "sd1"
    except BaseModelError:
        return "sd1"


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise CliError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} must be a mapping of TrainConfig fields")
    if "dataset" in data and not Path(data["dataset"]).is_absolute():
        data["dataset"] = str((path.parent / data["dataset"]).resolve())
    return data


def _settings(load_settings: Callable[[], Settings]) -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise CliError(str(error)) from None


def prepare_dataset(dataset: Path, config: TrainConfig, settings: Any) -> Path:
    """A folder is used as is; a zip is ingested first (validated, captioned, content-addressed)."""
    if dataset.is_dir():
        return dataset
    if dataset.is_file() and dataset.suffix.lower() == ".zip":
        from storage.ingest import IngestOptions, ingest_zip
        from storage.ingest.errors import IngestError

        resolution = min(2048, max(256, config.side // 64 * 64))
        options = IngestOptions(
            trigger=config.trigger,
            caption_prefix=config.caption_prefix,
            method=config.method,
            resolution=resolution,
        )
        try:
            return Path(ingest_zip(dataset, settings.datasets_dir, options, settings.limits).path)
        except IngestError as error:
            raise CliError(f"dataset refused: {error}") from None
    raise CliError(f"dataset {dataset} is neither a folder nor a .zip file")


def _run_name(config: TrainConfig) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in config.trigger) or "run"
    return f"{config.method}-{safe}"


def _run(
    config: TrainConfig,
    dataset_dir: Path,
    output_dir: Path,
    cache_dir: Path,
    args: argparse.Namespace,
    settings: Any,
) -> TrainResult:
    _quiet_libraries()
    from storage.logs import configure_logging
    from trainer.loop import train

    interactive = sys.stderr.isatty()
    callbacks = ConsoleCallbacks(sys.stderr, interactive)
    # the operator's lines (held-out split, preservation set-up, checkpoints) at the configured
    # level, redacted like every entry point's; written above the progress bar, not through it
    configure_logging(
        settings.log_level, stream=AboveBar(sys.stderr) if interactive else None, settings=settings
    )

    def stop(signum: int, frame: object) -> None:
        callbacks.stop_requested = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train(
            config,
            dataset_dir,
            output_dir,
            callbacks,
            resume=not args.no_resume,
            device=args.device,
            cache_dir=cache_dir,
            settings=settings,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_libraries() -> None:
    """diffusers / transformers chatter (load bars, dtype notes) would bury the progress bar."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
