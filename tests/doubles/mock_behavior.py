"""What a mock worker does, as data: its token formula, its behaviour knobs and its call log
(tests/doubles/mock_worker.py serves them; tests import them from there too)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from kv_transfer.pages import KVLayout, TransportBackend
from pdserve.worker_errors import WorkerReason

SMALL_LAYOUT = KVLayout(num_layers=2, num_kv_heads=1, head_dim=8, page_size=4, dtype="float32")


def mock_token(
    prompt: Sequence[int], index: int, vocab_size: int, eos_token_ids: Sequence[int] = ()
) -> int:
    token = (sum(prompt) * 31 + index * 7) % vocab_size
    while token in eos_token_ids:
        token = (token + 1) % vocab_size
    return token


class WorkerMethod(enum.StrEnum):
    PREFILL = "Prefill"
    DECODE = "Decode"
    RELEASE_LEASE = "ReleaseLease"
    ABORT = "Abort"
    GET_STATS = "GetStats"
    WATCH_PAGE_EVENTS = "WatchPageEvents"
    DRAIN = "Drain"


@dataclass(frozen=True, slots=True)
class Call:
    method: WorkerMethod
    key: str = ""  # request id, or transfer id for ReleaseLease


@dataclass(slots=True)
class MockBehavior:
    vocab_size: int = 49152
    eos_token_ids: tuple[int, ...] = (2,)
    eos_at: int | None = None  # token index that is EOS instead of the formula's token
    prefill_delay_s: float = 0.0
    decode_delay_s: float = 0.0  # per token
    num_pages: int = 256
    fail_decode_after: int | None = None  # UNAVAILABLE after this many streamed tokens
    kv_failure: WorkerReason | None = None  # a handed-off Decode's pull fails with it (acked)
    report_kv_transfer_s: float = 0.002
    kv_backends: tuple[TransportBackend, ...] = (TransportBackend.SHM,)  # what GetStats reports
    device: str = "cpu"  # where GetStats says its KV cache lives ("" as a worker without it)
    cache_pages: int = 0  # > 0: a real prefix cache of this many pages (instead of num_pages)
    prefill_s_per_token: float = 0.0  # modelled compute per uncached prompt token; cache only
    page_wait_s: float = 0.0  # cache only: a prefill waits this long for pages, then fails

    def __post_init__(self) -> None:
        if (self.prefill_s_per_token or self.page_wait_s) and not self.cache_pages:
            raise ValueError("prefill_s_per_token and page_wait_s need the cache: set cache_pages")
