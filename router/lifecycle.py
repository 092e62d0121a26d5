"""The life of one request in this router, as an explicit state machine.

    RECEIVED ──► ROUTING ──► PREFILLING ──► TRANSFERRING ──► DECODING ──► FINISHED
                    ▲            │  │             │   ▲           ▲
                    └── retry ───┘  │             ▼   │           │
                                    │        RECOMPUTING          │
                                    └──── colocated: its first token

  RECEIVED      decoded; being validated and admitted (no worker called yet)
  ROUTING       a route is being chosen (again, after a worker failed before token #1)
  PREFILLING    the prefill leg runs, or a colocated leg before its first token
  TRANSFERRING  token #1 is out; the decode worker pulls the KV (no decode token yet)
  RECOMPUTING   the KV was unusable: a decode worker prefills prompt + token #1 itself
  DECODING      decode tokens are streaming
  FINISHED      exactly one terminal status; reachable from every other phase
A transition not drawn here is a bug (IllegalTransition). The phase a request ended in is
what the cancellation metric counts (router/metrics.py).
"""

from __future__ import annotations

import enum

import grpc


class Phase(enum.StrEnum):
    RECEIVED = "received"
    ROUTING = "routing"
    PREFILLING = "prefilling"
    TRANSFERRING = "transferring"
    RECOMPUTING = "recomputing"
    DECODING = "decoding"
    FINISHED = "finished"


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.RECEIVED: frozenset({Phase.ROUTING}),
    Phase.ROUTING: frozenset({Phase.PREFILLING}),
    Phase.PREFILLING: frozenset({Phase.ROUTING, Phase.TRANSFERRING, Phase.DECODING}),
    Phase.TRANSFERRING: frozenset({Phase.DECODING, Phase.RECOMPUTING}),
    Phase.RECOMPUTING: frozenset({Phase.DECODING}),
    Phase.DECODING: frozenset(),
    Phase.FINISHED: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


class RequestLifecycle:
    """One request's phase; owned by its Generate handler, advanced by its RequestFlow."""

    def __init__(self) -> None:
        self.phase = Phase.RECEIVED
        self.status: grpc.StatusCode | None = None  # set once, when FINISHED

    def enter(self, phase: Phase) -> None:
        if phase is self.phase and phase is Phase.DECODING:
            return  # every decode update lands here
        if phase not in _NEXT[self.phase]:
            raise IllegalTransition(f"{self.phase} -> {phase}")
        self.phase = phase

    def finish(self, status: grpc.StatusCode) -> Phase:
        """Records the terminal status; returns the phase the request ended in."""
        if self.phase is Phase.FINISHED:
            raise IllegalTransition(f"a second terminal status {status.name} after {self.status}")
        ended_in, self.phase, self.status = self.phase, Phase.FINISHED, status
        return ended_in
