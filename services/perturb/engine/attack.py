"""PGD attack on the feature shift: a lower bound of ``max_{δ in ball} ‖f(x+δ) - f(x)‖₂`` (tests, bench)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttackConfig:
    """PGD knobs: steps per restart, restarts, step size relative to the radius, seed."""

    steps: int = 100
    restarts: int = 5
    step_fraction: float = 0.1
    seed: int = 0


def _project(
    delta: torch.Tensor, x: torch.Tensor, radius: torch.Tensor, norm: str, clip: bool
) -> torch.Tensor:
    r = radius.reshape(-1, *([1] * (x.dim() - 1)))
    if norm == "l2":
        n = delta.flatten(1).norm(dim=1).reshape(r.shape).clamp(min=1e-30)
        delta = delta * torch.clamp(r / n, max=1.0)
    else:
        delta = torch.maximum(torch.minimum(delta, r), -r)
    if clip:  # box after ball keeps the ball: clamping a coordinate towards x only shrinks |δ|
        delta = (x + delta).clamp(0.0, 1.0) - x
    return delta


def pgd_feature_shift(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    radius: torch.Tensor,
    norm: str = "l2",
    clip: bool = True,
    cfg: AttackConfig = AttackConfig(),
) -> torch.Tensor:
    """Largest ``‖f(x+δ) - f(x)‖₂`` [B] found by PGD with random restarts; x [B, *in], radius [B]."""
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        f0 = f(x)
    best = torch.zeros(x.shape[0], dtype=x.dtype)
    r = radius.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    for _ in range(cfg.restarts):
        delta = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if norm == "l2":
            delta = delta / delta.flatten(1).norm(dim=1).reshape(r.shape).clamp(min=1e-30) * r
        else:
            delta = torch.sign(delta) * r
        delta = _project(delta, x, radius, norm, clip)
        for _ in range(cfg.steps):
            delta.requires_grad_(True)
            shift = (f(x + delta) - f0).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(shift.sum(), delta)
            with torch.no_grad():
                best = torch.maximum(best, shift.detach())
                if norm == "l2":
                    g = grad / grad.flatten(1).norm(dim=1).reshape(r.shape).clamp(min=1e-30)
                else:
                    g = grad.sign()
                delta = _project(delta.detach() + cfg.step_fraction * r * g, x, radius, norm, clip)
        with torch.no_grad():
            best = torch.maximum(best, (f(x + delta) - f0).flatten(1).norm(dim=1))
    return best
