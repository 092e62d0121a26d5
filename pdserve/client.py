"""A small synchronous client of the public API, used by the CLI, the demo and tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from pydantic import SecretStr

from pdserve.channels import open_channel
from pdserve.tls import TLSConfig
from pdserve.v1 import generation_pb2, generation_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 8 * 2**20  # the router's default cap (RouterConfig.grpc_max_message_bytes)


@dataclass(slots=True)
class Completion:
    """What one Generate call returned, with latencies measured from `started_s`."""

    started_s: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    final: generation_pb2.Final | None = None
    token_times_s: list[float] = field(default_factory=list)  # since started_s, one per token

    def add(self, response: generation_pb2.GenerateResponse) -> None:
        if response.HasField("final"):
            self.final = response.final
            return
        now = time.monotonic() - self.started_s
        self.token_ids += response.chunk.token_ids
        self.token_times_s += [now] * len(response.chunk.token_ids)
        self.text += response.chunk.text

    @property
    def ttft_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with fewer than two)."""
        if len(self.token_times_s) < 2:
            return None
        return (self.token_times_s[-1] - self.token_times_s[0]) / (len(self.token_times_s) - 1)


def prompt_request(
    prompt: str, *, chat: bool = False, **sampling
) -> generation_pb2.GenerateRequest:
    params = generation_pb2.SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
    if chat:
        message = generation_pb2.ChatMessage(role="user", content=prompt)
        return generation_pb2.GenerateRequest(
            chat=generation_pb2.ChatInput(messages=[message]), sampling=params
        )
    return generation_pb2.GenerateRequest(prompt=prompt, sampling=params)


def generate(
    stub: generation_pb2_grpc.GenerationStub,
    request: generation_pb2.GenerateRequest,
    timeout_s: float | None = None,
) -> Completion:
    """Runs one request to its end; raises grpc.RpcError with the server's status."""
    completion = Completion()
    for response in stub.Generate(request, timeout=timeout_s):
        completion.add(response)
    return completion


def open_public_channel(
    address: str = DEFAULT_ADDRESS, tls: TLSConfig | None = None, token: SecretStr | None = None
) -> grpc.Channel:
    """A channel to a router's public API: TLS with `tls`, the bearer `token` on every call."""
    return open_channel(address, tls, token, MAX_MESSAGE_BYTES)


def connect(
    address: str = DEFAULT_ADDRESS, tls: TLSConfig | None = None, token: SecretStr | None = None
) -> tuple[grpc.Channel, generation_pb2_grpc.GenerationStub]:
    channel = open_public_channel(address, tls, token)
    return channel, generation_pb2_grpc.GenerationStub(channel)


def error_info(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo (reason, metadata: request_id, field, worker_id…) of a failed call, from
    its grpc-status-details-bin trailer; ("", {}) when it carries none."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for packed in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if packed.Unpack(info):
                return info.reason, dict(info.metadata)
    return "", {}
