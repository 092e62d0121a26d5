"""Every gRPC channel pdserve opens: TLS or plaintext, the bearer token, the size caps.

The router's channels to workers (grpc.aio), the decode worker's to prefill peers and the
public client's (sync) all come from here, so no edge is left without one of the three.
"""

from __future__ import annotations

import grpc
from pydantic import SecretStr

from pdserve.auth import BearerToken, aio_bearer_interceptors
from pdserve.tls import TLSConfig, channel_credentials


def message_size_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """gRPC's own caps: a larger message fails RESOURCE_EXHAUSTED, never reaches a handler."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """A client channel's: the size caps; its own subchannels, so a peer that restarted on an
    address another channel saw fail is not waited on through that channel's reconnect
    backoff; and a backoff that tops out at seconds, not gRPC's default two minutes."""
    return [
        *message_size_options(max_message_bytes),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


def tls_options(tls: TLSConfig | None) -> list[tuple[str, str]]:
    """A TLS channel verifies the server as `tls.server_name` when one is set."""
    if tls is None or tls.server_name is None:
        return []
    return [("grpc.ssl_target_name_override", tls.server_name)]


def open_channel(
    address: str, tls: TLSConfig | None, token: SecretStr | None, max_message_bytes: int
) -> grpc.Channel:
    options = channel_options(max_message_bytes) + tls_options(tls)
    credentials = channel_credentials(tls)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    return channel if token is None else grpc.intercept_channel(channel, BearerToken(token))


def open_aio_channel(
    address: str, tls: TLSConfig | None, token: SecretStr | None, max_message_bytes: int
) -> grpc.aio.Channel:
    options = channel_options(max_message_bytes) + tls_options(tls)
    interceptors = aio_bearer_interceptors(token) if token is not None else None
    credentials = channel_credentials(tls)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
