"""Semantic F2IPerturb: the largest verified brightness / contrast range t per image with U(t) < R_F.

``U(t)`` bounds ``max_{|θ_j| ≤ t} ‖f(x0 + Aθ) − f(x0)‖₂`` on the composed θ-graph (``composed.py``); the
engine's verified search returns only radii whose bound was evaluated below R_F. The ℓ2 certificate
converted to the parameter box (t = R / max‖Aθ‖ over the unit box, e.g. B = R/√d for brightness) is a
sound floor (``l2_equivalent``), so the answer is never worse than what the ℓ2 F2IPerturb radius implies.

A search the deadline cuts short raises ``DeadlineExceeded`` (never a silent fall back to
``l2_equivalent``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from services.perturb.engine import BoundEngine, DeadlineExceeded
from services.perturb.engine.search import SearchConfig, search_radius
from services.perturb.semantic.composed import ComposedBounds
from services.perturb.semantic.sp_layer import basis, check_kind, l2_conversion

METHODS = ("lipschitz", "ibp", "crown_ibp", "crown")


@dataclass(frozen=True)
class SemanticConfig:
    """Knobs of the semantic search."""

    pieces: int = 4  # sub-boxes per parameter axis (1-D: 4 intervals; 2-D: 4x4 boxes)
    radii_per_round: int = 2
    l2_equivalent_method: str = "lipschitz"  # engine method whose ℓ2 radius gives l2_equivalent
    auto_method: str = "crown"  # what AUTO runs on the θ-graph


@dataclass
class SemanticResult:
    """Per image [B]: certified box radius t, brightness B, contrast C, the ℓ2-implied t, method; and
    whether every search completed (False only when the AUTO ℓ2 search behind ``l2_equivalent`` stopped
    at the deadline)."""

    parameter_radius: np.ndarray
    brightness: np.ndarray  # |b| ≤ B certified (0 for contrast-only)
    contrast: np.ndarray  # |c − 1| ≤ C certified (0 for brightness-only)
    l2_equivalent: np.ndarray  # t implied by the ℓ2 radius alone (a sound floor of t)
    method_used: list[str]
    bound_evaluations: int
    completed: bool


class SemanticCertifier:
    """Certified brightness / contrast ranges of an encoder loaded by the bound engine."""

    def __init__(self, engine: BoundEngine, config: SemanticConfig = SemanticConfig()) -> None:
        self.engine, self.config = engine, config

    def certify(
        self,
        images: np.ndarray,
        feature_radius: np.ndarray,
        kind: str,
        *,
        method: str = "auto",
        relative_tolerance: float = 1e-3,
        contrast_per_brightness: float = 1.0,
        deadline: float | None = None,
    ) -> SemanticResult:
        """Largest verified t per image with max over the SP box of ‖f(x') − f(x)‖₂ < R_F (unclipped x').

        Raises ``DeadlineExceeded`` when the deadline passes before the θ-search meets its tolerance.
        """
        check_kind(kind)
        if method not in (*METHODS, "auto"):
            raise ValueError(f"method must be one of {METHODS + ('auto',)}, got {method!r}")
        if not (np.isfinite(contrast_per_brightness) and contrast_per_brightness > 0):
            raise ValueError("contrast_per_brightness must be finite and > 0")
        x = np.asarray(images)
        rf = np.asarray(feature_radius, dtype=np.float64).reshape(-1)
        if rf.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} images but {rf.shape[0]} feature radii")
        cfg, ecfg = self.config, self.engine.config
        l2 = self.engine.image_radius(
            x, rf, method=cfg.l2_equivalent_method, relative_tolerance=relative_tolerance,
            clip_to_pixel_box=False, deadline=deadline,
        )
        radius_l2 = l2.image_radius
        bases = [basis(xi, kind, contrast_per_brightness) for xi in x]
        l2_equivalent = np.array([l2_conversion(r, a) for r, a in zip(radius_l2, bases, strict=True)])
        # a black image has no contrast to change: every C is certified, reported as the search's ceiling
        l2_equivalent = np.minimum(l2_equivalent, SearchConfig().largest_radius)
        best, used, evals = l2_equivalent.copy(), ["lipschitz"] * len(x), 0
        run = cfg.auto_method if method == "auto" else method
        if run != "lipschitz" and len(x):
            composed: dict[int, ComposedBounds] = {}

            def evaluate(rows: np.ndarray, radii: np.ndarray) -> np.ndarray:
                out = np.full(len(rows), np.inf)
                if deadline is not None and time.monotonic() > deadline:
                    raise DeadlineExceeded("semantic search ran past the deadline")
                for i in np.unique(rows):
                    if i not in composed:
                        composed[i] = ComposedBounds(self.engine.graph, x[i], bases[i], pieces=cfg.pieces)
                    sel = rows == i
                    u = composed[i].shift_bound(radii[sel], run)
                    # the served model's rounding over an ℓ∞ box holding every x0 + Aθ, |θ_j| ≤ t
                    linf = radii[sel] * float(np.abs(bases[i]).sum(axis=0).max())
                    fp = self.engine.served_error(np.repeat(x[i : i + 1], len(linf), 0), linf, norm="linf")
                    out[sel] = u * (1 + ecfg.shift_margin_relative) + fp
                return out

            scfg = SearchConfig(relative_tolerance=relative_tolerance, radii_per_round=cfg.radii_per_round)
            guess = np.where(l2_equivalent > 0, l2_equivalent, 1e-3)
            res = search_radius(evaluate, rf, guess, l2_equivalent, scfg, deadline)
            if res.stopped_at_deadline:
                raise DeadlineExceeded("semantic search ran past the deadline")
            evals = res.evaluations
            for i in range(len(x)):
                if res.radius[i] > best[i]:
                    best[i], used[i] = res.radius[i], run
        best[rf <= 0] = 0.0
        zero = np.zeros_like(best)
        brightness = zero if kind == "contrast" else best.copy()
        contrast = {"brightness": zero, "contrast": best.copy()}.get(kind, best * contrast_per_brightness)
        return SemanticResult(best, brightness, contrast, l2_equivalent, used, evals, l2.completed)
