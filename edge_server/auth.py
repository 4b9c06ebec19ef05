"""Bearer-token check for every RPC except the gRPC health service (so health probes need no secret)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc

from splitdet.edge_server.stats import Stats

EXEMPT_PREFIX = "/grpc.health.v1.Health/"

HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without metadata ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str, stats: Stats | None = None) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self._expected = f"Bearer {token}".encode()
        self._stats = stats

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]], details
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIX):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization")
        if sent is not None and hmac.compare_digest(sent.encode(), self._expected):
            return handler
        message = "missing bearer token" if sent is None else "wrong bearer token"
        if self._stats is not None:
            self._stats.error(details.method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED.name)

        async def deny(request, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        factory = HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
        return factory(
            deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
