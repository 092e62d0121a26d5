"""`pdserve` command line: up, generate, status, scale, loadtest; and the commands Kubernetes
pods run — router, worker (pdserve/router_main.py, worker_main.py), drain (drain_cli.py) and
the ratio controller (pdserve/controller/).

Each command is one `_COMMANDS` entry: its name, help, and the function that adds its flags
(and `run`, the function it runs) to its subparser."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from loadtest.cli import add_loadtest
from pdserve import auth_flags, cli_output, client
from pdserve.controller.cli import add_controller
from pdserve.device_flags import add_device_flags
from pdserve.drain_cli import add_drain
from pdserve.router_main import add_router
from pdserve.v1 import cluster_pb2, cluster_pb2_grpc, generation_pb2, generation_pb2_grpc
from pdserve.worker_main import add_worker
from router.config import PolicyName


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdserve", description="Disaggregated prefill/decode LLM serving."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name, help_text, add_flags in _COMMANDS:
        add_flags(commands.add_parser(name, help=help_text))
    return parser


def _add_up(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of cluster settings")
    parser.add_argument("--model", help="alias (smollm2-135m, tiny), HF directory or .gguf file")
    parser.add_argument(
        "--prefill", dest="num_prefill", type=int, help="prefill workers (default 1)"
    )
    parser.add_argument("--decode", dest="num_decode", type=int, help="decode workers (default 1)")
    parser.add_argument(
        "--colocated", dest="num_colocated", type=int, help="workers of role both (default 0)"
    )
    parser.add_argument(
        "--ratio", help="prefill:decode ratio, e.g. 1:3, with --workers instead of the counts"
    )
    parser.add_argument(
        "--workers",
        dest="num_workers",
        type=int,
        help="prefill + decode workers to split by --ratio",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"])
    add_device_flags(parser)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--page-size", dest="page_size", type=int)
    parser.add_argument("--kv-cache-mib", dest="kv_cache_mib", type=int)
    parser.add_argument("--threads-per-worker", dest="threads_per_worker", type=int)
    parser.add_argument(
        "--transport",
        choices=["shm", "gloo", "tcp", "cuda_ipc"],
        help="KV backend (default: per pair)",
    )
    parser.add_argument(
        "--policy",
        dest="routing_policy",
        choices=[policy.value for policy in PolicyName],
        help="routing policy (default prefix_aware)",
    )
    parser.add_argument("--redis-url", dest="redis_url", help="shared registry and prefix index")
    parser.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="router /metrics port (0: any)"
    )
    parser.add_argument(
        "--worker-metrics",
        dest="worker_metrics",
        action="store_true",
        default=None,
        help="every worker serves /metrics on a free port (see `pdserve status`)",
    )
    parser.add_argument(
        "--drain-timeout",
        dest="drain_timeout_s",
        type=float,
        help="seconds `pdserve scale` waits for a worker to drain before stopping it",
    )
    auth_flags.add_server_flags(parser)
    parser.set_defaults(run=_run_up)


def _add_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template")
    parser.add_argument("--max-tokens", dest="max_tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", dest="top_p", type=float)
    parser.add_argument("--top-k", dest="top_k", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", dest="ignore_eos", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    parser.add_argument("--address", default=client.DEFAULT_ADDRESS)
    auth_flags.add_client_flags(parser)
    parser.set_defaults(run=_run_generate)


def _add_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--address", default=client.DEFAULT_ADDRESS)
    auth_flags.add_client_flags(parser)
    parser.set_defaults(run=_run_status)


def _add_scale(parser: argparse.ArgumentParser) -> None:
    """Sizes not given stay as they are; shrinking drains the newest workers first."""
    parser.add_argument(
        "--prefill", dest="num_prefill", type=int, metavar="N", help="prefill workers"
    )
    parser.add_argument("--decode", dest="num_decode", type=int, metavar="N", help="decode workers")
    parser.add_argument(
        "--colocated", dest="num_colocated", type=int, metavar="N", help="workers of role both"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline in seconds")
    parser.add_argument("--address", default=client.DEFAULT_ADDRESS)
    auth_flags.add_client_flags(parser)
    parser.set_defaults(run=_run_scale)


_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = [
    ("up", "start a local cluster and serve until Ctrl-C", _add_up),
    ("generate", "stream one completion to stdout", _add_generate),
    ("status", "show every worker's state", _add_status),
    ("scale", "grow or shrink the pools of a running `pdserve up` (drains workers)", _add_scale),
    ("loadtest", "send a seeded workload and report latency, goodput", add_loadtest),
    ("router", "serve one router that finds its workers in the Redis registry", add_router),
    ("worker", "serve one worker actor on this Ray node, registered in Redis", add_worker),
    ("drain", "drain one worker and wait until it is drained (preStop)", add_drain),
    ("controller", "size the prefill and decode Deployments from router metrics", add_controller),
]


def up_config(args: argparse.Namespace):
    """The ClusterConfig `pdserve up` runs with: flags > PDSERVE_* > --config YAML > defaults.

    Raises ValueError (pydantic's ValidationError) naming the setting at fault."""
    from pdserve.config import ClusterConfig

    flags = {key: value for key, value in vars(args).items() if key not in ("run", "config")}
    return ClusterConfig.load(args.config, **auth_flags.sectioned(flags))


def _run_up(args: argparse.Namespace) -> int:
    from pdserve.launch import serve_forever

    try:
        config = up_config(args)
    except ValueError as exc:
        print(f"pdserve up: {exc}", file=sys.stderr)
        return 2
    return serve_forever(config)


def _run_generate(args: argparse.Namespace) -> int:
    request = client.prompt_request(
        args.prompt,
        chat=args.chat,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
        ignore_eos=args.ignore_eos or None,
    )
    channel, stub = _connect(args)
    try:
        completion = cli_output.print_stream(stub, request, args.timeout)
    except grpc.RpcError as exc:
        sys.stdout.write("\n")  # end the text streamed so far
        return _failed(exc)
    finally:
        channel.close()
    cli_output.print_figures(completion)
    return 0


def _connect(args: argparse.Namespace) -> tuple[grpc.Channel, generation_pb2_grpc.GenerationStub]:
    security = _client_security(args)
    return client.connect(args.address, security.tls, security.token)


def _client_security(args: argparse.Namespace) -> auth_flags.ClientSecurity:
    """The --tls*/--auth-token-file flags (or PDSERVE_AUTH_TOKEN); exits naming a bad one."""
    try:
        return auth_flags.client_security(args, os.environ)
    except ValueError as exc:
        raise SystemExit(f"pdserve: {exc}") from None


def scale_request(args: argparse.Namespace) -> cluster_pb2.ScaleRequest:
    """`pdserve scale` flags as a ScaleRequest: a size not given is not set (kept as is)."""
    sizes = {name: getattr(args, name) for name in ("num_prefill", "num_decode", "num_colocated")}
    return cluster_pb2.ScaleRequest(**{k: v for k, v in sizes.items() if v is not None})


def _run_scale(args: argparse.Namespace) -> int:
    security = _client_security(args)
    channel = client.open_public_channel(args.address, security.tls, security.token)
    try:
        stub = cluster_pb2_grpc.ClusterStub(channel)
        response = stub.Scale(scale_request(args), timeout=args.timeout)
    except grpc.RpcError as exc:
        return _failed(exc)
    finally:
        channel.close()
    if args.json:
        print(json.dumps(MessageToDict(response, always_print_fields_with_no_presence=True)))
    else:
        cli_output.print_scale(response)
    return 0


def _run_status(args: argparse.Namespace) -> int:
    channel, stub = _connect(args)
    try:
        info = stub.GetServerInfo(generation_pb2.GetServerInfoRequest(), timeout=10)
    except grpc.RpcError as exc:
        return _failed(exc)
    finally:
        channel.close()
    if args.json:
        print(json.dumps(MessageToDict(info, always_print_fields_with_no_presence=True), indent=2))
        return 0
    cli_output.print_status_table(info)
    return 0


def _failed(error: grpc.RpcError) -> int:
    """Reports a failed call (code, reason, message) on stderr; the command's exit code."""
    reason = client.error_info(error)[0]
    print(
        f"error: {error.code().name}{f' ({reason})' if reason else ''}: {error.details()}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
