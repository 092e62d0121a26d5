"""`pdserve loadtest`: its flags, read once into typed settings, and the run.

    pdserve loadtest --workload shared-prefix --rate 8 --num-requests 200 \
        --slo ttft=0.5,tpot=0.05 --out result.json
    pdserve loadtest --rates 1,2,4,8 --slo ttft=0.5,tpot=0.05 --out sweep.json  # + sweep.png
    pdserve loadtest --ratios 1:1,2:1,1:2 --colocated 1 --rates 1,2,4 --model tiny \
        --slo ttft=0.5,tpot=0.05 --out arms.json    # one local cluster per arm, in turn
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loadtest import arms, figures, sweep
from loadtest.clusters import ClusterShape, ClusterStartError, parse_ratios
from loadtest.metrics import Slo, Summary
from loadtest.report import RunParams, write_json
from loadtest.runner import LoadPlan
from loadtest.workloads import (
    LengthDist,
    MultiTurnShape,
    RandomShape,
    SharedPrefixShape,
    WorkloadKind,
    WorkloadShape,
    make_requests,
)
from pdserve import auth_flags, client

DEFAULT_NUM_REQUESTS = 100
DEFAULT_THREADS_PER_WORKER = 1
_CLUSTER_FLAGS = {
    "model": "--model",
    "dtype": "--dtype",
    "threads_per_worker": "--threads-per-worker",
    "cluster_config": "--cluster-config",
    "colocated_threads": "--colocated-threads",
}  # dest → flag: each configures loadtest's own clusters, so needs --ratios or --colocated


def add_loadtest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=f"the cluster to load (default {client.DEFAULT_ADDRESS})")
    parser.add_argument(
        "--workload", type=WorkloadKind, choices=list(WorkloadKind), default=WorkloadKind.RANDOM
    )
    _add_workload_sizes(parser)
    _add_arms(parser)
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


def _add_arms(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "arms: one fresh local `pdserve up` per cluster shape, run in turn (not with --address)"
    )
    group.add_argument(
        "--ratios", type=_ratios, metavar="P:D,…", help="one xPyD arm each, e.g. 1:1,2:1,1:2"
    )
    group.add_argument(
        "--colocated", type=_at_least_one, metavar="N", help="an arm of N workers of role both"
    )
    group.add_argument(
        "--colocated-threads",
        type=_at_least_one,
        metavar="T",
        help="torch threads per colocated worker (default: the first ratio's cores, shared)",
    )
    group.add_argument("--model", help="alias (smollm2-135m, tiny), HF directory or .gguf file")
    group.add_argument("--dtype", choices=["float32", "bfloat16"])
    group.add_argument(
        "--threads-per-worker",
        type=_at_least_one,
        metavar="T",
        help=f"torch threads per prefill/decode worker (default {DEFAULT_THREADS_PER_WORKER})",
    )
    group.add_argument(
        "--cluster-config",
        type=Path,
        metavar="PATH",
        help="YAML of cluster settings (pdserve up --config)",
    )


def _ratios(text: str) -> tuple[ClusterShape, ...]:
    try:
        return parse_ratios(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--ratios: ")) from None


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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


def arms_spec(args: argparse.Namespace) -> arms.ArmsSpec | None:
    """The arms of --ratios/--colocated, or None for a run against --address. Raises
    ValueError naming a flag that does not fit the other flags given."""
    if args.ratios is None and args.colocated is None:
        given = [flag for dest, flag in _CLUSTER_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            raise ValueError(
                f"{given[0]} needs --ratios or --colocated (it sets up their clusters)"
            )
        return None
    if args.address is not None:
        raise ValueError(
            "--address cannot be combined with --ratios/--colocated, which start their own clusters"
        )
    if args.colocated_threads is not None and args.colocated is None:
        raise ValueError("--colocated-threads needs --colocated")
    if args.cluster_config is not None and not args.cluster_config.is_file():
        raise ValueError(f"--cluster-config: no such file {str(args.cluster_config)!r}")
    shapes = arms.arm_shapes(
        args.ratios or (),
        args.colocated,
        args.threads_per_worker or DEFAULT_THREADS_PER_WORKER,
        args.colocated_threads,
    )
    return arms.ArmsSpec(shapes, cluster_up_flags(args))


def cluster_up_flags(args: argparse.Namespace) -> tuple[str, ...]:
    """The `pdserve up` flags every arm's cluster gets besides its shape's."""
    flags = []
    if args.model is not None:
        flags.append(f"--model={args.model}")
    if args.dtype is not None:
        flags.append(f"--dtype={args.dtype}")
    if args.cluster_config is not None:
        flags.append(f"--config={args.cluster_config}")
    return tuple(flags)


def run_loadtest(args: argparse.Namespace) -> int:
    try:
        spec = arms_spec(args)
        security = auth_flags.client_security(args, os.environ)
        shape = workload_shape(args)
        requests = make_requests(shape, args.seed)
        plan = load_plan(args, len(requests))
    except ValueError as exc:
        print(f"pdserve loadtest: {exc}", file=sys.stderr)
        return 2
    plans = sweep.sweep_plans(plan, args.rates) if args.rates else [plan]
    measurement = arms.Measurement(security, requests, plans, args.rates, args.slo)
    if spec is not None:
        return _run_arms(args, RunParams(None, args.workload, shape, plan), spec, measurement)
    address = args.address or client.DEFAULT_ADDRESS
    measured = measurement.run(address)
    arms.print_measured(measured)
    _write_reports(args, RunParams(address, args.workload, shape, plan), measured)
    return _exit_code(measured.summaries)


def _write_reports(args: argparse.Namespace, params: RunParams, measured: arms.Measured) -> None:
    if args.out is not None:
        if measured.summary is None:
            sweep.write_sweep_json(args.out, params, measured.points)
        else:
            write_json(args.out, params, measured.summary)
        print(f"wrote {args.out}")
    if (png := png_path(args)) is not None:
        if measured.summary is None:
            figures.write_sweep_figure(png, measured.points)
        else:
            figures.write_run_figure(png, measured.records)
        print(f"wrote {png}")


def _run_arms(
    args: argparse.Namespace,
    params: RunParams,
    spec: arms.ArmsSpec,
    measurement: arms.Measurement,
) -> int:
    try:
        results = arms.run_arms(spec, measurement.run)
    except ClusterStartError as exc:
        print(f"pdserve loadtest: {exc}", file=sys.stderr)
        return 1
    arms.print_comparison(results)
    if args.out is not None:
        arms.write_arms_json(args.out, params, spec, results, args.rates)
        print(f"wrote {args.out}")
    if (png := png_path(args)) is not None:
        arms.write_figure(png, results)
        print(f"wrote {png}")
    return _exit_code([s for result in results for s in result.measured.summaries])


def _exit_code(summaries: list[Summary]) -> int:
    """0 when every run had a request served, else 1."""
    return 0 if all(summary.num_ok for summary in summaries) else 1
