"""API-key authentication: ``authorization: Bearer <key>`` metadata checked by a server interceptor.

The interceptor resolves the key to a :class:`Principal` and exposes it to the handler through a context
variable (the sync server runs interceptor wrapper and handler in the same worker thread; the grpc.aio server
runs both in the call's task).
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

# Health probes, reflection and KServe liveness stay open so orchestrators and grpcurl need no key.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name (used in usage metrics) and its quota (0 = the server default)."""

    name: str
    images_per_minute: int = 0


ANONYMOUS = Principal("anonymous")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("reaas_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    """The principal of the call running in this thread (ANONYMOUS when auth is off)."""
    return _current.get()


def load_api_keys(path: Path) -> dict[str, Principal]:
    """Read ``<name> <key> [images_per_minute]`` lines ('#' comments allowed) into {key: Principal}."""
    keys: dict[str, Principal] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise ValueError(f"{path}:{number}: expected '<name> <key> [images_per_minute]'")
        quota = int(parts[2]) if len(parts) == 3 else 0
        if quota < 0:
            raise ValueError(f"{path}:{number}: images_per_minute must be >= 0")
        keys[parts[1]] = Principal(parts[0], quota)
    if not keys:
        raise ValueError(f"{path}: no API keys")
    return keys


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _abort_handler(message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _abort_handler_async(message: str) -> grpc.RpcMethodHandler:
    async def abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """Reject calls without a known bearer key (UNAUTHENTICATED); bind the caller's Principal otherwise."""

    def __init__(self, keys: dict[str, Principal] | None):
        self._keys = keys  # None: auth disabled, every caller is ANONYMOUS

    def _resolve(self, token: str | None) -> Principal | None:
        if token is None:
            return None
        # Constant-time comparison against every key so timing does not reveal key prefixes.
        found = None
        for key, principal in self._keys.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                found = principal
        return found

    def _admit(self, handler_call_details) -> Principal | str | None:
        """None for a public method or auth off, the caller's Principal, or why the call is refused."""
        method = handler_call_details.method
        if self._keys is None or method.startswith(PUBLIC_METHOD_PREFIXES):
            return None
        token = _bearer_token(handler_call_details.invocation_metadata)
        principal = self._resolve(token)
        if principal is None:
            return "missing 'authorization: Bearer <key>' metadata" if token is None else "unknown API key"
        return principal

    def intercept_service(self, continuation, handler_call_details):
        admitted = self._admit(handler_call_details)
        if isinstance(admitted, str):
            return _abort_handler(admitted)
        handler = continuation(handler_call_details)
        if admitted is None or handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def with_principal(request, context):
            token_ = _current.set(admitted)
            try:
                return inner(request, context)
            finally:
                _current.reset(token_)

        return handler._replace(unary_unary=with_principal)


class AsyncApiKeyInterceptor(ApiKeyInterceptor, grpc.aio.ServerInterceptor):
    """:class:`ApiKeyInterceptor` for the grpc.aio server (each call is its own task, so its own context)."""

    async def intercept_service(self, continuation, handler_call_details):
        admitted = self._admit(handler_call_details)
        if isinstance(admitted, str):
            return _abort_handler_async(admitted)
        handler = await continuation(handler_call_details)
        if admitted is None or handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def with_principal(request, context):
            _current.set(admitted)  # the call's task has its own copy of the context
            return await inner(request, context)

        return handler._replace(unary_unary=with_principal)
