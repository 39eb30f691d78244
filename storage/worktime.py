"""The worker's one way to take work: the fairest waiting item, training job or render request
(`storage.fair`), claimed atomically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from storage import jobs
from storage.db import session_scope
from storage.fair import KINDS, ranked
from storage.requests import RENDER_MODELS, take

CLAIM_ROUNDS = 5
"""Candidate lists tried before giving up for this poll (each is only passed over when other
workers took all its items at the same moment)."""


@dataclass(frozen=True)
class Claimed:
    """What a worker took: `kind` is 'job' or a render table, `row` its claimed row (whose
    `attempts` is the claim's fencing token)."""

    kind: str
    row: Any


def claim_next(engine: Engine, worker_id: str) -> Claimed | None:
    """Take the fairest waiting item of any kind; None when nothing waits."""
    for _ in range(CLAIM_ROUNDS):
        with session_scope(engine) as session:
            candidates = ranked(session, KINDS)
            if not candidates:
                return None
            for kind, row_id in candidates:
                if kind == "job":
                    row = jobs.take(session, row_id, worker_id)
                else:
                    row = take(session, RENDER_MODELS[kind], row_id, worker_id)
                if row is not None:
                    return Claimed(kind, row)
    return None
