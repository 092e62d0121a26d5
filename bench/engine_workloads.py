"""B0's workloads: seeded random prompts and output lengths, and the plans that size a run.

A WorkloadSpec draws the same Workload every time (the seed is B0's id, SEED and the spec's
name), so every arm, round and dtype sees identical requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

SEED = 0


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Request lengths drawn uniformly from the inclusive ranges."""

    name: str
    num_requests: int
    input_len: tuple[int, int]
    output_len: tuple[int, int]

    def draw(self, vocab_size: int) -> Workload:
        rng = random.Random(f"B0-{SEED}-{self.name}")
        input_lens = [rng.randint(*self.input_len) for _ in range(self.num_requests)]
        output_lens = [rng.randint(*self.output_len) for _ in range(self.num_requests)]
        prompts = [[rng.randrange(vocab_size) for _ in range(n)] for n in input_lens]
        return Workload(self, prompts, output_lens)


@dataclass(frozen=True, slots=True)
class Workload:
    spec: WorkloadSpec
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)

    def num_pages(self, page_size: int) -> int:
        """Pages that hold every request's full context at once."""
        pairs = zip(self.prompts, self.output_lens, strict=True)
        return sum(-(-(len(p) + n) // page_size) for p, n in pairs)


@dataclass(frozen=True, slots=True)
class Plan:
    is_quick: bool
    workloads: tuple[WorkloadSpec, WorkloadSpec]  # (a) mixed, (b) uniform
    hf_batch_size: int
    repeats: int
    dtypes: tuple[str, ...]
    # Also run every timed workload once, discarded, before the rounds: on a GPU the first
    # run of a shape pays Triton compiles, cuBLAS heuristics and allocator growth.
    warm_workloads: bool = False


FULL = Plan(
    is_quick=False,
    workloads=(
        WorkloadSpec("a", 64, (32, 512), (16, 256)),
        WorkloadSpec("b", 32, (128, 128), (128, 128)),
    ),
    hf_batch_size=32,
    repeats=3,
    dtypes=("float32", "bfloat16"),
)
# Quick keeps (a)'s shape: two HF batches, lengths spread within each.
QUICK = Plan(
    is_quick=True,
    workloads=(
        WorkloadSpec("a", 16, (16, 128), (8, 64)),
        WorkloadSpec("b", 8, (64, 64), (32, 32)),
    ),
    hf_batch_size=8,
    repeats=1,
    dtypes=("float32",),
)
WARMUP = WorkloadSpec("warmup", 4, (16, 64), (4, 8))


def plan_for(quick: bool, device_type: str) -> Plan:
    """QUICK or FULL as they are on the CPU. On CUDA bfloat16 comes first (the GPU engine's
    dtype and the headline), float32 beside it in a full run, every workload warmed once."""
    plan = QUICK if quick else FULL
    if device_type != "cuda":
        return plan
    dtypes = ("bfloat16",) if quick else ("bfloat16", "float32")
    return replace(plan, dtypes=dtypes, warm_workloads=True)


def hf_computed_tokens(workload: Workload, batch_size: int) -> int:
    """Tokens HF computes: every row of a static batch runs to that batch's longest output."""
    lens = workload.output_lens
    return sum(
        max(lens[i : i + batch_size]) * len(lens[i : i + batch_size])
        for i in range(0, len(lens), batch_size)
    )


def describe_lengths(spec: WorkloadSpec) -> str:
    return f"{spec.num_requests} requests, in U{list(spec.input_len)}, out U{list(spec.output_len)}"
