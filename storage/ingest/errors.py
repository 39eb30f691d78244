"""The one exception ingest raises to its callers."""

from __future__ import annotations


class IngestError(Exception):
    """A refused upload. `message` is one line a non-engineer understands.

    Example: "the zip holds 12,000 files; the limit is 2,000".
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SkipFile(Exception):
    """One file is left out of the dataset (the ingest goes on); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
