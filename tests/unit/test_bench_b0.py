"""B0's plumbing on the tiny model: seeded workloads, exact token accounting in both arms, and
the row it reports. The real benchmark (SmolLM2, minutes) runs with `python -m bench`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import b0_engine
from bench.engine_workloads import Plan, Workload, WorkloadSpec, hf_computed_tokens

TINY_PLAN = Plan(
    is_quick=True,
    workloads=(WorkloadSpec("a", 5, (3, 20), (1, 6)), WorkloadSpec("b", 2, (8, 8), (4, 4))),
    hf_batch_size=2,
    repeats=1,
    dtypes=("float32",),
)


def make_workload(output_lens: list[int], input_len: int = 4) -> Workload:
    spec = WorkloadSpec("t", len(output_lens), (input_len, input_len), (1, 9))
    return Workload(spec, [[7] * input_len for _ in output_lens], output_lens)


def test_workload_is_seeded_and_within_its_ranges():
    spec = WorkloadSpec("a", 64, (32, 512), (16, 256))
    first, second = spec.draw(vocab_size=100), spec.draw(vocab_size=100)
    assert first == second
    assert all(32 <= len(p) <= 512 for p in first.prompts)
    assert all(16 <= n <= 256 for n in first.output_lens)
    assert all(0 <= t < 100 for p in first.prompts for t in p)


def test_hf_computes_every_row_of_a_batch_to_its_longest_output():
    # batches [1, 5] and [2, 2]: 5 * 2 + 2 * 2 tokens computed for 10 requested
    workload = make_workload([1, 5, 2, 2])
    assert hf_computed_tokens(workload, batch_size=2) == 14
    assert workload.num_output_tokens == 10


def test_page_count_holds_every_full_context():
    # contexts of 4 + 13 = 17 and 4 + 12 = 16 tokens: 2 pages and 1 page of 16
    assert make_workload([13, 12]).num_pages(page_size=16) == 3


@pytest.mark.timeout(120)
def test_both_arms_run_the_tiny_plan_and_count_exactly_the_requested_tokens(tiny_dir: Path):
    rows = b0_engine.measure_dtype(tiny_dir, "float32", TINY_PLAN)
    assert set(rows) == {"a", "b"}
    assert rows["b"]["num_output_tokens"] == 2 * 4
    assert rows["b"]["hf_computed_output_tokens"] == 2 * 4
    for row in rows.values():
        assert row["pdserve_tok_s"]["median"] > 0 and row["hf_tok_s"]["median"] > 0
        assert row["hf_computed_output_tokens"] >= row["num_output_tokens"]
