"""The router's bearer-token gate (pdserve/auth.py has the token rules).

Every public call — Generation, Cluster and any later service — must carry the router's token;
grpc.health.v1 and reflection answer without one (pdserve.auth.OPEN_SERVICES). A call without
it ends UNAUTHENTICATED with ErrorInfo(reason UNAUTHENTICATED, domain pdserve) before its
handler runs or its request is parsed.
"""

from __future__ import annotations

from typing import Any

import grpc
from pydantic import SecretStr

from pdserve.auth import REFUSAL, may_pass, refusing
from router.errors import Unauthenticated, to_status


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or may_pass(handler_call_details, self._token):
            return handler
        return refusing(handler, _refuse)


def interceptors(token: SecretStr | None) -> list[grpc.aio.ServerInterceptor]:
    """The public server's interceptors: the gate when a token is set, else none."""
    return [TokenInterceptor(token)] if token is not None else []


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort_with_status(to_status(Unauthenticated(REFUSAL), request_id=""))
