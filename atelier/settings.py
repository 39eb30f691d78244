"""The process-wide settings: every section composed into one validated object.

Each package types against its own class (`storage.settings.Settings`, `bot.settings.BotSettings`,
`trainer.settings.TrainerSettings`); only entry points build settings, and they build this class,
so every process validates the whole file and environment (a typo in the worker's section stops
the bot too, and neither rejects the other's section)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from bot.settings import BotSettings
from storage.settings import validate_settings
from trainer.settings import TrainerSettings


class AtelierSettings(TrainerSettings, BotSettings):
    """Atelier's configuration: the shared core with the `discord` and `worker` sections."""


def load_settings(**overrides: Any) -> AtelierSettings:
    """Build settings from env + file + overrides; a bad value raises one clear `SettingsError`."""
    return validate_settings(AtelierSettings, **overrides)


@lru_cache(maxsize=1)
def get_settings() -> AtelierSettings:
    """The process-wide settings, created once."""
    return load_settings()
