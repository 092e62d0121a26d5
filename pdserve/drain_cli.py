"""`pdserve drain`: drain one worker and wait until it is drained (a pod's preStop hook).

    pdserve drain --address 127.0.0.1:50061 --timeout 120

1. Drain RPC: the worker stops taking routes (every router sees `draining` at its next stats
   poll) and its grpc.health.v1 turns NOT_SERVING. Unreachable: nothing to drain, exit 0.
2. GetStats every `poll_s` until it reports `drained` (draining, idle, no lease or export held,
   quiet a while: pdserve/drain.py) → exit 0; stops answering meanwhile → it drained and
   exited, exit 0; still not drained after `--timeout` seconds → exit 1 with a message.
Any other failure (refused token, TLS mismatch, a wedged worker's deadline) exits 1 naming it.

It stops nothing: the worker process (`pdserve worker`, SIGTERM) deregisters and stops itself.
The internal edge's TLS and token: --tls/--tls-ca/--tls-cert/--tls-key (the certificate must
name the address dialled, e.g. IP:127.0.0.1) and --auth-token-file or env
PDSERVE_INTERNAL_AUTH_TOKEN.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
import time
from collections.abc import Callable

import grpc

from pdserve import auth_flags
from pdserve.channels import open_channel
from pdserve.v1 import worker_pb2, worker_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50061"
MAX_MESSAGE_BYTES = 4 * 2**20  # Drain and GetStats replies are small
RPC_TIMEOUT_S = 5.0  # one Drain or GetStats call; the worker serves them on reserved threads


class DrainOutcome(enum.Enum):
    DRAINED = "drained"
    UNREACHABLE = "unreachable"  # nothing answered at the address: nothing to drain
    GONE = "gone"  # stopped answering while draining: drained and exited
    TIMED_OUT = "timed out"

    @property
    def exit_code(self) -> int:
        return 1 if self is DrainOutcome.TIMED_OUT else 0


def drain_worker(
    stub: worker_pb2_grpc.WorkerStub,
    timeout_s: float,
    poll_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainOutcome:
    """Asks the worker behind `stub` to drain and waits up to `timeout_s` for it to be drained.
    Raises grpc.RpcError for any failure but the worker being (or becoming) unreachable."""
    deadline_s = clock() + timeout_s
    try:
        drained = stub.Drain(worker_pb2.DrainRequest(), timeout=RPC_TIMEOUT_S).drained
    except grpc.RpcError as error:
        if _unreachable(error):
            return DrainOutcome.UNREACHABLE
        raise
    while not drained:
        if clock() >= deadline_s:
            return DrainOutcome.TIMED_OUT
        sleep(poll_s)
        try:
            stats = stub.GetStats(worker_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as error:
            if _unreachable(error):
                return DrainOutcome.GONE
            raise
        drained = stats.info.drained
    return DrainOutcome.DRAINED


def _unreachable(error: grpc.RpcError) -> bool:
    # CANCELLED: the server stopped with the call in flight (GOAWAY); this client never
    # cancels its own calls, so it means the worker went away as well.
    return error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def add_drain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"the worker (default {DEFAULT_ADDRESS})"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=60.0,
        help="seconds to wait for it to be drained (default 60); then exit 1",
    )
    auth_flags.add_client_flags(parser, token_env=auth_flags.INTERNAL_TOKEN_ENV)
    parser.set_defaults(run=run_drain)


def run_drain(args: argparse.Namespace) -> int:
    try:
        security = auth_flags.client_security(args, os.environ, auth_flags.INTERNAL_TOKEN_ENV)
    except ValueError as exc:
        print(f"pdserve drain: {exc}", file=sys.stderr)
        return 2
    channel = open_channel(args.address, security.tls, security.token, MAX_MESSAGE_BYTES)
    started_s = time.monotonic()
    try:
        outcome = drain_worker(worker_pb2_grpc.WorkerStub(channel), args.timeout)
    except grpc.RpcError as error:
        message = f"{args.address}: {error.code().name}: {error.details()}"
        print(f"pdserve drain: {message}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    message = _describe(outcome, args.address, time.monotonic() - started_s, args.timeout)
    print(message, file=sys.stderr if outcome.exit_code else sys.stdout)
    return outcome.exit_code


def _describe(outcome: DrainOutcome, address: str, elapsed_s: float, timeout_s: float) -> str:
    if outcome is DrainOutcome.UNREACHABLE:
        return f"no worker answers at {address}: nothing to drain"
    if outcome is DrainOutcome.GONE:
        return f"worker at {address} drained and exited ({elapsed_s:.1f} s)"
    if outcome is DrainOutcome.TIMED_OUT:
        return f"pdserve drain: worker at {address} not drained after {timeout_s:g} s"
    return f"worker at {address} drained in {elapsed_s:.1f} s"
