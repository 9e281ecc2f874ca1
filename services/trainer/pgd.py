"""Projected gradient ascent in an image ball: the one PGD of the repository.

RoCL's adversarial views (``objectives.rocl_adversarial_views``), the reliability suite's soundness attack
and the perturb-engine bench all call ``pgd_ascent``: maximize ``objective(x + δ)`` over ‖δ‖ ≤ r (ℓ2 or
ℓ∞, one radius per row), optionally with x + δ kept in the pixel box [0, 1]. Steps move along the
normalized gradient (ℓ2) or its sign (ℓ∞) by a fraction of the radius, on a cosine schedule; every
random draw comes from the caller's generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

NORMS = ("l2", "linf")
STARTS = ("sphere", "ball")
_TINY = 1e-12  # floor of a norm we divide by


@dataclass(frozen=True)
class AttackConfig:
    """Steps per restart, restarts, step size from ``initial_step`` to ``final_step`` (fractions of the
    radius, cosine-annealed; equal: constant), the random start (``sphere``: ‖δ‖ = r; ``ball``: ‖δ‖ = u·r,
    u ~ U(0, 1) per row), whether to return each row's best iterate (the objective must then give one
    value per row) or the last one (one restart), and the seed of ``generator()``."""

    steps: int = 100
    restarts: int = 5
    initial_step: float = 0.5
    final_step: float = 0.005
    start: str = "sphere"
    keep_best: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        if self.steps < 0 or self.restarts < 1:
            raise ValueError("steps must be >= 0 and restarts >= 1")
        if not self.keep_best and self.restarts != 1:
            raise ValueError("without keep_best only the last iterate is returned: use one restart")

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed`` (callers without a generator of their own)."""
        return torch.Generator().manual_seed(self.seed)


class AscentResult(NamedTuple):
    """δ [B, ...] (each row's best iterate, or the last one) and objective(x + δ) [B] (NaN when unknown)."""

    delta: torch.Tensor
    value: torch.Tensor


def step_schedule(steps: int, initial: float, final: float) -> np.ndarray:
    """Cosine-annealed step sizes [steps] from ``initial`` down to ``final`` (fractions of the radius)."""
    t = np.arange(steps) / max(steps - 1, 1)
    return final + 0.5 * (initial - final) * (1 + np.cos(np.pi * t))


def _rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row values [B] shaped to broadcast over ``like`` [B, ...]."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _row_norm(t: torch.Tensor) -> torch.Tensor:
    return _rows(t.flatten(1).norm(dim=1).clamp_min(_TINY), t)


def _into_box(delta: torch.Tensor, x: torch.Tensor, box: bool | torch.Tensor) -> torch.Tensor:
    if isinstance(box, torch.Tensor):
        return torch.where(_rows(box.to(torch.bool), delta), (x + delta).clamp(0.0, 1.0) - x, delta)
    return (x + delta).clamp(0.0, 1.0) - x if box else delta


def project(
    delta: torch.Tensor, x: torch.Tensor, radius: torch.Tensor, norm: str, box: bool | torch.Tensor
) -> torch.Tensor:
    """δ onto {‖δ‖ ≤ r}, then (all rows, or the rows where ``box`` [B] is set) onto x + δ ∈ [0, 1].

    Clamping towards x only shrinks each |δ_i|, so the result stays inside the ball."""
    r = _rows(radius.to(delta), delta)
    if norm == "l2":
        delta = delta * (r * _row_norm(delta).reciprocal()).clamp(max=1.0)
    else:
        delta = torch.maximum(torch.minimum(delta, r), -r)
    return _into_box(delta, x, box)


def _start(x: torch.Tensor, r: torch.Tensor, norm: str, start: str, gen: torch.Generator) -> torch.Tensor:
    """A random δ with ‖δ‖ = r (``sphere``) or u·r (``ball``): in the ball by construction, up to rounding."""
    delta = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    delta = delta / _row_norm(delta) * r if norm == "l2" else torch.sign(delta) * r
    if start == "ball":
        delta = delta * _rows(torch.rand(x.shape[0], generator=gen, dtype=x.dtype).to(x.device), x)
    return delta


def pgd_ascent(
    objective: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    radius: torch.Tensor,
    config: AttackConfig,
    generator: torch.Generator,
    *,
    norm: str = "l2",
    box: bool | torch.Tensor = True,
) -> AscentResult:
    """Maximize ``objective(x + δ)`` (values [B], or one scalar when ``keep_best`` is off) over the ``norm``
    ball of ``radius`` [B] around x [B, ...], inside [0, 1] where ``box`` (bool, or [B] per row) is set."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    r = _rows(radius.to(x), x)
    radius64 = radius.detach().to("cpu", torch.float64)  # step = size·r rounded once, to x's dtype
    sizes = step_schedule(config.steps, config.initial_step, config.final_step)
    best_value = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    best_delta = torch.zeros_like(x)

    def keep(delta: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        better = value > best_value
        return torch.where(_rows(better, x), delta, best_delta), torch.where(better, value, best_value)

    for _ in range(config.restarts):
        delta = _into_box(_start(x, r, norm, config.start, generator), x, box)
        for size in sizes:
            delta.requires_grad_(True)
            value = objective(x + delta)
            (grad,) = torch.autograd.grad(value.sum(), delta)
            with torch.no_grad():
                if config.keep_best:
                    best_delta, best_value = keep(delta.detach(), value.detach())
                step = _rows((float(size) * radius64).to(x), x)
                moved = step * grad / _row_norm(grad) if norm == "l2" else step * grad.sign()
                delta = project(delta.detach() + moved, x, radius, norm, box)
        if config.keep_best:
            with torch.no_grad():
                best_delta, best_value = keep(delta, objective(x + delta))
    if not config.keep_best:
        return AscentResult(delta.detach(), torch.full_like(best_value, torch.nan))
    return AscentResult(best_delta, best_value)


def pgd_feature_shift(
    f: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    radius: torch.Tensor,
    norm: str = "l2",
    clip: bool = True,
    cfg: AttackConfig = AttackConfig(),
) -> torch.Tensor:
    """Largest ‖f(x + δ) − f(x)‖₂ [B] found over the ball (a lower bound of the true maximum)."""
    with torch.no_grad():
        f0 = f(x)

    def shift(points: torch.Tensor) -> torch.Tensor:
        return (f(points) - f0).flatten(1).norm(dim=1)

    return pgd_ascent(shift, x, radius, cfg, cfg.generator(), norm=norm, box=clip).value
