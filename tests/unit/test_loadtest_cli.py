"""`pdserve loadtest`'s flags: read into typed settings, bad ones refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.cli import load_plan, png_path, workload_shape
from loadtest.metrics import Slo
from loadtest.workloads import LengthDist, MultiTurnShape, RandomShape
from pdserve.cli import _parser


def parse(*flags: str):
    return _parser().parse_args(["loadtest", *flags])


def test_flags_become_a_workload_shape_and_a_plan():
    args = parse("--rate", "4", "--burstiness", "2", "--input-len", "8:16", "--seed", "3")
    args.slo = Slo.parse("ttft=1,tpot=0.1")
    assert workload_shape(args) == RandomShape(100, LengthDist.uniform(8, 16), LengthDist.fixed(64))
    plan = load_plan(args, num_available=100)
    assert (plan.rate, plan.concurrency, plan.burstiness, plan.seed) == (4.0, None, 2.0, 3)


def test_a_multi_turn_run_sends_every_turn_unless_capped():
    args = parse("--workload", "multi-turn", "--concurrency", "2", "--num-turns", "3")
    assert workload_shape(args) == MultiTurnShape(8, 3, LengthDist.fixed(32), LengthDist.fixed(64))
    assert load_plan(args, num_available=24).num_requests == 24


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--rate", "1", "--slo", "ttft=1,tbt=2"], "'tbt'"),
        (["--rate", "1", "--input-len", "9:3"], "'9:3'"),
        (["--rate", "1", "--concurrency", "2"], "not allowed with argument"),
        (["--rates", "1,-2"], "'-2'"),
        (["--rates", "1,2", "--rate", "1"], "not allowed with argument"),
    ],
)
def test_bad_flags_exit_naming_the_fault(flags, named, capsys):
    with pytest.raises(SystemExit):
        parse(*flags)
    assert named in capsys.readouterr().err


def test_a_sweep_plans_at_its_first_rate_and_keeps_every_rate():
    args = parse("--rates", "2,1,4", "--seed", "3")
    assert args.rates == (2.0, 1.0, 4.0)
    assert (load_plan(args, num_available=100).rate, args.rate) == (2.0, None)


def test_the_figure_goes_beside_the_json_unless_named():
    assert png_path(parse("--rate", "1", "--out", "runs/a.json")) == Path("runs/a.png")
    assert png_path(parse("--rate", "1", "--out", "a.json", "--png", "b.png")) == Path("b.png")
    assert png_path(parse("--rate", "1")) is None
