"""What the member chose for this dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from storage.ingest.errors import IngestError

Method = Literal["lora", "dora", "embedding"]
METHODS: tuple[str, ...] = ("lora", "dora", "embedding")
CONCEPT_METHODS: tuple[str, ...] = ("lora", "dora")
"""Concept models learn from captions; embeddings (textual inversion) need none."""

MIN_RESOLUTION = 64  # the toy model trains at 64 px
MAX_RESOLUTION = 2048


@dataclass(frozen=True)
class IngestOptions:
    """Options that change the stored dataset (and therefore its id)."""

    trigger: str = ""
    caption_prefix: str = ""
    method: Method = "lora"
    resolution: int = 512

    def validate(self) -> None:
        """Raise `IngestError` for an option no ingest can honour."""
        if self.method not in METHODS:
            raise IngestError(f"unknown method '{self.method}'; use lora, dora or embedding")
        if not MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION or self.resolution % 64:
            raise IngestError(
                f"resolution {self.resolution} is not a multiple of 64 between "
                f"{MIN_RESOLUTION} and {MAX_RESOLUTION}"
            )

    def normalized(self) -> IngestOptions:
        """The same options with whitespace collapsed, so ' ohwx ' and 'ohwx' hash alike."""
        return IngestOptions(
            trigger=" ".join(self.trigger.split()),
            caption_prefix=" ".join(self.caption_prefix.split()),
            method=self.method,
            resolution=self.resolution,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
