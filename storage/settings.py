"""The shared core of the one validated settings object, read from `ATELIER_*` env vars and an
optional TOML file: data folder, database, secrets, limits, base models, and the loading,
validation and masking every section uses.

Nested sections use `__` in environment variables, e.g. `ATELIER_LIMITS__MAX_ZIP_BYTES=500000000`.
The file is `atelier.toml` in the working directory, or the path in `ATELIER_CONFIG`. Sections
that configure one package live with it (`bot.settings`, `trainer.settings`); the process-wide
object is `atelier.settings.AtelierSettings`, composed of all of them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

TINY_MODEL = "tiny"
"""Catalogue name of the built-in SD-1-shaped model, built from configs on first use."""

TINY_SDXL_MODEL = "tiny-sdxl"
TINY_FLUX_MODEL = "tiny-flux"
TINY_ZIMAGE_MODEL = "tiny-zimage"

SettingsT = TypeVar("SettingsT", bound="Settings")

MIN_LINK_SECRET = 32
"""Shortest accepted `link_secret`: it is an HMAC key, and a short one can be guessed."""


class SettingsError(RuntimeError):
    """Raised with one human-readable line naming the bad setting."""


class BaseModelEntry(BaseModel):
    """One base model a member may train on."""

    model_config = {"extra": "forbid"}

    path: str = Field(
        description="Local diffusers folder or single-file .safetensors (FLUX.1: the "
        "transformer file, with a diffusers folder beside it), or 'builtin:tiny'."
    )
    architecture: Literal["sd1", "sdxl", "flux1", "zimage"] = "sd1"
    description: str = ""
    quantize: Literal["none", "int8", "nf4"] = Field(
        "none",
        description="FLUX.1 / Z-Image: LoRA jobs on this model train over its transformer "
        "quantised with bitsandbytes (the job's quantize_base), to fit a GPU with less memory; "
        "DoRA jobs on it are refused (DoRA needs the weights unquantised).",
    )

    @model_validator(mode="after")
    def _quantizable(self) -> BaseModelEntry:
        if self.quantize != "none" and self.architecture not in ("flux1", "zimage"):
            raise ValueError(
                f"quantize is for FLUX.1 and Z-Image models; a {self.architecture} model trains "
                'unquantised (set quantize = "none")'
            )
        return self


class Limits(BaseModel):
    """Limits on what members may upload and run; read by storage (ingest) and the bot."""

    model_config = {"extra": "forbid"}

    max_zip_bytes: int = Field(200 * 1024**2, gt=0, description="Largest zip accepted (download).")
    max_uncompressed_bytes: int = Field(2 * 1024**3, gt=0, description="Total unpacked size.")
    max_entry_bytes: int = Field(100 * 1024**2, gt=0, description="Largest single file in a zip.")
    max_files: int = Field(2000, gt=0, description="Most entries in a zip.")
    max_compression_ratio: float = Field(100.0, gt=1, description="Zip-bomb guard per entry.")
    max_image_pixels: int = Field(64 * 1024 * 1024, gt=0, description="Decompression-bomb guard.")
    min_image_side: int = Field(64, gt=0, description="Smaller images are skipped.")
    max_images: int = Field(1000, gt=0, description="Most images in a dataset.")
    jobs_per_member: int = Field(2, ge=1, description="Queued + running jobs per member.")
    renders_per_member: int = Field(
        8,
        ge=1,
        description="Queued + running render requests per member (each /generate image, "
        "/iterate start, /compare); they wait in the same fair order as training.",
    )
    uploads_per_member: int = Field(1, ge=1, description="Dataset uploads in progress at once.")
    member_storage_bytes: int = Field(
        2 * 1024**3, gt=0, description="Dataset bytes one member's uploads may keep (per guild)."
    )
    guild_storage_bytes: int = Field(
        20 * 1024**3, gt=0, description="Dataset bytes one guild's uploads may keep."
    )
    concurrent_ingests: int = Field(4, ge=1, description="Uploads the bot ingests at once.")
    ingest_processes: int = Field(0, ge=0, description="Image-decoding processes; 0: one a core.")
    ingest_process_memory_bytes: int = Field(
        1536 * 1024**2, ge=0, description="Address-space limit of each decoding process; 0: none."
    )
    min_free_disk_gb: float = Field(
        5.0, ge=0, description="New work is refused while the data folder has less free space."
    )
    failed_job_days: float = Field(
        7.0, ge=0, description="A failed job's files are kept this long for /job retry."
    )


BUILTIN_MODELS: dict[str, BaseModelEntry] = {
    TINY_MODEL: BaseModelEntry(path="builtin:tiny", description="Built-in tiny SD-1 model"),
    TINY_SDXL_MODEL: BaseModelEntry(
        path="builtin:tiny-sdxl", architecture="sdxl", description="Built-in tiny SDXL model"
    ),
    TINY_FLUX_MODEL: BaseModelEntry(
        path="builtin:tiny-flux", architecture="flux1", description="Built-in tiny FLUX.1 model"
    ),
    TINY_ZIMAGE_MODEL: BaseModelEntry(
        path="builtin:tiny-zimage", architecture="zimage", description="Built-in tiny Z-Image model"
    ),
    "toy": BaseModelEntry(
        path="builtin:toy", description="Built-in toy model that draws coloured shapes (64 px)"
    ),
}


class Settings(BaseSettings):
    """What every process shares (storage reads it too). Safe defaults: SQLite in ./data and the
    built-in tiny model. The bot's `discord` and the worker's `worker` sections are added by
    `bot.settings` and `trainer.settings`; `atelier.settings` composes all of them."""

    model_config = SettingsConfigDict(
        env_prefix="ATELIER_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file="atelier.toml",
    )

    data_dir: Path = Field(Path("data"), description="Where datasets, jobs and models live.")
    database_url: str | None = Field(
        None, repr=False, description="Default: SQLite file in data_dir. A secret: never shown."
    )
    discord_token: SecretStr | None = Field(
        None, validation_alias="DISCORD_TOKEN", description="Bot token; environment only."
    )
    link_secret: SecretStr | None = Field(
        None,
        description=f"Signs download links (at least {MIN_LINK_SECRET} characters). Unset: one is "
        "made on first start and kept in data_dir/link_secret (mode 600).",
    )
    base_models: dict[str, BaseModelEntry] = Field(
        default_factory=lambda: dict(BUILTIN_MODELS),
        description="Name → local model. The built-in models are always there.",
    )
    default_base_model: str = TINY_MODEL
    vote_window_hours: float = Field(24.0, gt=0)
    keep_checkpoints: int = Field(1, ge=1, description="Checkpoints kept after finalize.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    limits: Limits = Field(default_factory=Limits)

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("link_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("link_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_LINK_SECRET:
            raise ValueError(
                f"needs at least {MIN_LINK_SECRET} characters (e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value

    @field_validator("base_models", mode="after")
    @classmethod
    def _keep_builtins(cls, value: dict[str, BaseModelEntry]) -> dict[str, BaseModelEntry]:
        return {**BUILTIN_MODELS, **value}

    @model_validator(mode="after")
    def _default_model_exists(self) -> Settings:
        if self.default_base_model not in self.base_models:
            raise ValueError(f"'{self.default_base_model}' is not in base_models")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("ATELIER_CONFIG", "atelier.toml")
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        return (init_settings, env_settings, toml)

    @property
    def db_url(self) -> str:
        """The database URL, defaulting to a SQLite file inside the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'atelier.db').resolve()}"

    @property
    def db_url_masked(self) -> str:
        """The database URL with its password replaced by `***` (for logs and messages)."""
        return mask_url(self.db_url)

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^\s]*)@", re.I)


def mask_url(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` in it replaced by `***`."""
    return _PASSWORD_IN_URL.sub(lambda m: f"{m.group('head')}***@", text)


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"invalid setting '{where}': {message}" if where else f"invalid settings: {message}"


def validate_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """`cls` built from env + file + overrides; a bad value raises one clear `SettingsError`.

    Entry points call it once, through `atelier.settings.get_settings`, with the composed class,
    so every process validates every section."""
    try:
        return cls(**overrides)
    except ValidationError as error:
        raise SettingsError(_explain(error)) from None
