"""Stopping the router's background tasks (the monitor's rounds, the page-event streams) for
good, within a deadline.

One `task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for` returns its inner
result when a cancel lands after the inner call finished but before wait_for resumed, and the
cancel is lost (CPython gh-86296, fixed in 3.12). redis-py runs every socket write of a client
with a socket timeout (the prefix index's) through wait_for, so a monitor round cancelled at
that instant polled on forever, and `RouterServer.stop`, awaiting it, never returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

# Cancelled, a task ends at its next await; one still running after this is a bug, and the
# stop goes on without it rather than hang.
STOP_TIMEOUT_S = 5.0
_RECANCEL_S = 0.25  # a lost cancel is repeated after this; a task's own cleanup is quicker


async def stop_task(task: asyncio.Task[Any], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Cancels `task` and waits for it to end, cancelling it again every `_RECANCEL_S` while
    it runs on. After `timeout_s` it gives up, logs, and leaves the task behind. The task's
    result or error is dropped: its owner is stopping it."""
    deadline_s = time.monotonic() + timeout_s
    while not task.done():
        left_s = deadline_s - time.monotonic()
        if left_s <= 0:
            log.warning("task %s still running %.1f s after its cancel", task.get_name(), timeout_s)
            return
        task.cancel()
        await asyncio.wait([task], timeout=min(_RECANCEL_S, left_s))
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not log it as never retrieved
