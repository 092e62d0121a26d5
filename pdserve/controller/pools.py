"""The two pools the controller sizes, a typed pair of one value per pool, and a pool's
Deployment status as the controller sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from kv_transfer.pages import Role

POOLS = (Role.PREFILL, Role.DECODE)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ByPool(Generic[T]):
    """One value per pool (replicas, capacities, decisions, names), looked up by role."""

    prefill: T
    decode: T

    def of(self, pool: Role) -> T:
        if pool is Role.PREFILL:
            return self.prefill
        if pool is Role.DECODE:
            return self.decode
        raise ValueError(f"pool: the controller sizes prefill and decode, not {pool}")


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One pool's Deployment as last read: the size asked for and what its pods report."""

    replicas: int  # spec.replicas: the size asked for, what the controller changes
    pod_replicas: int  # status.replicas: pods that exist (more than asked: old ones leaving)
    ready_replicas: int  # pods serving: the workers whose throughput a sample measures
    updated_replicas: int  # pods of the current template
    unavailable_replicas: int
    terminating_replicas: int  # pods being deleted (preStop drain); 0 where not reported
    is_observed: bool  # the Deployment controller has seen the latest spec

    @property
    def is_pending(self) -> bool:
        """A rollout or scale still running: pods to start, replace or drain. What the pool
        measures now is not what it will measure once settled."""
        return (
            not self.is_observed
            or self.pod_replicas != self.replicas
            or self.ready_replicas < self.replicas
            or self.updated_replicas < self.replicas
            or self.unavailable_replicas > 0
            or self.terminating_replicas > 0
        )
