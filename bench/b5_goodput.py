"""B5 — goodput at SLO: disaggregated 1P+1D (1 torch thread each, shm) vs colocated (one
engine, 2 threads), SmolLM2-135M in bfloat16, inputs U[256,1024], outputs U[32,128], Poisson
arrivals. (bfloat16: BENCHMARKS.md sizes this box's prefill in it; float32 prefill here is 2×
slower, and a 1024-token prompt alone would miss the 3 s TTFT objective.)

Goodput = the highest offered rate at which ≥ 90 % of the requests meet both the TTFT and
the TPOT objective (DistServe). Both arms are `pdserve up` clusters of their own
(loadtest/clusters.py), up side by side for the whole run; the load generator is this process.

  1. calibrate  each arm alone: one request at a time (1024-token prompt, 64 tokens out);
                its TTFT and its TPOT, the unloaded decode step. The objectives are set from
                the slower arm's figures, so both arms meet them when idle:
                  tight TPOT   TTFT ≤ 3 s,            TPOT ≤ 1.5 × unloaded step
                  tight TTFT   TTFT ≤ 1.5 × unloaded, TPOT ≤ 5 × unloaded step
  2. sweep      per repeat, per offered rate, each arm in turn (A, B, A, B …) gets the same
                seeded requests; a run's records give its attainment under both objectives.
  3. goodput    per arm, regime and repeat: the 90 % crossing, linearly interpolated between
                the highest rate that met it and the next one (0 when the lowest did not).
Headline: disaggregated ÷ colocated goodput in the tight-TPOT regime (median over repeats,
ratio of medians). The tight-TTFT regime is reported beside it whichever arm wins. The figure
(bench/goodput_figure.py) goes to bench/results/B5.png.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import goodput_figure
from bench.common import RESULTS_DIR, BenchResult, machine_info
from loadtest.clusters import ClusterProcess, ClusterShape
from loadtest.live import run_plans
from loadtest.metrics import Slo, summarize, tpot_s, ttft_s
from loadtest.runner import LoadPlan, LoadResult
from loadtest.workloads import LengthDist, RandomShape, make_requests
from pdserve.auth_flags import ClientSecurity

ID = "B5"
NAME = "disaggregated ÷ colocated goodput, tight TPOT"
TARGET = 1.5
MODEL = "smollm2-135m"
DTYPE = "bfloat16"
ATTAINMENT = 0.9
ARMS = {
    "disaggregated": ClusterShape(num_prefill=1, num_decode=1, threads_per_worker=1),
    "colocated": ClusterShape(num_colocated=1, threads_per_worker=2),
}
INPUT_LEN, OUTPUT_LEN = LengthDist.uniform(256, 1024), LengthDist.uniform(32, 128)
CALIBRATION_PROMPT, CALIBRATION_OUTPUT = 1024, 64


@dataclass(frozen=True, slots=True)
class Plan:
    rates: tuple[float, ...]  # requests/s, ascending
    num_requests: int  # per run
    repeats: int
    calibration_requests: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls((0.1, 0.3), 8, 1, 2)
        return cls((0.1, 0.2, 0.3, 0.45), 16, 3, 4)


@dataclass(frozen=True, slots=True)
class Regimes:
    tight_tpot: Slo
    tight_ttft: Slo


def run(quick: bool) -> BenchResult:
    plan = Plan.of(quick)
    flags = [f"--model={MODEL}", f"--dtype={DTYPE}"]
    with ClusterProcess(ARMS["disaggregated"], flags) as disaggregated:
        with ClusterProcess(ARMS["colocated"], flags) as colocated:
            addresses = {"disaggregated": disaggregated, "colocated": colocated}
            cpu_before = _own_cpu_s()
            unloaded = {arm: calibrate(address, plan) for arm, address in addresses.items()}
            regimes = objectives(unloaded)
            attainment = sweep(addresses, plan, regimes)
            load_generator_cpu_s = _own_cpu_s() - cpu_before
    measured = {
        "unloaded": unloaded,
        "objectives": {name: _slo_json(getattr(regimes, name)) for name in Regimes.__slots__},
        "attainment": attainment,
        "rates": plan.rates,
        "requests_per_run": plan.num_requests,
        "repeats": plan.repeats,
        "arms": {arm: shape.name for arm, shape in ARMS.items()},
        "model": f"{MODEL} {DTYPE}",
        "load_generator_cpu_s": round(load_generator_cpu_s, 1),
    }
    return result(measured, machine_info())


def result(measured: dict[str, Any], machine: dict[str, Any]) -> BenchResult:
    """Goodputs, ratios and the figure from what a run measured (its attainments)."""
    rates = tuple(measured["rates"])
    goodputs = {
        regime: {arm: [goodput(rates, runs) for runs in by_arm[arm]] for arm in ARMS}
        for regime, by_arm in measured["attainment"].items()
    }
    details = measured | {
        "goodput_req_per_s": goodputs,
        "ratio_disaggregated_over_colocated": {
            regime: _ratio(by_arm, rates) for regime, by_arm in goodputs.items()
        },
    }
    goodput_figure.write(RESULTS_DIR / "B5.png", details)
    for regime, ratio in details["ratio_disaggregated_over_colocated"].items():
        print(f"B5 {regime}: {_describe(ratio)}", flush=True)
    headline = details["ratio_disaggregated_over_colocated"]["tight_tpot"]["ratio_of_medians"]
    return BenchResult(ID, NAME, headline, TARGET, details, machine)


def calibrate(address: str, plan: Plan) -> dict[str, float]:
    """One request at a time: the arm's unloaded TTFT (1024-token prompt) and TPOT."""
    shape = RandomShape(
        plan.calibration_requests + 1,
        LengthDist.fixed(CALIBRATION_PROMPT),
        LengthDist.fixed(CALIBRATION_OUTPUT),
    )
    result = _run(address, make_requests(shape, seed=99), LoadPlan(concurrency=1, num_requests=99))
    records = [r for r in result.records if r.ok][1:]  # the first warms the arm up
    if len(records) < plan.calibration_requests:
        raise RuntimeError(f"calibration failed at {address}: {result.records}")
    return {
        "ttft_s": statistics.median(ttft_s(r) for r in records),
        "tpot_s": statistics.median(tpot_s(r) for r in records),
    }


def objectives(unloaded: dict[str, dict[str, float]]) -> Regimes:
    step_s = max(figures["tpot_s"] for figures in unloaded.values())
    ttft = max(figures["ttft_s"] for figures in unloaded.values())
    return Regimes(
        tight_tpot=Slo(ttft_s=3.0, tpot_s=1.5 * step_s),
        tight_ttft=Slo(ttft_s=1.5 * ttft, tpot_s=5 * step_s),
    )


def sweep(
    addresses: dict[str, str], plan: Plan, regimes: Regimes
) -> dict[str, dict[str, list[list[float]]]]:
    """attainment[regime][arm][repeat][rate index]; arms interleaved at every point."""
    attainment = {
        name: {arm: [[] for _ in range(plan.repeats)] for arm in addresses}
        for name in Regimes.__slots__
    }
    for repeat in range(plan.repeats):
        for rate in plan.rates:
            shape = RandomShape(plan.num_requests, INPUT_LEN, OUTPUT_LEN)
            requests = make_requests(shape, seed=1000 * repeat + round(rate * 100))
            load = LoadPlan(rate=rate, num_requests=plan.num_requests, seed=repeat)
            for arm, address in addresses.items():
                result = _run(address, requests, load)
                for name in Regimes.__slots__:
                    summary = summarize(result.records, result.duration_s, getattr(regimes, name))
                    attainment[name][arm][repeat].append(summary.slo_attainment)
                print(f"B5 repeat {repeat} rate {rate:g} {arm}: {_line(attainment, arm, repeat)}")
    return attainment


def goodput(rates: tuple[float, ...], attainments: list[float]) -> float:
    """The rate where attainment crosses 90 %, interpolated between the highest rate that met
    it and the next rate; the top rate when every rate met it; 0 when the lowest did not."""
    met = [i for i, a in enumerate(attainments) if a >= ATTAINMENT]
    if not met:
        return 0.0
    top = met[-1]
    if top == len(rates) - 1:
        return rates[top]
    above, below = attainments[top], attainments[top + 1]
    fraction = (above - ATTAINMENT) / (above - below)
    return rates[top] + fraction * (rates[top + 1] - rates[top])


def _ratio(by_arm: dict[str, list[float]], rates: tuple[float, ...]) -> dict[str, Any]:
    """Disaggregated ÷ colocated, of the medians over repeats. A goodput of 0 (not even the
    lowest rate met the objective) is below the lowest rate, so it is counted as that rate
    and the ratio marked as a bound: ≥ when colocated's was 0, ≤ when disaggregated's was.
    A goodput equal to the top rate is a lower bound too (`censored_at_top`)."""
    medians = {arm: statistics.median(values) for arm, values in by_arm.items()}
    bounded = {arm: value or rates[0] for arm, value in medians.items()}
    below = [arm for arm, value in medians.items() if value == 0]
    bound = {(): "", ("colocated",): "at least", ("disaggregated",): "at most"}
    return {
        "ratio_of_medians": bounded["disaggregated"] / bounded["colocated"],
        "bound": bound.get(tuple(below), "undetermined: neither arm met the objective"),
        "censored_at_top": [arm for arm, value in medians.items() if value == rates[-1]],
        "per_repeat": [
            d / c if c else None
            for d, c in zip(by_arm["disaggregated"], by_arm["colocated"], strict=True)
        ],
        "median_goodput": medians,
    }


def _describe(ratio: dict[str, Any]) -> str:
    """One regime in words: the ratio, whether it is a bound, and the goodputs behind it."""
    goodputs = ", ".join(f"{arm} {value:.3g}" for arm, value in ratio["median_goodput"].items())
    censored = "".join(f"; {arm} met the top rate" for arm in ratio["censored_at_top"])
    bound = f" ({ratio['bound']})" if ratio["bound"] else ""
    return (
        f"disaggregated ÷ colocated goodput = {ratio['ratio_of_medians']:.3g}{bound} "
        f"[median req/s: {goodputs}{censored}]"
    )


def _run(address: str, requests, plan: LoadPlan) -> LoadResult:
    [result] = asyncio.run(run_plans(address, ClientSecurity(), requests, [plan]))
    return result


def _line(attainment: dict, arm: str, repeat: int) -> str:
    return ", ".join(f"{name} {by_arm[arm][repeat][-1]:.0%}" for name, by_arm in attainment.items())


def _slo_json(slo: Slo) -> dict[str, float]:
    return {"ttft_s": round(slo.ttft_s, 4), "tpot_s": round(slo.tpot_s, 4)}


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    # Re-summarize a saved result (goodputs, ratios, figure) with this code:
    #   python -m bench.b5_goodput bench/results/B5.json
    saved = json.loads(Path(sys.argv[1]).read_text())
    derived = ("goodput_req_per_s", "ratio_disaggregated_over_colocated")
    measured = {key: value for key, value in saved["details"].items() if key not in derived}
    again = result(measured, saved["machine"])
    print(f"wrote {again.write()}\n{again.headline()}")
