"""Stopping a background task (router/tasks.py): cancelled until it ends, within a deadline."""

from __future__ import annotations

import asyncio
import logging
import time

from router.tasks import stop_task


async def test_a_task_that_outlives_every_cancel_is_left_after_the_timeout_and_logged(caplog):
    """Stopping never hangs its caller: after `timeout_s` the task is left behind, and said so."""
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    started_s = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="router.tasks"):
        await stop_task(task, timeout_s=0.6)
    assert 0.6 <= time.monotonic() - started_s < 2.0
    assert not task.done()
    assert [r.getMessage() for r in caplog.records] == [
        "task stubborn still running 0.6 s after its cancel"
    ]
    released.set()
    await task
