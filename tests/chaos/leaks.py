"""What a chaos run left behind and how it ended: the leak count of a quiesced cluster, and
the ScenarioResult (report.py) folded from the run's outcomes, its leaks and its faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from pdserve.v1 import generation_pb2
from tests.chaos.load import Outcome
from tests.chaos.report import ScenarioResult


@dataclass(frozen=True, slots=True)
class Leaks:
    """What live workers still hold after quiesce, and KV segments of dead ones."""

    pages: int = 0
    leases: int = 0
    transfers: int = 0
    integrity_failures: list[str] = field(default_factory=list)  # worker ids
    held: dict[str, str] = field(default_factory=dict)  # worker id -> what it still holds


def scenario_result(
    scenario: str,
    outcomes: list[Outcome],
    leaks: Leaks,
    seconds: float,
    faults_injected: int = 0,
    faults_verified: int = 0,
) -> ScenarioResult:
    """The pass bar's counts; the scenario adds its own invariants to extra_failures."""
    result = ScenarioResult(
        scenario,
        requests=len(outcomes),
        leaked_pages=leaks.pages,
        leaked_leases=leaks.leases,
        leaked_transfers=leaks.transfers,
        faults_injected=faults_injected,
        faults_verified=faults_verified,
        seconds=seconds,
    )
    for outcome in outcomes:
        if outcome.code is None:
            result.without_status += 1
        elif outcome.ok:
            result.ok += 1
            result.corrupt_outputs += not outcome.matches_reference
        else:
            result.failed_by_status[outcome.status_key] += 1
            result.unknown_errors += outcome.code == grpc.StatusCode.UNKNOWN.name
    result.extra_failures += [f"{wid} still holds {held}" for wid, held in leaks.held.items()]
    return result


def holds_something(info: generation_pb2.WorkerInfo | None) -> bool:
    if info is None:
        return True
    held = info.request_pages or info.leases_outstanding or info.transfers_in_flight
    return bool(held) or not info.integrity_ok


def leaks_of(busy: dict[str, generation_pb2.WorkerInfo | None], orphans: list[str]) -> Leaks:
    held = {wid: _held(info) for wid, info in busy.items()}
    if orphans:
        held["/dev/shm"] = f"{len(orphans)} KV segments of dead workers: {orphans[:4]}"
    infos = [info for info in busy.values() if info is not None]
    return Leaks(
        pages=sum(i.request_pages for i in infos),
        leases=sum(i.leases_outstanding for i in infos),
        transfers=sum(i.transfers_in_flight for i in infos) + len(orphans),
        integrity_failures=[i.worker_id for i in infos if not i.integrity_ok],
        held=held,
    )


def _held(info: generation_pb2.WorkerInfo | None) -> str:
    if info is None:
        return "no answer to GetStats"
    return (
        f"pages={info.request_pages} leases={info.leases_outstanding} "
        f"transfers={info.transfers_in_flight} integrity_ok={info.integrity_ok}"
    )
