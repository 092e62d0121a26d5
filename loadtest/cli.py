"""`pdserve loadtest`: its flags, read once into typed settings, and the run.

    pdserve loadtest --workload shared-prefix --rate 8 --num-requests 200 \
        --slo ttft=0.5,tpot=0.05 --out result.json
    pdserve loadtest --rates 1,2,4,8 --slo ttft=0.5,tpot=0.05 --out sweep.json  # + sweep.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from loadtest import figures, sweep
from loadtest.live import run_plans
from loadtest.metrics import Slo, summarize
from loadtest.report import RunParams, print_summary, write_json
from loadtest.runner import LoadPlan
from loadtest.workloads import (
    LengthDist,
    LoadRequest,
    MultiTurnShape,
    RandomShape,
    SharedPrefixShape,
    WorkloadKind,
    WorkloadShape,
    make_requests,
)
from pdserve import auth_flags, client

DEFAULT_NUM_REQUESTS = 100


def add_loadtest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=client.DEFAULT_ADDRESS)
    parser.add_argument(
        "--workload", type=WorkloadKind, choices=list(WorkloadKind), default=WorkloadKind.RANDOM
    )
    _add_workload_sizes(parser)
    arrivals = parser.add_mutually_exclusive_group(required=True)
    arrivals.add_argument("--rate", type=float, help="open loop: requests/s (inf: all at once)")
    arrivals.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    arrivals.add_argument(
        "--rates", type=_rates, help="open-loop sweep: one run per rate, e.g. 1,2,4"
    )
    parser.add_argument(
        "--burstiness", type=float, default=1.0, help="open loop: 1 Poisson, <1 steady, >1 bursty"
    )
    parser.add_argument(
        "--num-requests",
        type=int,
        help=f"most requests to send (default: random {DEFAULT_NUM_REQUESTS}, else all)",
    )
    parser.add_argument("--duration", type=float, help="stop sending after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slo", type=_slo, help="goodput objective, e.g. ttft=0.5,tpot=0.05")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-request deadline (s)")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--png", type=Path, help="the figure (default: --out's path, .png)")
    auth_flags.add_client_flags(parser)
    parser.set_defaults(run=run_loadtest)


def _add_workload_sizes(parser: argparse.ArgumentParser) -> None:
    length = LengthDist.parse
    sizes = parser.add_argument_group("workload sizes (lengths: N fixed, LOW:HIGH uniform)")
    sizes.add_argument("--input-len", type=length, default="128", help="random: prompt tokens")
    sizes.add_argument("--output-len", type=length, default="64", help="tokens to generate")
    sizes.add_argument("--num-groups", type=int, default=4, help="shared-prefix: prefixes")
    sizes.add_argument("--prompts-per-group", type=int, default=8, help="shared-prefix")
    sizes.add_argument("--prefix-len", type=int, default=256, help="shared-prefix: tokens")
    sizes.add_argument("--question-len", type=length, default="32", help="per prompt or turn")
    sizes.add_argument("--num-conversations", type=int, default=8, help="multi-turn")
    sizes.add_argument("--num-turns", type=int, default=4, help="multi-turn")


def _slo(text: str) -> Slo:
    try:
        return Slo.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--slo: ")) from None


def _rates(text: str) -> tuple[float, ...]:
    try:
        return sweep.parse_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--rates: ")) from None


def png_path(args: argparse.Namespace) -> Path | None:
    if args.png is not None:
        return args.png
    return None if args.out is None else args.out.with_suffix(".png")


def workload_shape(args: argparse.Namespace) -> WorkloadShape:
    if args.workload is WorkloadKind.SHARED_PREFIX:
        return SharedPrefixShape(
            args.num_groups,
            args.prompts_per_group,
            args.prefix_len,
            args.question_len,
            args.output_len,
        )
    if args.workload is WorkloadKind.MULTI_TURN:
        return MultiTurnShape(
            args.num_conversations, args.num_turns, args.question_len, args.output_len
        )
    num_requests = args.num_requests or DEFAULT_NUM_REQUESTS
    return RandomShape(num_requests, args.input_len, args.output_len)


def load_plan(args: argparse.Namespace, num_available: int) -> LoadPlan:
    """Raises ValueError naming the flag at fault."""
    return LoadPlan(
        rate=args.rates[0] if args.rates else args.rate,
        concurrency=args.concurrency,
        burstiness=args.burstiness,
        num_requests=args.num_requests or num_available,
        duration_s=args.duration,
        seed=args.seed,
        timeout_s=args.timeout,
    )


def run_loadtest(args: argparse.Namespace) -> int:
    try:
        security = auth_flags.client_security(args, os.environ)
        shape = workload_shape(args)
        requests = make_requests(shape, args.seed)
        plan = load_plan(args, len(requests))
    except ValueError as exc:
        print(f"pdserve loadtest: {exc}", file=sys.stderr)
        return 2
    params = RunParams(args.address, args.workload, shape, plan)
    if args.rates:
        return _run_sweep(args, security, requests, params)
    [result] = asyncio.run(run_plans(args.address, security, requests, [plan]))
    summary = summarize(result.records, result.duration_s, args.slo)
    print_summary(summary)
    if args.out is not None:
        write_json(args.out, params, summary)
        print(f"wrote {args.out}")
    if (png := png_path(args)) is not None:
        figures.write_run_figure(png, result.records)
        print(f"wrote {png}")
    return 0 if summary.num_ok else 1


def _run_sweep(
    args: argparse.Namespace,
    security: auth_flags.ClientSecurity,
    requests: list[LoadRequest],
    params: RunParams,
) -> int:
    plans = sweep.sweep_plans(params.plan, args.rates)
    results = asyncio.run(run_plans(args.address, security, requests, plans))
    points = sweep.assemble(args.rates, results, args.slo)
    sweep.print_sweep_table(points)
    if args.out is not None:
        sweep.write_sweep_json(args.out, params, points)
        print(f"wrote {args.out}")
    if (png := png_path(args)) is not None:
        figures.write_sweep_figure(png, points)
        print(f"wrote {png}")
    return 0 if all(p.summary.num_ok for p in points) else 1
