"""Factories shared by the PagePool tests: a pool that records its events, and cached pages."""

from __future__ import annotations

from engine.page_pool import PageEvent, PageEventKind, PagePool

STORED, REMOVED = PageEventKind.STORED, PageEventKind.REMOVED


def h(i: int) -> bytes:
    return f"hash-{i}".encode()


def make_pool(num_pages: int = 4) -> tuple[PagePool, list[PageEvent]]:
    events: list[PageEvent] = []
    return PagePool(num_pages, page_size=16, on_event=events.append), events


def cache_new_pages(pool: PagePool, hashes: list[bytes]) -> list[int]:
    """Allocate one page per hash and register each (a request that computed its prompt)."""
    page_ids = pool.allocate(len(hashes))
    for page_id, page_hash in zip(page_ids, hashes, strict=True):
        assert pool.cache_page(page_id, page_hash)
    return page_ids
