"""How the training loop reports what happens, without knowing who listens.

`train()` calls these hooks with plain dataclasses; the worker turns them into database events,
the CLI into a progress bar, tests into lists. The loop never imports storage or the bot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


class TrainingFailed(RuntimeError):
    """A job cannot go on; `reason` is one sentence a member understands (shown in Discord)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Progress:
    """Sent after every optimizer step (the listener throttles; the loop does not)."""

    step: int
    total: int
    loss: float
    steps_per_second: float
    eta_seconds: float


@dataclass(frozen=True)
class CheckpointInfo:
    """One saved checkpoint: the exported model file, its validation grid and the resume state."""

    step: int
    file: Path
    diffusers_dir: Path | None
    grid_path: Path | None
    state_path: Path | None
    loss: float
    heldout_loss: float | None = None  # fixed-noise denoising loss on held-out images (None: none)
    leakage: float | None = None  # trainer.leakage: mean pixel change (0-255) without the trigger

    def to_json(self) -> dict[str, Any]:
        return {
            key: str(value) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointInfo:
        def path(key: str) -> Path | None:
            return Path(data[key]) if data.get(key) else None

        return cls(
            step=int(data["step"]),
            file=Path(data["file"]),
            diffusers_dir=path("diffusers_dir"),
            grid_path=path("grid_path"),
            state_path=path("state_path"),
            loss=float(data["loss"]),
            heldout_loss=(
                float(data["heldout_loss"]) if data.get("heldout_loss") is not None else None
            ),
            leakage=float(data["leakage"]) if data.get("leakage") is not None else None,
        )


@dataclass
class TrainResult:
    """What a finished (or cancelled) job produced."""

    status: Literal["completed", "cancelled"]
    step: int
    total: int
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    seconds: float = 0.0
    steps_per_second: float = 0.0
    resumed_from: int | None = None
    nan_skipped: int = 0
    comparison_grid: Path | None = None
    loss_curve: Path | None = None
    heldout_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    overfit_after: int | None = None  # see trainer.heldout.overfitting_from
    suggested_step: int | None = None  # see trainer.leakage.suggest

    @property
    def final(self) -> CheckpointInfo | None:
        """The newest checkpoint (the last step's when the job completed)."""
        return self.checkpoints[-1] if self.checkpoints else None

    def to_json(self) -> dict[str, Any]:
        """The CLI's `--json` summary."""
        return {
            "status": self.status,
            "step": self.step,
            "total": self.total,
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "final": self.final.to_json() if self.final else None,
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps_per_second, 4),
            "resumed_from": self.resumed_from,
            "nan_skipped": self.nan_skipped,
            "comparison_grid": str(self.comparison_grid) if self.comparison_grid else None,
            "loss_curve": str(self.loss_curve) if self.loss_curve else None,
            "heldout_losses": [[step, loss] for step, loss in self.heldout_losses],
            "overfit_after": self.overfit_after,
            "suggested_step": self.suggested_step,
        }


class TrainCallbacks:
    """Base class with no-op hooks; override what you need. Hooks must be quick (no I/O waits)."""

    def on_start(self, step: int, total: int) -> None:
        """Training begins at `step` (0, or the resumed checkpoint's step)."""

    def on_resumed(self, checkpoints: list[CheckpointInfo]) -> None:
        """After a resume, every checkpoint the saved state holds: a crash may have come
        between saving one and `on_checkpoint`, so the receiver records any it lacks."""

    def on_progress(self, progress: Progress) -> None:
        """After each optimizer step."""

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """After a checkpoint's file, grid and resume state are on disk."""

    def on_nan_skipped(self, step: int, count: int) -> None:
        """A step's loss or gradients were NaN/inf and the update was skipped (`count` in a row)."""

    def on_done(self, result: TrainResult) -> None:
        """Once, when training completed or stopped on request."""

    def should_stop(self) -> bool:
        """Polled before every step; True stops the job cleanly (result status 'cancelled')."""
        return False

    def keep_progress_on_stop(self) -> bool:
        """Asked when `should_stop` said True: save a resume state at the current step first
        (a worker shutting down, not a member cancelling)."""
        return False


class RecordingCallbacks(TrainCallbacks):
    """Keeps every event in lists: for tests and the CLI's JSON summary."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.progress: list[Progress] = []
        self.checkpoints: list[CheckpointInfo] = []
        self.nan_skipped: list[tuple[int, int]] = []
        self.results: list[TrainResult] = []
        self.stop_at = stop_at

    def on_progress(self, progress: Progress) -> None:
        self.progress.append(progress)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)

    def on_nan_skipped(self, step: int, count: int) -> None:
        self.nan_skipped.append((step, count))

    def on_done(self, result: TrainResult) -> None:
        self.results.append(result)

    def should_stop(self) -> bool:
        return (
            self.stop_at is not None
            and bool(self.progress)
            and self.progress[-1].step >= self.stop_at
        )
