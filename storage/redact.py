"""Keeping secrets (the bot token, database passwords, the link secret) out of logs and
tracebacks: every log record and every crash message passes through `redact`."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from urllib.parse import unquote

from storage.settings import Settings, mask_url

MASK = "***"


def secret_strings(settings: Settings) -> list[str]:
    """The literal secrets of `settings` (a database password both %-encoded and decoded)."""
    found: list[str] = []
    if settings.discord_token is not None:
        found.append(settings.discord_token.get_secret_value())
    if settings.link_secret is not None:
        found.append(settings.link_secret.get_secret_value())
    if settings.database_url:
        from sqlalchemy.engine import make_url

        try:
            password = make_url(settings.database_url).password
        except Exception:  # an unparsable URL: mask_url still hides its password part
            password = None
        if password:
            found += [str(password), unquote(str(password))]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords and the given secret strings replaced by `***`."""
    text = mask_url(text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and traceback with `redact` before any handler sees it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info:
            record.exc_text = redact(
                "".join(traceback.format_exception(*record.exc_info)).rstrip("\n"), self.secrets
            )
            record.exc_info = None
        return True


def install(settings: Settings | None = None) -> None:
    """Put a `RedactingFilter` on every handler of the root logger (call after configuring it)."""
    secrets = secret_strings(settings) if settings is not None else []
    for handler in logging.getLogger().handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, RedactingFilter)]
        handler.addFilter(RedactingFilter(secrets))


def describe_crash(error: BaseException, settings: Settings | None = None) -> str:
    """A traceback with secrets masked, for a command that crashed."""
    secrets = secret_strings(settings) if settings is not None else []
    return redact("".join(traceback.format_exception(error)), secrets)
