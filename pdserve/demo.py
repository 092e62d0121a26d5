"""`make demo`: start a local 1 prefill + 1 decode cluster, stream a few answers, print the
figures of each request (TTFT, TPOT, KV transfer time, where it ran), then stop."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from pdserve import client
from pdserve.config import ClusterConfig
from pdserve.launch import BackgroundCluster

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
)


def main() -> int:
    console = Console(width=120)
    console.print("[bold]starting a local cluster: 1 prefill + 1 decode worker on smollm2-135m…")
    cluster = BackgroundCluster(ClusterConfig(port=0)).start()
    try:
        rows = [_ask(console, cluster.address, question) for question in QUESTIONS]
    finally:
        cluster.stop()
    console.print(_figures(rows))
    return 0


def _ask(console: Console, address: str, question: str) -> tuple[str, client.Completion]:
    console.print(f"\n[bold cyan]> {question}")
    channel, stub = client.connect(address)
    completion = client.Completion()
    try:
        for response in stub.Generate(
            client.prompt_request(question, chat=True, max_tokens=96), timeout=300
        ):
            completion.add(response)
            if response.HasField("chunk"):
                console.print(response.chunk.text, end="", soft_wrap=True, highlight=False)
    finally:
        channel.close()
    console.print()
    return question, completion


def _figures(rows: list[tuple[str, client.Completion]]) -> Table:
    table = Table(title="per request (client-side TTFT/TPOT, server-side prefill and KV transfer)")
    for column in (
        "question",
        "tokens",
        "TTFT ms",
        "TPOT ms",
        "prefill ms",
        "KV transfer ms",
        "route",
    ):
        table.add_column(column)
    for question, c in rows:
        timing = c.final.timing
        table.add_row(
            question[:32],
            str(len(c.token_ids)),
            f"{c.ttft_s * 1e3:.0f}",
            f"{(c.tpot_s or 0) * 1e3:.1f}",
            f"{timing.prefill_s * 1e3:.0f}",
            f"{timing.kv_transfer_s * 1e3:.2f}",
            f"{c.final.prefill_worker_id} → {c.final.decode_worker_id}",
        )
    return table


if __name__ == "__main__":
    sys.exit(main())
