"""The router's request lifecycle: only the drawn transitions, exactly one terminal status."""

from __future__ import annotations

import grpc
import pytest

from router.lifecycle import IllegalTransition, Phase, RequestLifecycle

DISAGGREGATED = [Phase.ROUTING, Phase.PREFILLING, Phase.TRANSFERRING, Phase.DECODING]


def walk(phases: list[Phase]) -> RequestLifecycle:
    lifecycle = RequestLifecycle()
    for phase in phases:
        lifecycle.enter(phase)
    return lifecycle


@pytest.mark.parametrize(
    "phases",
    [
        DISAGGREGATED,
        [Phase.ROUTING, Phase.PREFILLING, Phase.DECODING],  # colocated
        [Phase.ROUTING, Phase.PREFILLING, Phase.ROUTING, Phase.PREFILLING],  # retry
        [Phase.ROUTING, Phase.PREFILLING, Phase.TRANSFERRING, Phase.RECOMPUTING, Phase.DECODING],
    ],
)
def test_the_drawn_paths_are_allowed(phases):
    assert walk(phases).phase is phases[-1]


@pytest.mark.parametrize(
    "phases",
    [
        [Phase.PREFILLING],
        [Phase.ROUTING, Phase.PREFILLING, Phase.TRANSFERRING, Phase.ROUTING],  # retry after #1
        [*DISAGGREGATED, Phase.RECOMPUTING],  # recompute after decode tokens
    ],
)
def test_other_transitions_are_bugs(phases):
    with pytest.raises(IllegalTransition):
        walk(phases)


def test_finish_reports_the_phase_it_ended_in_and_happens_once():
    lifecycle = walk(DISAGGREGATED[:2])
    assert lifecycle.finish(grpc.StatusCode.CANCELLED) is Phase.PREFILLING
    assert lifecycle.phase is Phase.FINISHED and lifecycle.status is grpc.StatusCode.CANCELLED
    with pytest.raises(IllegalTransition):
        lifecycle.finish(grpc.StatusCode.OK)
    with pytest.raises(IllegalTransition):
        lifecycle.enter(Phase.DECODING)
