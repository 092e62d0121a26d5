"""`pdserve loadtest --ratios/--colocated` without clusters: the arms the flags make, the
flags refused by name, the arms run in turn (each cluster stopped before the next starts),
and the reports (comparison tables, JSON, PNG) on hand-made results."""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from rich.console import Console

from loadtest import arms
from loadtest.arms import ArmResult, ArmsSpec, Measured, colocated_threads
from loadtest.cli import arms_spec, run_loadtest
from loadtest.clusters import ClusterShape, ClusterStartError
from loadtest.metrics import Slo, summarize
from loadtest.report import RunParams
from loadtest.runner import LoadPlan, RequestRecord
from loadtest.sweep import RatePoint
from loadtest.workloads import LengthDist, RandomShape, WorkloadKind
from pdserve.cli import _parser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SLO = Slo(ttft_s=0.1, tpot_s=0.05)
ONE_TO_ONE = ClusterShape(num_prefill=1, num_decode=1, threads_per_worker=1)
COLOCATED = ClusterShape(num_colocated=1, threads_per_worker=2)


def parse(*flags: str):
    return _parser().parse_args(["loadtest", *flags])


def make_records(*ttfts_s: float) -> list[RequestRecord]:
    """OK requests sent at 0, each three tokens 10 ms apart after its first."""
    return [
        RequestRecord(
            i,
            prompt_len=10,
            max_tokens=3,
            first_token_s=ttft,
            chunk_times_s=[ttft, ttft + 0.01, ttft + 0.02],
            end_s=ttft + 0.02,
            num_output_tokens=3,
            code="OK",
            prompt_tokens=10,
        )
        for i, ttft in enumerate(ttfts_s)
    ]


def single(*ttfts_s: float) -> Measured:
    records = make_records(*ttfts_s)
    return Measured(summary=summarize(records, 1.0, SLO), records=tuple(records))


def swept(*ttfts_by_rate: tuple[float, float]) -> Measured:
    """One point per (rate, ttft): two requests in 1 s, both with that TTFT."""
    points = [
        RatePoint(rate, summarize(make_records(ttft, ttft), 1.0, SLO))
        for rate, ttft in ttfts_by_rate
    ]
    return Measured(points=tuple(points))


def run_params() -> RunParams:
    shape = RandomShape(2, LengthDist.fixed(10), LengthDist.fixed(3))
    return RunParams(None, WorkloadKind.RANDOM, shape, LoadPlan(rate=2.0, seed=4))


SPEC = ArmsSpec((ONE_TO_ONE, COLOCATED), ("--model=tiny",))


def test_ratios_and_colocated_make_one_arm_each_in_order_at_equal_cores():
    """2:1 at 2 threads a worker is 6 cores, so the colocated worker defaults to all 6."""
    args = parse(
        *("--rate", "1", "--ratios", "2:1,1:1", "--colocated", "1"),
        *("--model", "tiny", "--threads-per-worker", "2"),
    )
    spec = arms_spec(args)
    assert [shape.name for shape in spec.shapes] == ["2P1Dx2t", "1P1Dx2t", "1Cx6t"]
    assert spec.up_flags == ("--model=tiny",)


def test_colocated_alone_is_the_only_arm_at_the_threads_per_worker():
    spec = arms_spec(parse("--concurrency", "2", "--colocated", "2", "--threads-per-worker", "3"))
    assert spec.shapes == (ClusterShape(num_colocated=2, threads_per_worker=3),)


def test_colocated_threads_share_the_first_ratios_cores_but_never_drop_below_one():
    first = ClusterShape(num_prefill=1, num_decode=1)
    assert colocated_threads(1, 1, first) == 2
    assert colocated_threads(2, 3, first) == 3
    assert colocated_threads(4, 1, first) == 1  # 2 cores over 4 workers: still 1 each
    assert colocated_threads(3, 2, None) == 2  # no xPyD arm: --threads-per-worker


def test_explicit_colocated_threads_win_and_cluster_flags_reach_pdserve_up(tmp_path: Path):
    config = tmp_path / "cluster.yaml"
    config.write_text("kv_cache_mib: 64\n")
    args = parse(
        *("--rate", "1", "--ratios", "1:1", "--colocated", "1", "--colocated-threads", "5"),
        *("--dtype", "bfloat16", "--cluster-config", str(config)),
    )
    spec = arms_spec(args)
    assert [shape.name for shape in spec.shapes] == ["1P1Dx1t", "1Cx5t"]
    assert spec.up_flags == ("--dtype=bfloat16", f"--config={config}")


def test_a_run_against_an_address_has_no_arms():
    assert arms_spec(parse("--rate", "1", "--address", "host:1")) is None


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--ratios", "1:1,2x1"], "'2x1'"),
        (["--ratios", "1:0"], "at least one worker of each role"),
        (["--colocated", "0"], "argument --colocated: must be at least 1, got 0"),
        (["--colocated", "1", "--colocated-threads", "0"], "--colocated-threads: must be"),
    ],
)
def test_bad_arm_flags_exit_naming_the_fault(flags, named, capsys):
    with pytest.raises(SystemExit):
        parse("--rate", "1", *flags)
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--address", "host:1", "--ratios", "1:1"], "--address cannot be combined with --ratios"),
        (["--address", "host:1", "--colocated", "1"], "--address cannot be combined"),
        (["--model", "tiny"], "--model needs --ratios or --colocated"),
        (["--threads-per-worker", "2"], "--threads-per-worker needs --ratios or --colocated"),
        (["--ratios", "1:1", "--colocated-threads", "2"], "--colocated-threads needs --colocated"),
        (["--colocated", "1", "--cluster-config", "/no/such.yaml"], "--cluster-config: no such"),
    ],
)
def test_flags_that_do_not_fit_together_exit_2_before_any_cluster_starts(flags, named, capsys):
    assert run_loadtest(parse("--rate", "1", *flags)) == 2
    assert f"pdserve loadtest: {named}" in capsys.readouterr().err


class FakeClusters:
    """Stands in for ClusterProcess: records starts and stops; `failing` never comes up."""

    def __init__(self, failing: str = "") -> None:
        self.events: list[str] = []
        self.failing = failing

    @contextmanager
    def start(self, shape: ClusterShape, up_flags):
        if shape.name == self.failing:
            raise ClusterStartError(f"cluster {shape.name} exited with code 1:\nboom")
        self.events.append(f"start {shape.name} {' '.join(up_flags)}")
        try:
            yield f"addr-{shape.name}"
        finally:
            self.events.append(f"stop {shape.name}")


def test_arms_run_in_turn_each_cluster_stopped_before_the_next_starts():
    clusters, measured_at = FakeClusters(), []

    def measure(address: str) -> Measured:
        measured_at.append(address)
        return single(0.01)

    results = arms.run_arms(SPEC, measure, clusters.start, Console(quiet=True))
    assert measured_at == ["addr-1P1Dx1t", "addr-1Cx2t"]
    assert clusters.events == [
        "start 1P1Dx1t --model=tiny",
        "stop 1P1Dx1t",
        "start 1Cx2t --model=tiny",
        "stop 1Cx2t",
    ]
    assert [result.shape for result in results] == [ONE_TO_ONE, COLOCATED]


def test_a_cluster_that_does_not_start_ends_the_run_after_the_earlier_ones_stopped():
    clusters = FakeClusters(failing="1Cx2t")
    with pytest.raises(ClusterStartError, match="boom"):
        arms.run_arms(SPEC, lambda _: single(0.01), clusters.start, Console(quiet=True))
    assert clusters.events == ["start 1P1Dx1t --model=tiny", "stop 1P1Dx1t"]


def test_arms_json_names_each_arm_with_its_shape_flags_and_results():
    results = [ArmResult(ONE_TO_ONE, single(0.01, 0.03)), ArmResult(COLOCATED, single(0.2))]
    document = json.loads(json.dumps(arms.arms_json(run_params(), SPEC, results, None)))
    assert document["params"]["address"] is None
    assert document["params"]["arms"] == [
        {
            "name": "1P1Dx1t",
            "shape": {
                "num_prefill": 1,
                "num_decode": 1,
                "num_colocated": 0,
                "threads_per_worker": 1,
            },
            "up_flags": [
                "--model=tiny",
                "--prefill=1",
                "--decode=1",
                "--colocated=0",
                "--threads-per-worker=1",
            ],
        },  # fmt: skip
        {
            "name": "1Cx2t",
            "shape": {
                "num_prefill": 0,
                "num_decode": 0,
                "num_colocated": 1,
                "threads_per_worker": 2,
            },
            "up_flags": [
                "--model=tiny",
                "--prefill=0",
                "--decode=0",
                "--colocated=1",
                "--threads-per-worker=2",
            ],
        },  # fmt: skip
    ]
    assert [arm["name"] for arm in document["arms"]] == ["1P1Dx1t", "1Cx2t"]
    assert document["arms"][0]["results"]["ttft"]["p50"] == pytest.approx(0.02)
    assert document["arms"][1]["results"]["goodput"] == 0.0  # TTFT 0.2 s misses the 0.1 s SLO
    assert "rates" not in document["params"] and "sweep" not in document["arms"][0]


def test_a_swept_arm_has_every_rate_and_the_highest_rate_meeting_the_slo():
    """1P1D meets the 0.1 s TTFT at rates 1 and 2; colocated only at 1."""
    results = [
        ArmResult(ONE_TO_ONE, swept((1.0, 0.01), (2.0, 0.05))),
        ArmResult(COLOCATED, swept((1.0, 0.05), (2.0, 0.5))),
    ]
    document = arms.arms_json(run_params(), SPEC, results, (1.0, 2.0))
    assert document["params"]["rates"] == [1.0, 2.0]
    assert [entry["rate"] for entry in document["arms"][1]["sweep"]] == [1.0, 2.0]
    assert [arm["max_rate_at_slo"] for arm in document["arms"]] == [2.0, 1.0]
    assert document["arms"][1]["sweep"][1]["results"]["slo_attainment"] == 0.0


def printed_cells(console: Console, rule: str) -> list[list[str]]:
    """The printed table's rows (`│`) or header (`┃`) as stripped cells, edges dropped."""
    lines = console.export_text(clear=False).splitlines()
    return [[cell.strip() for cell in line.split(rule)[1:-1]] for line in lines if rule in line]


def test_the_comparison_table_has_a_column_per_arm():
    console = Console(file=io.StringIO(), record=True, width=100)
    results = [ArmResult(ONE_TO_ONE, single(0.01, 0.03)), ArmResult(COLOCATED, single(0.2))]
    arms.print_comparison(results, console)
    assert printed_cells(console, "┃") == [["figure", "1P1Dx1t", "1Cx2t"]]
    rows = {label: cells for label, *cells in printed_cells(console, "│")}
    assert rows["TTFT p50 (ms)"] == ["20.0", "200.0"]
    assert rows["goodput (req/s)"] == ["2.00", "0.00"]
    assert rows["SLO attainment"] == ["100.0%", "0.0%"]
    assert rows["ok / failed"] == ["2 / 0", "1 / 0"]


def test_the_sweep_comparison_has_goodput_per_rate_per_arm():
    console = Console(file=io.StringIO(), record=True, width=100)
    results = [
        ArmResult(ONE_TO_ONE, swept((1.0, 0.01), (2.0, 0.05))),
        ArmResult(COLOCATED, swept((1.0, 0.05), (2.0, 0.5))),
    ]
    arms.print_comparison(results, console)
    assert printed_cells(console, "┃") == [["offered", "1P1Dx1t", "1Cx2t"]]
    assert printed_cells(console, "│") == [
        ["1", "2.00", "2.00"],
        ["2", "2.00", "0.00"],
        ["max rate, ≥ 90 % SLO", "2", "1"],
    ]


def test_the_arms_figure_is_a_png_for_a_run_and_for_a_sweep(tmp_path: Path):
    runs = [ArmResult(ONE_TO_ONE, single(0.01, 0.03)), ArmResult(COLOCATED, single(0.2))]
    sweeps = [
        ArmResult(ONE_TO_ONE, swept((1.0, 0.01), (2.0, 0.05))),
        ArmResult(COLOCATED, swept((1.0, 0.05), (2.0, 0.5))),
    ]
    for results, name in [(runs, "run.png"), (sweeps, "sweep.png")]:
        arms.write_figure(tmp_path / name, results)
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
