"""Errors a caller can cause, and their mapping to specific gRPC status codes (never INTERNAL for them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from reaas.tensors import TensorError
from services.common.quota import QuotaExceeded


class InvalidArgument(ValueError):
    """A request field violates its documented range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ModelMismatch(Exception):
    """The request is pinned to a model sha256 other than the served one."""


class NotFound(LookupError):
    """The request names a model (or output) this server does not serve."""


class Unavailable(RuntimeError):
    """The server is shutting down or its queue is closed; retrying elsewhere may succeed."""


@dataclass(frozen=True)
class Status:
    """A status code, its message and trailing metadata to send with it."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def check_model_pin(requested_sha256: str, served_sha256: str) -> None:
    """Raise ModelMismatch when a non-empty pin differs from the served model's sha256."""
    if requested_sha256 and requested_sha256.lower() != served_sha256:
        raise ModelMismatch(f"model_sha256: request pinned to {requested_sha256}, server has {served_sha256}")


def require_finite_range(field: str, value: float, low: float, high: float) -> float:
    """Return ``value`` if finite and within [low, high], else raise InvalidArgument naming ``field``."""
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(field, f"must be finite and in [{low:g}, {high:g}], got {value!r}")
    return value


def status_for(
    exc: BaseException, extra: dict[type[BaseException], grpc.StatusCode] | None = None
) -> Status | None:
    """The status for an exception a caller can cause (or a shutdown), None for a server bug."""
    for exc_type, code in (extra or {}).items():
        if isinstance(exc, exc_type):
            return Status(code, str(exc))
    if isinstance(exc, QuotaExceeded):
        trailers: tuple[tuple[str, str], ...] = ()
        if math.isfinite(exc.retry_after_s):
            trailers = (("retry-after-ms", str(max(1, math.ceil(exc.retry_after_s * 1000)))),)
        return Status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailers)
    if isinstance(exc, (TensorError, InvalidArgument)):
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, ModelMismatch):
        return Status(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, NotFound):
        return Status(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, TimeoutError):
        return Status(
            grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded before a verified result"
        )
    if isinstance(exc, Unavailable):
        return Status(grpc.StatusCode.UNAVAILABLE, str(exc))
    return None
