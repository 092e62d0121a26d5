"""The request table: bounded admission, unique in-flight ids, Abort by id."""

from __future__ import annotations

import asyncio

import pytest

from router.errors import DuplicateRequestId, Overloaded
from router.requests import RequestTable


async def test_admission_is_refused_beyond_the_cap_and_reopens_after():
    table = RequestTable(max_in_flight=2, retry_after_s=0.5)
    with table.admitted("a"), table.admitted("b"):
        with pytest.raises(Overloaded) as caught:
            with table.admitted("c"):
                pass
        assert caught.value.retry_after_s == 0.5
        assert table.num_in_flight == 2
        table.check_integrity()
    with table.admitted("c"):
        assert table.num_in_flight == 1


async def test_an_id_in_flight_cannot_be_admitted_twice():
    table = RequestTable(max_in_flight=8, retry_after_s=0.5)
    with table.admitted("same"):
        with pytest.raises(DuplicateRequestId):
            with table.admitted("same"):
                pass
    with table.admitted("same"):  # free again once the first ended
        pass


async def test_abort_cancels_the_admitted_task_once():
    table = RequestTable(max_in_flight=8, retry_after_s=0.5)
    started = asyncio.Event()

    async def handler() -> None:
        with table.admitted("r1"):
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(handler())
    await started.wait()
    assert table.abort("r1") and table.abort("r1")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert table.num_in_flight == 0
    assert not table.abort("r1")
