"""Discord error shapes and codes, as the real API returns them."""

from __future__ import annotations

from typing import Any

UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNKNOWN_MEMBER = 10007
UNKNOWN_GUILD = 10004
UNKNOWN_WEBHOOK = 10015
UNKNOWN_EMOJI = 10014
UNKNOWN_INTERACTION = 10062
UNKNOWN_COMMAND = 10063
MAX_COMMAND_CREATES = 30034
REQUEST_TOO_LARGE = 40005
ALREADY_ACKNOWLEDGED = 40060
MISSING_ACCESS = 50001
MISSING_PERMISSIONS = 50013
INVALID_WEBHOOK_TOKEN = 50027
INVALID_FORM_BODY = 50035
THREAD_ALREADY_CREATED = 160004
UNAUTHORIZED = 0


class DiscordError(Exception):
    """An error the emulator answers with Discord's JSON shape."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            out["errors"] = self.errors
        return out


def not_found(code: int, what: str) -> DiscordError:
    return DiscordError(404, code, f"Unknown {what}")


def forbidden() -> DiscordError:
    return DiscordError(403, MISSING_PERMISSIONS, "Missing Permissions")


def missing_access() -> DiscordError:
    return DiscordError(403, MISSING_ACCESS, "Missing Access")


def too_large() -> DiscordError:
    return DiscordError(413, REQUEST_TOO_LARGE, "Request entity too large")


def form_error(field: str, code: str, message: str) -> DiscordError:
    """400 Invalid Form Body with a nested ``errors`` object for ``field`` (dotted path)."""
    tree: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(field.split(".")):
        tree = {part: tree}
    return DiscordError(400, INVALID_FORM_BODY, "Invalid Form Body", tree)
