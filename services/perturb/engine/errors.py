"""Exceptions of the bound engine."""

from __future__ import annotations

from services.perturb.engine.onnx_graph import UnsupportedModelError


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before a verified radius could be produced."""


__all__ = ["DeadlineExceeded", "UnsupportedModelError"]
