"""Bearer tokens on pdserve's gRPC edges.

A caller sends `authorization: Bearer <token>` on every call (the channel interceptors here,
installed by pdserve/channels.py); a server with a token refuses a call without the same one
with UNAUTHENTICATED before its handler runs: the workers through `TokenServerInterceptor`
(sync gRPC), the router through router/auth.py (grpc.aio, with ErrorInfo). Tokens are
SecretStr from the config to the comparison, compared in constant time, and never logged.
Over plaintext a token is readable on the wire: give it with TLS off the loopback.
"""

from __future__ import annotations

import collections
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

AUTHORIZATION = "authorization"
REFUSAL = "missing or wrong bearer token"
# Answered without a token: load balancers, kubelets and grpcurl probe these.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def bearer(token: SecretStr) -> tuple[str, str]:
    """The metadata pair that carries `token`."""
    return AUTHORIZATION, f"Bearer {token.get_secret_value()}"


def is_authorized(metadata: Iterable[tuple[str, str | bytes]] | None, token: SecretStr) -> bool:
    """Whether `metadata` carries exactly `token`; constant time in the token's content."""
    expected = bearer(token)[1].encode()
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            given = value.encode() if isinstance(value, str) else value
            return hmac.compare_digest(given, expected)
    return False


def may_pass(handler_call_details: grpc.HandlerCallDetails, token: SecretStr) -> bool:
    """Whether a call may reach its handler: it carries `token`, or its service is open."""
    method = handler_call_details.method
    method = method.decode() if isinstance(method, bytes) else method
    return method.startswith(OPEN_SERVICES) or is_authorized(
        handler_call_details.invocation_metadata, token
    )


def read_token_file(path: Path) -> SecretStr:
    """The token in `path`, surrounding whitespace removed; ValueError if there is none."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the token file ({exc.strerror})") from None
    if not token:
        raise ValueError(f"{path}: the token file is empty")
    return SecretStr(token)


def token_from_file(data: Any, token_key: str, file_key: str) -> Any:
    """For a config's before-validator: `file_key`'s file read into `token_key`."""
    if not isinstance(data, dict) or data.get(file_key) is None:
        return data
    if data.get(token_key) is not None:
        raise ValueError(f"{token_key}: give {token_key} or {file_key}, not both")
    return data | {token_key: read_token_file(Path(data[file_key]))}


class TokenServerInterceptor(grpc.ServerInterceptor):
    """A sync server's gate: every call without the token (but to OPEN_SERVICES) ends
    UNAUTHENTICATED unserved."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or may_pass(handler_call_details, self._token):
            return handler
        return refusing(handler, _refuse)


def refusing(handler: grpc.RpcMethodHandler, refuse: Callable) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s shape whose behaviour is `refuse(request, context)`; the
    request is not parsed (no deserializer)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


def _refuse(request: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sync channel interceptor: adds the token to every call."""

    def __init__(self, token: SecretStr) -> None:
        self._pair = bearer(token)

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), self._pair),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def _call(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any):
        return continuation(self._details(details), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


class _AioBearer:
    """Adds the token to a grpc.aio call's metadata."""

    def __init__(self, token: SecretStr) -> None:
        self._pair = bearer(token)

    async def _call(self, continuation: Callable, details: grpc.aio.ClientCallDetails, request):
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._pair)
        return await continuation(details._replace(metadata=metadata), request)


class _AioUnaryBearer(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioBearer._call


class _AioStreamBearer(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioBearer._call


def aio_bearer_interceptors(token: SecretStr) -> list[grpc.aio.ClientInterceptor]:
    """For a grpc.aio channel: the token on every unary and server-streaming call (the only
    kinds the router makes). One object per kind: a channel files each under one kind only."""
    return [_AioUnaryBearer(token), _AioStreamBearer(token)]
