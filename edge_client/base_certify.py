"""BC: the largest feature radius R_F whose certified margin stays positive, by bisection (lower end only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_client.bound_propagation import METHODS, NORMS, margin_lower_bound
from edge_client.mlp import MLP


@dataclass(frozen=True)
class BCConfig:
    """Bound method, feature-ball norm and search tolerances of the base-classifier certificate."""

    method: str = "crown"  # "ibp" or "crown"
    norm: str = "l2"  # feature-ball norm: "l2" or "linf"
    relative_tolerance: float = 1e-3  # stop when (hi - lo) <= relative_tolerance * lo
    absolute_tolerance: float = 1e-6  # in units of the spread S: stop when hi - lo <= this * S
    max_steps: int = 80  # bound evaluations per input, bracketing included
    chunk_size: int = 16  # inputs bounded together (CROWN memory grows as chunk * width^2)

    def __post_init__(self) -> None:
        if self.method not in METHODS or self.norm not in NORMS:
            raise ValueError(f"method must be in {METHODS} and norm in {NORMS}")


def certify_feature_radius(mlp: MLP, features: np.ndarray, config: BCConfig = BCConfig()
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class [B] and certified feature radius R_F [B] (raw feature units) of each feature vector.

    R_F is always a radius at which the margin lower bound was evaluated and found > 0 (or 0), never an
    unverified midpoint, so ``g(z') = g(z)`` for every ``||z' - z|| <= R_F``.
    """
    features = np.atleast_2d(np.asarray(features, dtype=np.float64))
    layers = mlp.folded_layers(np.float64)
    predictions = np.argmax(mlp.logits(features), axis=1)
    radii = np.zeros(features.shape[0])
    for start in range(0, features.shape[0], config.chunk_size):
        part = slice(start, start + config.chunk_size)
        radii[part] = _bisect(layers, features[part], predictions[part], mlp.spread, config)
    return predictions.astype(np.int64), radii


def _bisect(layers, centers: np.ndarray, labels: np.ndarray, spread: float, config: BCConfig) -> np.ndarray:
    """Vectorized bracketing then bisection; returns the verified lower ends [B]."""
    batch = centers.shape[0]

    def verified(radius: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ok = np.zeros(batch, dtype=bool)
        if mask.any():
            ok[mask] = margin_lower_bound(layers, centers[mask], radius[mask], labels[mask],
                                          config.norm, config.method) > 0
        return ok

    lo = np.zeros(batch)
    alive = verified(lo, np.ones(batch, dtype=bool))  # margin > 0 at the centre itself (no tie)
    hi = np.full(batch, spread)
    bracketing = alive.copy()
    steps = 1
    while bracketing.any() and steps < config.max_steps:
        ok = verified(hi, bracketing)
        grow = bracketing & ok
        lo[grow] = hi[grow]
        hi[grow] *= 2.0
        bracketing &= ok
        steps += 1
    searching = alive & ~bracketing
    abs_tol = config.absolute_tolerance * spread
    while steps < config.max_steps:
        searching &= (hi - lo > config.relative_tolerance * lo) & (hi - lo > abs_tol)
        if not searching.any():
            break
        mid = np.where(searching, (lo + hi) / 2, lo)
        ok = verified(mid, searching)
        lo = np.where(searching & ok, mid, lo)
        hi = np.where(searching & ~ok, mid, hi)
        steps += 1
    return lo
