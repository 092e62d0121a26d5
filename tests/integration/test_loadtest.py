"""The load tester's runner against a real router in front of mock workers: open and closed
loop, the JSON's figures, and a refused request counted by its status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kv_transfer.pages import Role
from loadtest.metrics import Slo, summarize
from loadtest.report import RunParams, write_json
from loadtest.runner import LoadPlan, run_load
from loadtest.workloads import LengthDist, LoadRequest, RandomShape, WorkloadKind, make_requests
from pdserve.cli import main
from tests.doubles.mock_worker import MockBehavior, MockWorker
from tests.doubles.router_cluster import router_cluster

SHAPE = RandomShape(49, LengthDist.uniform(16, 48), LengthDist.uniform(4, 8))
FIGURES = (
    "num_requests", "num_ok", "num_failed", "by_status", "by_reason", "duration_s",
    "request_rate", "input_tokens_per_s", "output_tokens_per_s", "ttft", "tpot", "itl", "e2e",
    "prefix_hit_ratio", "slo", "goodput", "slo_attainment",
)  # fmt: skip


def workers() -> list[MockWorker]:
    slow_decode = MockBehavior(decode_delay_s=0.002)
    return [MockWorker("p0", Role.PREFILL), MockWorker("d0", Role.DECODE, slow_decode)]


def workload() -> list[LoadRequest]:
    """49 valid requests and, 11th, one whose token id is past the vocabulary (refused)."""
    requests = make_requests(SHAPE, seed=7)
    refused = LoadRequest(len(requests), (1, 10**7), max_tokens=4)
    return requests[:10] + [refused] + requests[10:]


@pytest.mark.parametrize(
    "plan",
    [LoadPlan(rate=400, num_requests=50, seed=7), LoadPlan(concurrency=4, num_requests=50)],
    ids=["open-loop", "closed-loop"],
)
async def test_a_run_reports_every_figure_and_counts_the_refused_request(
    smollm2_dir: Path, tmp_path: Path, plan: LoadPlan
):
    async with router_cluster(smollm2_dir, workers()) as cluster:
        result = await run_load(cluster.stub, workload(), plan)
    slo = Slo(ttft_s=5.0, tpot_s=1.0)  # generous: every OK request meets it
    summary = summarize(result.records, result.duration_s, slo)
    out = tmp_path / "result.json"
    write_json(out, RunParams("loopback", WorkloadKind.RANDOM, SHAPE, plan), summary)
    document = json.loads(out.read_text())

    results = document["results"]
    assert set(results) == set(FIGURES)
    assert document["params"]["seed"] == plan.seed
    assert document["params"]["shape"]["input_len"] == {"kind": "uniform", "low": 16, "high": 48}
    assert (results["num_requests"], results["num_ok"], results["num_failed"]) == (50, 49, 1)
    assert results["by_status"] == {"OK": 49, "INVALID_ARGUMENT": 1}
    assert results["by_reason"] == {"INVALID_ARGUMENT/INVALID_ARGUMENT": 1}
    assert results["goodput"] == pytest.approx(49 / result.duration_s)
    assert results["slo_attainment"] == pytest.approx(49 / 50)
    for name in ("ttft", "tpot", "itl", "e2e"):
        assert set(results[name]) == {"count", "mean", "p50", "p90", "p99"}
        assert 0 < results[name]["p50"] <= results[name]["p99"]

    ok = [r for r in result.records if r.ok]
    expected = {r.index: r for r in workload()}
    for record in ok:
        assert record.sent_s < record.first_token_s <= record.end_s
        assert record.num_output_tokens == expected[record.index].max_tokens
        assert record.prompt_tokens == expected[record.index].prompt_len
    assert results["output_tokens_per_s"] == pytest.approx(
        sum(r.num_output_tokens for r in ok) / result.duration_s
    )


async def test_pdserve_loadtest_runs_as_a_user_would_and_writes_its_json(
    smollm2_dir: Path, tmp_path: Path
):
    out = tmp_path / "result.json"
    async with router_cluster(smollm2_dir, workers()) as cluster:
        argv = ["loadtest", "--address", f"127.0.0.1:{cluster.router.port}"]
        argv += ["--workload", "shared-prefix", "--num-groups", "2", "--prompts-per-group", "3"]
        argv += ["--prefix-len", "32", "--question-len", "8", "--output-len", "4"]
        argv += ["--concurrency", "2", "--seed", "5", "--slo", "ttft=5,tpot=1", "--out", str(out)]
        assert await asyncio.to_thread(main, argv) == 0
    document = json.loads(out.read_text())
    assert document["params"]["workload"] == "shared-prefix"
    assert document["params"]["plan"]["concurrency"] == 2
    assert document["results"]["by_status"] == {"OK": 6}
    assert document["results"]["slo"] == {"ttft_s": 5.0, "tpot_s": 1.0}


async def test_a_rate_sweep_writes_one_entry_per_rate_and_its_figure(
    smollm2_dir: Path, tmp_path: Path
):
    """`--rates 50,200`: the same 20 prompts sent once per rate; the PNG lands beside the JSON."""
    out = tmp_path / "sweep.json"
    async with router_cluster(smollm2_dir, workers()) as cluster:
        argv = ["loadtest", "--address", f"127.0.0.1:{cluster.router.port}"]
        argv += ["--input-len", "16:32", "--output-len", "4", "--num-requests", "20"]
        argv += ["--rates", "50,200", "--seed", "3", "--slo", "ttft=5,tpot=1", "--out", str(out)]
        assert await asyncio.to_thread(main, argv) == 0
    document = json.loads(out.read_text())
    assert document["params"]["rates"] == [50.0, 200.0]
    assert [entry["rate"] for entry in document["sweep"]] == [50.0, 200.0]
    for entry in document["sweep"]:
        assert set(entry["results"]) == set(FIGURES)
        assert entry["results"]["by_status"] == {"OK": 20}
        assert entry["results"]["goodput"] == pytest.approx(entry["results"]["request_rate"])
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
