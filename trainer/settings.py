"""The worker's section of the settings (`worker:` in the file, `ATELIER_WORKER__…` in the
environment) and the settings class the worker's code types against. Pydantic only: no torch.

The worker never builds settings itself: its entry point (`atelier worker`) gets the composed
`atelier.settings.AtelierSettings`, so a worker validates the bot's section too."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from storage.settings import Settings


class WorkerSettings(BaseModel):
    """Trainer-process behaviour."""

    model_config = {"extra": "forbid"}

    heartbeat_seconds: float = Field(10.0, gt=0)
    stale_after_seconds: float = Field(60.0, gt=0, description="Requeue a job after this silence.")
    poll_seconds: float = Field(2.0, gt=0)
    progress_event_seconds: float = Field(5.0, ge=0)
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")

    @model_validator(mode="after")
    def _stale_after_heartbeat(self) -> WorkerSettings:
        if self.stale_after_seconds <= self.heartbeat_seconds:
            raise ValueError("stale_after_seconds must be larger than heartbeat_seconds")
        return self


class TrainerSettings(Settings):
    """The shared settings plus the worker's `worker` section."""

    worker: WorkerSettings = Field(default_factory=WorkerSettings)
