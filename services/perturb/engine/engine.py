"""BoundEngine: the public facade — load an ONNX encoder, bound its feature shift, certify image radii.

The engine does no I/O and runs no ONNX Runtime: the served features are the Feature-API's
(``services.encoder.onnx_model``); their rounding is bounded a priori (``float_error.py``).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from reaas.methods import BOUND_METHODS
from services.perturb.engine.ball import InputBall
from services.perturb.engine.crown import (
    CrownConfig,
    crown_intermediate_bounds,
    lipschitz_fallback,
    output_shift_bounds,
)
from services.perturb.engine.errors import DeadlineExceeded
from services.perturb.engine.float_error import FORMATS, FloatErrorModel
from services.perturb.engine.ibp import Bounds, interval_bounds
from services.perturb.engine.lipschitz import lipschitz_info
from services.perturb.engine.local_lipschitz import local_lipschitz
from services.perturb.engine.onnx_graph import BoundGraph, build_bound_graph, fold_affine, load_onnx_model
from services.perturb.engine.operator_norms import NormMargin, with_margin
from services.perturb.engine.search import SearchConfig, SearchOutcome, search_radius

METHODS = BOUND_METHODS
# an explicit method whose search starts from a cheaper method's radius (a guess it verifies itself)
SEED_METHOD = {"crown": "crown_ibp"}


@dataclass(frozen=True)
class EngineConfig:
    """All engine knobs in one place."""

    norm_margin: NormMargin = field(default_factory=NormMargin)
    crown: CrownConfig = field(default_factory=CrownConfig)
    radii_per_round: int = 2  # candidates per search round (1 core: fewer evaluations beat fewer rounds)
    # the arithmetic the Feature-API serves in ("float32", or "reduced" for TF32 / FP16): its proven
    # rounding error E(ball) + E(x) is added to every bound (float_error.py)
    served_format: str = "float32"
    # U is inflated by rel·U: the float64 rounding of the bound computation itself
    shift_margin_relative: float = 1e-6
    rows_per_pass: int = 64  # (image, radius) rows bounded together
    crown_rows_per_pass: int = 2  # full CROWN: few rows, many neurons per backward pass
    # AUTO runs full CROWN only with a deadline leaving at least this many seconds per image
    auto_crown_seconds_per_image: float = 60.0


@dataclass
class RadiusResult:
    """Verified image radii [B] float64, the method that certified each, the bound evaluations spent, and
    whether the search completed: False when AUTO stopped at the deadline and returned the radii verified
    so far (sound, possibly smaller than more time would give). Explicit methods raise instead."""

    image_radius: np.ndarray
    method_used: list[str]
    bound_evaluations: int
    completed: bool


@dataclass
class CurveResult:
    """Sound upper bounds U(r_k) [B, K] float64 of the feature shift, non-decreasing in r_k, and whether
    every planned method ran: False when AUTO stopped at the deadline (still sound, possibly looser)."""

    bounds: np.ndarray
    completed: bool


def _check_method(method: str) -> None:
    if method not in (*METHODS, "auto"):
        raise ValueError(f"unknown method {method!r}")


class _Prepared:
    """Validated images of one request; node values at x0 are computed on first use."""

    def __init__(self, graph: BoundGraph, float_error: FloatErrorModel, x64: torch.Tensor) -> None:
        self._graph, self._float_error, self.x64 = graph, float_error, x64

    @functools.cached_property
    def centers(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return self._graph.forward_all(self.x64)

    @functools.cached_property
    def served_centers(self) -> list[torch.Tensor]:
        """Exact values of the unfolded (served) graph's nodes at x0."""
        with torch.no_grad():
            return self._float_error.centers(self.x64)

    @functools.cached_property
    def point_error(self) -> np.ndarray:
        """[B] bound of ‖f̂(x0) − f(x0)‖₂: the served feature's own rounding error."""
        with torch.no_grad():
            return self._float_error.at_points(self.served_centers).numpy()


@dataclass(frozen=True)
class _Query:
    """One validated image_radius request: images, R_F [B], the ball, the deadline, the search knobs and
    the first guess R_F / L [B]."""

    prep: _Prepared
    rf: np.ndarray
    norm: str
    clip: bool
    deadline: float | None
    search: SearchConfig
    guess: np.ndarray


class BoundEngine:
    """Sound image-space radii for an ONNX encoder f: images [B, C, H, W] in [0, 1] -> features [B, D]."""

    def __init__(self, model: onnx.ModelProto, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        unfolded = build_bound_graph(model, fold=False)  # one node per served op: what the runtime rounds
        self.graph: BoundGraph = fold_affine(unfolded)  # what the bounds use
        self.lipschitz = lipschitz_info(self.graph, config.norm_margin)
        if config.served_format not in FORMATS:
            raise ValueError(f"served_format must be one of {sorted(FORMATS)}, got {config.served_format!r}")
        self.float_error = FloatErrorModel(unfolded, self.graph, FORMATS[config.served_format])
        self.input_shape: tuple[int, int, int] = tuple(self.graph.input_shape)  # type: ignore[assignment]
        self.feature_dim: int = int(self.graph.nodes[self.graph.output].shape[0])
        self.lipschitz_bound_l2: float = float(self.lipschitz.output_l2)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike | bytes, config: EngineConfig = EngineConfig()) -> BoundEngine:
        """Load an encoder from an ONNX file (or bytes); raises UnsupportedModelError on unsupported ops."""
        return cls(load_onnx_model(path), config)

    def _check_images(self, images: np.ndarray, require_box: bool) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"images must be [B, {', '.join(map(str, self.input_shape))}], got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("images contain non-finite values")
        if require_box and (x.min(initial=0.0) < 0.0 or x.max(initial=0.0) > 1.0):
            raise ValueError("images must lie in [0, 1] when clip_to_pixel_box is set")
        return x

    def _shift_bound(
        self, method: str, ball: InputBall, centers: list[torch.Tensor], deadline: float | None
    ) -> tuple[torch.Tensor, Bounds | None]:
        """[N] sound upper bounds of ‖f(x) - f(x0)‖₂ over ``ball`` (exact math, before the fp margin),
        with the node intervals the method computed (None for LIPSCHITZ)."""
        if method == "lipschitz":
            return lipschitz_fallback(self.lipschitz, ball), None
        if method == "local_lipschitz":
            bounds = interval_bounds(self.graph, ball, centers, self.lipschitz)
            lip = local_lipschitz(self.graph, bounds, self.lipschitz, self.config.norm_margin)
            return lip * ball.l2_radius, bounds
        f0 = centers[self.graph.output].reshape(ball.x0.shape[0], -1)
        if method == "crown":
            bounds = crown_intermediate_bounds(
                self.graph, ball, centers, self.lipschitz, self.config.crown, deadline
            )
        else:
            bounds = interval_bounds(self.graph, ball, centers, self.lipschitz)
        lo, hi = (t.reshape(f0.shape) for t in bounds[self.graph.output])
        ibp = torch.maximum(hi - f0, f0 - lo).clamp(min=0).norm(dim=1)
        if method == "ibp":
            return ibp, bounds
        shift = output_shift_bounds(self.graph, ball, f0, bounds, self.config.norm_margin, self.config.crown)
        return torch.minimum(torch.minimum(shift.per_feature, shift.linear_part), ibp), bounds

    def _served_error(self, prep: _Prepared, rows: torch.Tensor, ball: InputBall, bounds: Bounds | None):
        """[n] float margin E(ball) + E(x0): rounding of the served model at x′ and at x0."""
        served = [c[rows] for c in prep.served_centers]
        return self.float_error.bound(ball, served, bounds).numpy() + prep.point_error[rows.numpy()]

    @torch.no_grad()
    def served_error(self, images: np.ndarray, radius: np.ndarray, *, norm: str = "l2", clip: bool = False):
        """[B] floating-point margin E(ball) + E(x): a proven bound on ‖f̂(x′) − f(x′)‖₂ + ‖f̂(x) − f(x)‖₂
        for every x′ in the ``norm`` ball of ``radius`` [B] around each image (float_error.py)."""
        prep = self._prepare(images, clip)
        rows = torch.arange(prep.x64.shape[0])
        ball = InputBall(prep.x64, torch.as_tensor(np.asarray(radius, dtype=np.float64)), norm, clip)
        return self._served_error(prep, rows, ball, None)

    @torch.no_grad()
    def served_point_error(self, images: np.ndarray) -> np.ndarray:
        """[B] proven bound of ‖f̂(x) − f(x)‖₂: the served feature's rounding error at each image."""
        return self._prepare(images, False).point_error.copy()

    @functools.cache  # noqa: B019 (one engine per served model: the cache lives as long as it)
    def pixel_box_float_margin(self) -> float:
        """Proven bound of ‖f̂(x′) − f(x′)‖₂ + ‖f̂(x) − f(x)‖₂ for any x, x′ in [0, 1]ⁿ: the largest
        floating-point margin a request on in-range images can get."""
        center = np.full((1, *self.input_shape), 0.5)
        return float(2 * self.served_error(center, np.array([0.5]), norm="linf", clip=True)[0])

    def _evaluator(self, prep: _Prepared, method: str, norm: str, clip: bool, deadline: float | None):
        cfg = self.config
        x64 = prep.x64
        per_pass = {"lipschitz": cfg.rows_per_pass, "crown": cfg.crown_rows_per_pass}
        rows_per_pass = per_pass.get(method, cfg.rows_per_pass)

        def evaluate(rows: np.ndarray, radii: np.ndarray) -> np.ndarray:
            out = np.empty(len(rows))
            for s in range(0, len(rows), rows_per_pass):
                r = torch.as_tensor(rows[s : s + rows_per_pass])
                ball = InputBall(
                    x64[r], torch.as_tensor(radii[s : s + rows_per_pass], dtype=torch.float64), norm, clip
                )
                centers = [] if method == "lipschitz" else [c[r] for c in prep.centers]
                u, bounds = self._shift_bound(method, ball, centers, deadline)
                margin = self._served_error(prep, r, ball, bounds)
                out[s : s + len(r)] = u.numpy() * (1 + cfg.shift_margin_relative) + margin
            return out

        return evaluate

    def _prepare(self, images: np.ndarray, clip: bool) -> _Prepared:
        x = self._check_images(images, require_box=clip)
        # standard strides, whatever the caller's array had: torch picks its conv kernels (so the float64
        # rounding of every bound) by the strides, and numpy gives size-1 dims arbitrary ones (a [B, 1, H, W]
        # slice can look channels-last), so the same pixels must always reach the engine in one layout
        x64 = torch.as_tensor(x, dtype=torch.float64).clone(memory_format=torch.contiguous_format)
        return _Prepared(self.graph, self.float_error, x64)

    def _l_eff(self, norm: str) -> float:
        n = int(np.prod(self.input_shape))
        return with_margin(self.lipschitz.output_l2) * (1.0 if norm == "l2" else n**0.5)

    def _auto_plan(self, b: int, deadline: float | None) -> list[str]:
        """AUTO's methods for ``b`` images, cheapest first, each kept where it certifies more: full CROWN
        only when the deadline leaves ``auto_crown_seconds_per_image`` per image (no deadline: never)."""
        plan = ["lipschitz", "local_lipschitz", "crown_ibp"]
        crown_s = b * self.config.auto_crown_seconds_per_image
        if deadline is not None and deadline - time.monotonic() > crown_s:
            plan.append("crown")
        return plan

    @torch.no_grad()
    def image_radius(
        self,
        images: np.ndarray,
        feature_radius: np.ndarray,
        *,
        norm: str = "l2",
        method: str = "auto",
        relative_tolerance: float = 1e-3,
        clip_to_pixel_box: bool = False,
        deadline: float | None = None,
    ) -> RadiusResult:
        """Largest verified radius r per image with U(r) < R_F (``norm`` ball in raw pixel units; with
        ``clip_to_pixel_box`` the ball ∩ [0, 1]ⁿ, so r then covers only in-range perturbations). The
        defaults are F2IPerturbRequest's: a call without the flag certifies what the API certifies."""
        _check_method(method)
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
        if not (relative_tolerance > 0 and np.isfinite(relative_tolerance)):
            raise ValueError("relative_tolerance must be positive and finite")
        rf = np.asarray(feature_radius, dtype=np.float64).reshape(-1)
        prep = self._prepare(images, clip_to_pixel_box)
        if rf.shape[0] != prep.x64.shape[0]:
            raise ValueError(f"{prep.x64.shape[0]} images but {rf.shape[0]} feature radii")
        if not np.all(np.isfinite(rf)):
            raise ValueError("feature_radius contains non-finite values")
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("deadline already passed")
        search = SearchConfig(
            relative_tolerance=relative_tolerance, radii_per_round=self.config.radii_per_round
        )
        guess = np.maximum(rf, 0.0) / self._l_eff(norm)
        q = _Query(prep, rf, norm, clip_to_pixel_box, deadline, search, guess)
        if method == "lipschitz":
            return RadiusResult(self._lipschitz_radius(q), ["lipschitz"] * len(rf), len(rf), completed=True)
        if method == "auto":
            return self._auto_radius(q)
        return self._explicit_radius(q, method)

    def _search(
        self, q: _Query, method: str, known_lower: np.ndarray | None = None, seed: np.ndarray | None = None
    ) -> SearchOutcome:
        """``method``'s search (``known_lower``: radii verified already; ``seed``: an unverified guess)."""
        evaluate = self._evaluator(q.prep, method, q.norm, q.clip, q.deadline)
        # every evaluation adds E(ball) + E(x0) (``_served_error``), and E(ball) ≥ E(x0): the error model is
        # monotone in its intervals, which contain x0's values. Only the search's aim depends on it.
        return search_radius(evaluate, q.rf, q.guess, known_lower, q.search, q.deadline, seed=seed,
                             floor=2 * q.prep.point_error)

    def _lipschitz_radius(self, q: _Query) -> np.ndarray:
        """[B] closed form of L·r·(1 + rel) + margin(r) < R_F, the margin taken at the largest radius the
        bound allows, then checked; 0 where the check fails.

        One bound evaluation: the float margin is non-decreasing in r (its interval bounds only widen
        with the ball), so margin(r_max) also covers every r ≤ r_max, and the check at r_lip reuses it.
        """
        b = len(q.rf)
        l_eff = self._l_eff(q.norm) * (1 + self.config.shift_margin_relative)
        evaluate = self._evaluator(q.prep, "lipschitz", q.norm, q.clip, q.deadline)
        r_max = np.maximum(q.rf, 0.0) / l_eff
        bound_at_max = evaluate(np.arange(b), r_max)  # L·r_max·(1 + rel) + margin(r_max)
        margin = bound_at_max - r_max * l_eff
        r_lip = np.maximum(q.rf - margin, 0.0) / l_eff * (1 - 1e-9)
        checked = r_lip * l_eff + margin  # ≥ U(r_lip): the same L term, a margin at least margin(r_lip)
        r_lip[(checked >= q.rf) | (q.rf <= 0) | ~np.isfinite(r_lip) | ~np.isfinite(margin)] = 0.0
        return r_lip

    def _explicit_radius(self, q: _Query, method: str) -> RadiusResult:
        """One method's verified radii; DeadlineExceeded when its search cannot finish in time."""
        try:
            seed, seed_evals = None, 0
            if method in SEED_METHOD:  # a cheap method's radius, re-verified by this one, saves rounds
                seeded = self._search(q, SEED_METHOD[method])
                seed, seed_evals = seeded.radius, seeded.evaluations
            res = self._search(q, method, seed=seed)
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(f"{method} search ran past the deadline") from exc
        if not res.finished and q.deadline is not None and time.monotonic() > q.deadline:
            raise DeadlineExceeded(f"{method} search ran past the deadline")
        return RadiusResult(res.radius, [method] * len(q.rf), res.evaluations + seed_evals, completed=True)

    def _auto_radius(self, q: _Query) -> RadiusResult:
        """The best radius of the planned methods, each search starting from the best so far; stops at the
        deadline with what is verified (``completed`` False)."""
        b = len(q.rf)
        best, used, evals = self._lipschitz_radius(q), ["lipschitz"] * b, b
        completed = True  # False once the deadline skips a planned method or cuts a search short
        for m in self._auto_plan(b, q.deadline)[1:]:  # LIPSCHITZ ran above, in closed form
            if q.deadline is not None and time.monotonic() > q.deadline:
                completed = False
                break
            try:
                res = self._search(q, m, known_lower=best)
            except DeadlineExceeded:
                completed = False
                break
            evals += res.evaluations
            for i in np.flatnonzero(res.radius > best):
                best[i], used[i] = res.radius[i], m
            if res.stopped_at_deadline:
                completed = False
                break
        return RadiusResult(best, used, evals, completed)

    @torch.no_grad()
    def curve(
        self,
        images: np.ndarray,
        image_radii: np.ndarray,
        *,
        norm: str = "l2",
        method: str = "auto",
        clip_to_pixel_box: bool = False,
        deadline: float | None = None,
    ) -> CurveResult:
        """[B, K] sound upper bounds U(r_k) of the feature shift, non-decreasing in r_k, and whether every
        method ran (AUTO stops at the deadline with the bounds so far; an explicit method raises)."""
        _check_method(method)
        prep = self._prepare(images, clip_to_pixel_box)
        x64 = prep.x64
        b = x64.shape[0]
        radii = np.asarray(image_radii, dtype=np.float64)
        ladder = radii.reshape(1, -1) if radii.ndim == 1 else radii
        radii = np.array(np.broadcast_to(ladder, (b, radii.shape[-1])))  # a writable copy: torch reads it
        if not np.all(np.isfinite(radii)) or np.any(radii < 0):
            raise ValueError("image_radii must be finite and non-negative")
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("deadline already passed")
        k = radii.shape[1]
        rows = np.repeat(np.arange(b), k)
        flat = radii.reshape(-1)
        methods = self._auto_plan(b, deadline) if method == "auto" else [method]
        u = np.full(flat.shape, np.inf)
        completed = True
        for n, m in enumerate(methods):
            # AUTO always keeps the first (Lipschitz) bounds, then stops once the deadline has passed
            if n and deadline is not None and time.monotonic() > deadline:
                completed = False
                break
            try:
                um = self._evaluator(prep, m, norm, clip_to_pixel_box, deadline)(rows, flat)
            except DeadlineExceeded:
                if method != "auto":
                    raise
                completed = False
                break
            u = np.minimum(u, um)
        u = u.reshape(b, k)
        order = np.argsort(radii, axis=1, kind="stable")
        u_sorted = np.take_along_axis(u, order, axis=1)
        # U(r_j) for r_j ≥ r_k also bounds the smaller ball: suffix minimum keeps soundness and monotonicity
        u_sorted = np.minimum.accumulate(u_sorted[:, ::-1], axis=1)[:, ::-1]
        out = np.empty_like(u)
        np.put_along_axis(out, order, u_sorted, axis=1)
        return CurveResult(out, completed)
