"""Per-event retry bookkeeping for the outbox: each event waits out its own backoff, so one
event that keeps failing (a poison event) never holds back any other job's messages, and after
a bounded number of tries it is given up on, out loud."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import discord

from bot import delivery, render
from bot.db import run_db
from storage.events import event_nonce, mark_attempted, mark_delivered, record_failed_try
from storage.models import Event

log = logging.getLogger(__name__)


@dataclass
class Retries:
    """Tries and next-try times per key (an event id); exponential backoff with a cap. The
    outbox passes each event's persisted try count, so a restart grants no fresh round."""

    base_seconds: float = 5.0
    cap_seconds: float = 300.0
    max_tries: int = 8
    tries: dict[Hashable, int] = field(default_factory=dict)
    retry_at: dict[Hashable, float] = field(default_factory=dict)

    def ready(self, key: Hashable) -> bool:
        """Whether the key's backoff (if any) has passed."""
        return self.retry_at.get(key, 0.0) <= time.monotonic()

    def failed(self, key: Hashable, tries: int | None = None) -> int:
        """Count a failed try and schedule the next; returns how many tries failed so far.

        `tries`: the count the database keeps (`storage.events.record_failed_try`), which
        survives a restart; without it, the count since this process started."""
        count = self.tries[key] = tries if tries is not None else self.tries.get(key, 0) + 1
        delay = min(self.base_seconds * 2 ** (count - 1), self.cap_seconds)
        self.retry_at[key] = time.monotonic() + delay
        return count

    def exhausted(self, key: Hashable) -> bool:
        return self.tries.get(key, 0) >= self.max_tries

    def done(self, key: Hashable) -> None:
        self.tries.pop(key, None)
        self.retry_at.pop(key, None)


def describe_error(error: BaseException) -> str:
    """Why a post failed, in words a member can read (no tokens, no paths)."""
    if isinstance(error, discord.Forbidden):
        return "Discord refused it: a permission is missing"
    if isinstance(error, discord.NotFound):
        return "the channel or message is gone"
    if isinstance(error, discord.HTTPException):
        return f"Discord answered {error.status}"
    return f"an internal error ({type(error).__name__})"


async def deliver_loose(
    notifier: Any,
    event: Event,
    say: Callable[[Event], Awaitable[int | None]],
    what: str,
    source: str,
) -> None:
    """Say a job-less event (/generate, /iterate, /compare) with the same isolation and bounded
    tries as a job's events; giving up is said in the member's channel (or logged)."""
    assert event.id is not None
    retries: Retries = notifier.retries
    if not retries.ready(event.id):
        return
    await run_db(mark_attempted, notifier.engine, event.id)
    try:
        message_id = await say(event)
    except Exception as error:
        tries = retries.failed(event.id, await run_db(record_failed_try, notifier.engine, event.id))
        log.warning(
            "%s event %s failed (try %s): %s",
            source,
            event.id,
            tries,
            describe_error(error),
            exc_info=not isinstance(error, discord.HTTPException),
        )
        if not retries.exhausted(event.id):
            return
        text = render.undeliverable_text(None, f"{what} ({source})", describe_error(error), tries)
        log.error("giving up on %s event %s: %s", source, event.id, text)
        p = event.payload
        await delivery.tell_somewhere(
            notifier.bot, [p.get("thread_id"), p.get("channel_id")], text, f"{event_nonce(event)}-x"
        )
        message_id = None
    await run_db(mark_delivered, notifier.engine, event.id, message_id)
    retries.done(event.id)
