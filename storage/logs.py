"""One logging set-up for every entry point (every `atelier …` command: bot, worker, serve, …).

It lives in `storage` because every process imports it. discord.py's loggers stay at WARNING
or above whatever the level: at DEBUG they print gateway payloads and request URLs that hold
interaction tokens (each valid for 15 minutes). A filter also masks any token that reaches a
handler another way.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, TextIO

from storage import redact

if TYPE_CHECKING:
    from storage.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("discord", "aiohttp.access", "websockets")
_SECRETS = (
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[\w.\-]+"), r"\1<token>"),
    (re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+"""), r"\1<token>"),
)


class RedactTokens(logging.Filter):
    """Masks webhook/interaction tokens in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = message
        for pattern, replacement in _SECRETS:
            masked = pattern.sub(replacement, masked)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_handler: logging.Handler | None = None


def configure_logging(
    level: str = "INFO", stream: TextIO | None = None, settings: Settings | None = None
) -> logging.Handler:
    """Log to `stream` (stderr) at `level`; discord.py's loggers at WARNING or above; the
    secrets of `settings` (token, link secret, database password) and any URL password masked.
    Calling it again replaces the handler it added before (tests, `atelier demo`)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactTokens())
    root.addHandler(handler)
    root.setLevel(level)
    floor = max(logging.WARNING, logging.getLevelName(level))
    for name in QUIET:
        logging.getLogger(name).setLevel(floor)
    _handler = handler
    redact.install(settings)
    return handler
