"""loadtest/sweep.py and loadtest/figures.py on hand-made results: the rates a sweep runs,
the JSON it assembles (one entry per rate, in order), and the PNGs it draws."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.figures import write_run_figure, write_sweep_figure
from loadtest.metrics import Slo
from loadtest.report import RunParams
from loadtest.runner import LoadPlan, LoadResult, RequestRecord
from loadtest.sweep import assemble, parse_rates, sweep_json, sweep_plans
from loadtest.workloads import LengthDist, RandomShape, WorkloadKind

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SLO = Slo(ttft_s=0.1, tpot_s=0.05)


def make_record(index: int, ttft_s: float, tpot_s: float, *, code: str = "OK") -> RequestRecord:
    """Sent at 0, three tokens `tpot_s` apart after the first; a failure has no tokens."""
    chunks = [ttft_s + i * tpot_s for i in range(3)] if code == "OK" else []
    return RequestRecord(
        index,
        prompt_len=10,
        max_tokens=3,
        first_token_s=chunks[0] if chunks else None,
        chunk_times_s=chunks,
        end_s=chunks[-1] if chunks else 0.5,
        num_output_tokens=len(chunks),
        code=code,
        prompt_tokens=10,
    )


def make_result(duration_s: float, *ttfts_s: float, num_failed: int = 0) -> LoadResult:
    records = [make_record(i, ttft, 0.01) for i, ttft in enumerate(ttfts_s)]
    records += [make_record(len(records) + i, 0, 0, code="UNAVAILABLE") for i in range(num_failed)]
    return LoadResult(records, duration_s)


def test_rates_parse_in_order_and_a_bad_one_is_named():
    assert parse_rates("1, 2.5,4") == (1.0, 2.5, 4.0)
    for text, named in [("1,x", "'x'"), ("1,0", "'0'"), ("inf", "'inf'"), (",", "at least")]:
        with pytest.raises(ValueError, match=named):
            parse_rates(text)


def test_each_plan_of_a_sweep_differs_only_in_its_rate():
    """Same seed, so the same prompts and the same arrival shape at every rate."""
    base = LoadPlan(rate=1.0, num_requests=20, seed=9, burstiness=2.0)
    plans = sweep_plans(base, (1.0, 3.0))
    assert [p.rate for p in plans] == [1.0, 3.0]
    assert all((p.seed, p.num_requests, p.burstiness) == (9, 20, 2.0) for p in plans)


def test_assembly_gives_one_point_per_rate_with_its_own_goodput():
    """At rate 2 one of four requests misses the 0.1 s TTFT objective; at rate 4 one fails."""
    results = [make_result(2.0, 0.01, 0.02, 0.03, 0.5), make_result(1.0, 0.01, 0.02, num_failed=1)]
    points = assemble((2.0, 4.0), results, SLO)
    assert [p.rate for p in points] == [2.0, 4.0]
    assert [p.summary.goodput for p in points] == [pytest.approx(1.5), pytest.approx(2.0)]
    assert [(p.summary.num_ok, p.summary.num_failed) for p in points] == [(4, 0), (2, 1)]
    with pytest.raises(ValueError, match="2 rates but 1 results"):
        assemble((2.0, 4.0), results[:1], SLO)


def test_sweep_json_has_one_entry_per_rate_and_records_every_rate():
    points = assemble((2.0, 4.0), [make_result(1.0, 0.01), make_result(1.0, 0.02)], SLO)
    shape = RandomShape(1, LengthDist.fixed(10), LengthDist.fixed(3))
    params = RunParams("loopback", WorkloadKind.RANDOM, shape, LoadPlan(rate=2.0, seed=4))
    document = sweep_json(params, points)
    assert document["params"]["rates"] == [2.0, 4.0]
    assert document["params"]["seed"] == 4
    assert [entry["rate"] for entry in document["sweep"]] == [2.0, 4.0]
    assert document["sweep"][1]["results"]["ttft"]["p50"] == pytest.approx(0.02)
    assert document["sweep"][0]["results"]["slo"] == {"ttft_s": 0.1, "tpot_s": 0.05}
    assert "results" not in document


def test_the_run_figure_is_a_png(tmp_path: Path):
    path = tmp_path / "run.png"
    write_run_figure(path, make_result(1.0, 0.01, 0.03, 0.02, num_failed=1).records)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_the_sweep_figure_is_a_png_with_or_without_an_slo(tmp_path: Path):
    results = [make_result(1.0, 0.01), make_result(1.0, 0.2)]
    for slo, name in [(SLO, "with.png"), (None, "without.png")]:
        write_sweep_figure(tmp_path / name, assemble((1.0, 2.0), results, slo))
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_a_run_with_no_ok_request_still_draws(tmp_path: Path):
    """Every request refused: empty CDFs, not a crash after the run is over."""
    path = tmp_path / "empty.png"
    write_run_figure(path, make_result(1.0, num_failed=2).records)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_importing_the_load_tester_does_not_load_matplotlib():
    code = "import sys, loadtest.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
