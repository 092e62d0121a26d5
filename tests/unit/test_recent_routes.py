"""Recent routes: prefixes credited to the worker computing them until their events arrive."""

from __future__ import annotations

from router.recent_routes import RecentRoutes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_routed_prefix_is_credited_by_leading_pages_until_it_expires():
    clock = Clock()
    routes = RecentRoutes(ttl_s=2.0, clock=clock)
    routes.record("p0", [b"a", b"b", b"c"])
    assert routes.matched([b"a", b"b", b"x"]) == {"p0": 2}
    assert routes.matched([b"b", b"c"]) == {"p0": 2}
    assert routes.matched([b"x", b"a"]) == {}
    clock.now = 2.0
    assert routes.matched([b"a"]) == {}


def test_two_workers_are_credited_separately_and_a_newer_route_refreshes():
    clock = Clock()
    routes = RecentRoutes(ttl_s=2.0, clock=clock)
    routes.record("p0", [b"a", b"b"])
    clock.now = 1.5
    routes.record("p1", [b"a"])
    assert routes.matched([b"a", b"b"]) == {"p0": 2, "p1": 1}
    clock.now = 2.5
    assert routes.matched([b"a", b"b"]) == {"p1": 1}


def test_capacity_drops_the_oldest_hashes():
    routes = RecentRoutes(capacity=2)
    routes.record("p0", [b"a", b"b", b"c"])
    assert routes.matched([b"a"]) == {}
    assert routes.matched([b"b", b"c"]) == {"p0": 2}
