"""Every database call from the bot runs in a worker thread, never on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def run_db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking (SQLAlchemy, file system) call in the default thread pool."""
    return await asyncio.to_thread(fn, *args, **kwargs)
