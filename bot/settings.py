"""The bot's section of the settings (`discord:` in the file, `ATELIER_DISCORD__…` in the
environment) and the settings class the bot's code types against.

The bot never builds settings itself: its entry point (`atelier bot`) gets the composed
`atelier.settings.AtelierSettings`, so a bot-only process validates the worker's section too."""

from __future__ import annotations

from pydantic import BaseModel, Field

from storage.settings import Settings


class DiscordSettings(BaseModel):
    """Discord-side behaviour (the token itself is top-level `DISCORD_TOKEN`)."""

    model_config = {"extra": "forbid"}

    allowed_guilds: list[int] = Field(default_factory=list, description="Empty: any guild.")
    sync_guild: int | None = Field(None, description="Sync commands to this guild only (dev).")
    link_host: str = Field("127.0.0.1", description="Bind address of the download-link server.")
    link_port: int = Field(8765, ge=0, le=65535)
    public_url: str = Field("http://127.0.0.1:8765", description="Base URL members can reach.")
    link_ttl_hours: float = Field(24.0, gt=0)
    progress_edit_seconds: float = Field(5.0, ge=1.0, description="Min seconds between edits.")
    allow_insecure_dataset_urls: bool = Field(
        False, description="Tests/demo only: also accept http://127.0.0.1 dataset links."
    )


class BotSettings(Settings):
    """The shared settings plus the bot's `discord` section."""

    discord: DiscordSettings = Field(default_factory=DiscordSettings)
