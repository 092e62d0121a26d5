"""What the `pdserve` commands print: a generation's text and figures, a Scale's outcome,
the status table (cli.py parses the flags and makes the calls)."""

from __future__ import annotations

import sys

from pdserve import client
from pdserve.v1 import cluster_pb2, generation_pb2


def print_stream(
    stub, request: generation_pb2.GenerateRequest, timeout_s: float
) -> client.Completion:
    completion = client.Completion()
    for response in stub.Generate(request, timeout=timeout_s):
        completion.add(response)
        if response.HasField("chunk"):
            sys.stdout.write(response.chunk.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return completion


def print_figures(completion: client.Completion) -> None:
    final = completion.final
    ttft = f"{completion.ttft_s * 1e3:.1f} ms" if completion.ttft_s is not None else "-"
    tpot = f"{completion.tpot_s * 1e3:.1f} ms" if completion.tpot_s is not None else "-"
    reason = generation_pb2.FinishReason.Name(final.finish_reason) if final else "-"
    usage = final.usage if final else None
    print(
        f"[ttft {ttft} · tpot {tpot} · {len(completion.token_ids)} tokens · {reason}"
        + (
            f" · prompt {usage.prompt_tokens} (cached {usage.cached_prompt_tokens})"
            if usage
            else ""
        )
        + (
            f" · {final.prefill_worker_id or final.decode_worker_id} → {final.decode_worker_id}"
            if final
            else ""
        )
        + "]",
        file=sys.stderr,
    )


def print_scale(response: cluster_pb2.ScaleResponse) -> None:
    for worker_id in response.added:
        print(f"added   {worker_id}")
    for removed in response.removed:
        how = "drained" if removed.drained else "NOT drained: stopped at the drain timeout"
        print(f"removed {removed.worker_id} ({how}, {removed.drain_s:.1f} s)")
    pools = response.pools
    print(
        f"pools: {pools.num_prefill} prefill, {pools.num_decode} decode, "
        f"{pools.num_colocated} colocated"
    )


# (header, WorkerInfo field): short headers keep the table readable in 80 columns.
_STATUS_COLUMNS = (
    ("worker", "worker_id"),
    ("role", "role"),
    ("pid", "pid"),
    ("node", "node"),
    ("epoch", "epoch"),
    ("alive", "alive"),
    ("pages", "pages_in_use"),
    ("of", "pages_total"),
    ("held", "request_pages"),
    ("queue", "queue_len"),
    ("run", "running"),
    ("leases", "leases_outstanding"),
    ("xfer", "transfers_in_flight"),
    ("ok", "integrity_ok"),
    ("metrics", "metrics_port"),
)


def print_status_table(info: generation_pb2.ServerInfo) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"pdserve {info.version} · {info.model} · {info.requests_in_flight} in flight"
    )
    for header, _ in _STATUS_COLUMNS:
        table.add_column(header, no_wrap=True)
    table.add_column("drain", no_wrap=True)
    for worker in info.workers:
        cells = [str(getattr(worker, field)) for _, field in _STATUS_COLUMNS]
        table.add_row(*cells, _drain_state(worker))
    Console(width=160).print(table)


def _drain_state(worker: generation_pb2.WorkerInfo) -> str:
    if worker.drained:
        return "drained"
    return "draining" if worker.draining else "-"
