"""The per-call shell around a servicer method: tracing span, quota, usage, metrics and status mapping.

A servicer method decorated with :func:`unary_rpc` receives a :class:`Call` instead of the raw context and
just converts and delegates; any caller mistake it raises becomes a specific status code.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace

from services.common.auth import Principal, current_principal
from services.common.metrics import ServerMetrics, Usage
from services.common.quota import QuotaLimiter
from services.common.status import Status, status_for

log = logging.getLogger(__name__)

_NO_DEADLINE_S = 1e8  # grpc reports "no deadline" as a remaining time of centuries


@dataclass
class ServiceRuntime:
    """What all calls of one server share."""

    service: str
    metrics: ServerMetrics
    tracer: trace.Tracer
    quota: QuotaLimiter
    default_images_per_minute: int = 0
    draining: threading.Event = field(default_factory=threading.Event)  # set once shutdown begins
    # () -> whether any span processor listens; None = always build spans
    tracing: Callable[[], bool] | None = None


class Call:
    """One in-flight call: who is calling, what it has been charged, and its deadline."""

    def __init__(self, runtime: ServiceRuntime, method: str, context: grpc.ServicerContext):
        self.runtime = runtime
        self.method = method
        self.context = context
        self.principal: Principal = current_principal()
        self.queries = 0

    def charge(self, images: int) -> None:
        """Count ``images`` queries against the caller's per-minute quota (raises QuotaExceeded)."""
        quota = self.principal.images_per_minute or self.runtime.default_images_per_minute
        self.runtime.quota.acquire(self.principal.name, images, quota)
        self.queries += images
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("reaas.queries", images)

    def deadline(self, margin_s: float = 0.0, reserve_fraction: float = 0.0) -> float | None:
        """Absolute ``time.monotonic()`` by which to answer (None without a client deadline): the client's
        deadline less ``margin_s`` to send the reply and ``reserve_fraction`` of the time left (work that
        checks the deadline only between steps, e.g. a radius search round, may overrun it by one step)."""
        remaining_s = self.context.time_remaining()
        if remaining_s is None or remaining_s > _NO_DEADLINE_S:
            return None
        if remaining_s <= margin_s:
            raise TimeoutError(
                f"deadline too close: {remaining_s * 1000:.0f} ms left, "
                f"{margin_s * 1000:.0f} ms needed to reply"
            )
        return time.monotonic() + (remaining_s - margin_s) * (1.0 - reserve_fraction)


def _attach_usage(response, usage: Usage) -> None:
    fields = response.DESCRIPTOR.fields_by_name
    if "usage" in fields:
        response.usage.queries = usage.queries
        response.usage.request_bytes = usage.request_bytes
        response.usage.response_bytes = usage.response_bytes
    elif "parameters" in fields and usage.queries:  # KServe responses: usage as int64 parameters
        response.parameters["usage_queries"].int64_param = usage.queries
        response.parameters["usage_request_bytes"].int64_param = usage.request_bytes
        response.parameters["usage_response_bytes"].int64_param = usage.response_bytes


def _abort(context: grpc.ServicerContext, status: Status) -> None:
    if status.trailing_metadata:
        context.set_trailing_metadata(status.trailing_metadata)
    context.abort(status.code, status.message)


async def _abort_async(context: grpc.aio.ServicerContext, status: Status) -> None:
    if status.trailing_metadata:
        context.set_trailing_metadata(status.trailing_metadata)
    await context.abort(status.code, status.message)


class _CallScope:
    """What ``unary_rpc`` does around a call: span (when anything records), status mapping, usage, metrics."""

    def __init__(self, servicer, name: str, context):
        self.servicer = servicer
        self.runtime: ServiceRuntime = servicer.runtime
        self.name = name
        self.call = Call(self.runtime, name, context)
        self.started = time.perf_counter()
        self.status: Status | None = None
        if self.runtime.tracing is not None and not self.runtime.tracing():
            self._span_cm = contextlib.nullcontext(trace.INVALID_SPAN)
        else:
            self._span_cm = self.runtime.tracer.start_as_current_span(
                f"{self.runtime.service}/{name}",
                kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": name, "reaas.key": self.call.principal.name},
            )

    def __enter__(self) -> _CallScope:
        self.span = self._span_cm.__enter__()
        return self

    def failed(self, exc: Exception) -> None:
        """Map ``exc`` to the status the caller gets (INTERNAL, logged, for anything it did not cause)."""
        status = status_for(exc, getattr(self.servicer, "error_codes", None))
        if status is None:
            log.exception("%s/%s failed", self.runtime.service, self.name)
            self.span.record_exception(exc)
            status = Status(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")
        self.span.set_status(trace.StatusCode.ERROR, status.message)
        self.status = status

    def succeeded(self, request, response) -> None:
        """Attach and record the call's usage."""
        usage = Usage(self.call.queries, request.ByteSize(), response.ByteSize())
        _attach_usage(response, usage)
        self.runtime.metrics.record_usage(self.name, self.call.principal.name, usage)

    def __exit__(self, *exc_info) -> None:
        code = self.status.code if self.status is not None else grpc.StatusCode.OK
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        self._span_cm.__exit__(*exc_info)
        self.runtime.metrics.record_call(self.name, code.name, time.perf_counter() - self.started)


def unary_rpc(method: Callable) -> Callable:
    """Decorate ``method(self, request, call) -> response`` (or ``async def``, for the grpc.aio server);
    ``self.runtime`` is the ServiceRuntime.

    ``self.error_codes`` ({exception type: StatusCode}, optional) adds service-specific mappings.
    """
    name = method.__name__

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_handler(self, request, context: grpc.aio.ServicerContext):
            with _CallScope(self, name, context) as scope:
                try:
                    response = await method(self, request, scope.call)
                except Exception as exc:  # noqa: BLE001 - every exception becomes a status
                    scope.failed(exc)
                else:
                    scope.succeeded(request, response)
            if scope.status is not None:
                await _abort_async(context, scope.status)
            return response

        return async_handler

    @functools.wraps(method)
    def handler(self, request, context: grpc.ServicerContext):
        with _CallScope(self, name, context) as scope:
            try:
                response = method(self, request, scope.call)
            except Exception as exc:  # noqa: BLE001 - every exception becomes a status
                scope.failed(exc)
            else:
                scope.succeeded(request, response)
        if scope.status is not None:
            _abort(context, scope.status)
        return response

    return handler
