"""BoundEngine: the public facade — load an ONNX encoder, serve features, certify image radii."""

from __future__ import annotations

import functools
import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch

from services.perturb.engine.ball import InputBall
from services.perturb.engine.crown import (
    CrownConfig,
    crown_intermediate_bounds,
    lipschitz_fallback,
    output_shift_bounds,
)
from services.perturb.engine.errors import DeadlineExceeded
from services.perturb.engine.ibp import interval_bounds
from services.perturb.engine.lipschitz import lipschitz_info
from services.perturb.engine.local_lipschitz import local_lipschitz
from services.perturb.engine.onnx_graph import BoundGraph, build_bound_graph, load_onnx_model
from services.perturb.engine.operator_norms import NormMargin, with_margin
from services.perturb.engine.search import SearchConfig, search_radius

METHODS = ("lipschitz", "local_lipschitz", "ibp", "crown_ibp", "crown")
# an explicit method whose search starts from a cheaper method's radius (a guess it verifies itself)
SEED_METHOD = {"crown": "crown_ibp"}


@dataclass(frozen=True)
class EngineConfig:
    """All engine knobs in one place."""

    norm_margin: NormMargin = field(default_factory=NormMargin)
    crown: CrownConfig = field(default_factory=CrownConfig)
    radii_per_round: int = 2  # candidates per search round (1 core: fewer evaluations beat fewer rounds)
    # U is inflated by rel·U + abs·(1 + ‖f(x)‖₂): float32 rounding of the served model vs exact math
    shift_margin_relative: float = 1e-6
    shift_margin_absolute: float = 1e-5
    rows_per_pass: int = 64  # (image, radius) rows bounded together
    crown_rows_per_pass: int = 2  # full CROWN: few rows, many neurons per backward pass
    # AUTO runs full CROWN only with a deadline leaving at least this many seconds per image
    auto_crown_seconds_per_image: float = 60.0
    ort_threads: int = 1


@dataclass
class RadiusResult:
    """Verified image radii [B] float64, the method that certified each, and the bound evaluations spent."""

    image_radius: np.ndarray
    method_used: list[str]
    bound_evaluations: int


class _Prepared:
    """Validated images of one request; node values at x0 are computed on first use (LIPSCHITZ never)."""

    def __init__(self, graph: BoundGraph, x64: torch.Tensor, f0_norm: np.ndarray) -> None:
        self._graph, self.x64, self.f0_norm = graph, x64, f0_norm

    @functools.cached_property
    def centers(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return self._graph.forward_all(self.x64)


class BoundEngine:
    """Sound image-space radii for an ONNX encoder f: images [B, C, H, W] in [0, 1] -> features [B, D]."""

    def __init__(self, model: onnx.ModelProto, config: EngineConfig = EngineConfig()) -> None:
        self.config = config
        self.graph: BoundGraph = build_bound_graph(model)
        self.lipschitz = lipschitz_info(self.graph, config.norm_margin)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = config.ort_threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        self._input_name = self._session.get_inputs()[0].name
        self.input_shape: tuple[int, int, int] = tuple(self.graph.input_shape)  # type: ignore[assignment]
        self.feature_dim: int = int(self.graph.nodes[self.graph.output].shape[0])
        self.lipschitz_bound_l2: float = float(self.lipschitz.output_l2)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike | bytes, config: EngineConfig = EngineConfig()) -> BoundEngine:
        """Load an encoder from an ONNX file (or bytes); raises UnsupportedModelError on unsupported ops."""
        return cls(load_onnx_model(path), config)

    @classmethod
    def from_torch(
        cls, module: torch.nn.Module, input_shape, config: EngineConfig = EngineConfig()
    ) -> BoundEngine:
        """Export a torch encoder to ONNX in memory (as the trainer does) and load it."""
        buf = io.BytesIO()
        dummy = torch.zeros(1, *input_shape)
        torch.onnx.export(
            module.eval(),
            (dummy,),
            buf,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        return cls(onnx.load_from_string(buf.getvalue()), config)

    # ---- Feature-API ----
    def features(self, images: np.ndarray) -> np.ndarray:
        """Features [B, D] float32 of images [B, C, H, W] float32 in [0, 1] (the served ONNX model)."""
        x = self._check_images(images, require_box=False)
        return self._session.run(None, {self._input_name: x.astype(np.float32)})[0]

    # ---- bounds ----
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
    ) -> torch.Tensor:
        """[N] sound upper bounds of ‖f(x) - f(x0)‖₂ over ``ball`` (before the fp margin)."""
        if method == "lipschitz":
            return lipschitz_fallback(self.lipschitz, ball)
        if method == "local_lipschitz":
            bounds = interval_bounds(self.graph, ball, centers, self.lipschitz)
            return (
                local_lipschitz(self.graph, bounds, self.lipschitz, self.config.norm_margin) * ball.l2_radius
            )
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
            return ibp
        shift = output_shift_bounds(self.graph, ball, f0, bounds, self.config.norm_margin, self.config.crown)
        return torch.minimum(torch.minimum(shift.per_feature, shift.linear_part), ibp)

    def _evaluator(self, prep: _Prepared, method: str, norm: str, clip: bool, deadline: float | None):
        cfg = self.config
        x64, f0_norm = prep.x64, prep.f0_norm
        per_pass = {"lipschitz": 1 << 30, "crown": cfg.crown_rows_per_pass}
        rows_per_pass = per_pass.get(method, cfg.rows_per_pass)

        def evaluate(rows: np.ndarray, radii: np.ndarray) -> np.ndarray:
            out = np.empty(len(rows))
            for s in range(0, len(rows), rows_per_pass):
                r = torch.as_tensor(rows[s : s + rows_per_pass])
                ball = InputBall(
                    x64[r], torch.as_tensor(radii[s : s + rows_per_pass], dtype=torch.float64), norm, clip
                )
                centers = [] if method == "lipschitz" else [c[r] for c in prep.centers]
                u = self._shift_bound(method, ball, centers, deadline).numpy()
                out[s : s + len(r)] = u
            fn = f0_norm[rows]
            return out * (1 + cfg.shift_margin_relative) + cfg.shift_margin_absolute * (1 + fn)

        return evaluate

    def _prepare(self, images: np.ndarray, clip: bool) -> _Prepared:
        x = self._check_images(images, require_box=clip)
        # ‖f(x)‖ only scales the fp margin: the served float32 model's value is precise enough
        f0_norm = np.linalg.norm(self.features(x).astype(np.float64), axis=1)
        return _Prepared(self.graph, torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64), f0_norm)

    def _l_eff(self, norm: str) -> float:
        n = int(np.prod(self.input_shape))
        return with_margin(self.lipschitz.output_l2) * (1.0 if norm == "l2" else n**0.5)

    @torch.no_grad()
    def image_radius(
        self,
        images: np.ndarray,
        feature_radius: np.ndarray,
        *,
        norm: str = "l2",
        method: str = "auto",
        relative_tolerance: float = 1e-3,
        clip_to_pixel_box: bool = True,
        deadline: float | None = None,
    ) -> RadiusResult:
        """Largest verified radius r per image with U(r) < R_F (``norm`` ball in raw pixel units)."""
        if method not in (*METHODS, "auto"):
            raise ValueError(f"unknown method {method!r}")
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
        if not (relative_tolerance > 0 and np.isfinite(relative_tolerance)):
            raise ValueError("relative_tolerance must be positive and finite")
        rf = np.asarray(feature_radius, dtype=np.float64).reshape(-1)
        prep = self._prepare(images, clip_to_pixel_box)
        x64 = prep.x64
        if rf.shape[0] != x64.shape[0]:
            raise ValueError(f"{x64.shape[0]} images but {rf.shape[0]} feature radii")
        if not np.all(np.isfinite(rf)):
            raise ValueError("feature_radius contains non-finite values")
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("deadline already passed")
        scfg = SearchConfig(
            relative_tolerance=relative_tolerance, radii_per_round=self.config.radii_per_round
        )
        b = rf.shape[0]
        guess = np.maximum(rf, 0.0) / self._l_eff(norm)

        # Lipschitz: closed form of L·r·(1 + rel) + abs·(1 + ‖f(x)‖₂) < R_F, then verified by the evaluator
        cfg = self.config
        f0_norm = prep.f0_norm
        slack = rf - cfg.shift_margin_absolute * (1 + f0_norm)
        r_lip = np.maximum(slack, 0.0) / (self._l_eff(norm) * (1 + cfg.shift_margin_relative)) * (1 - 1e-9)
        lip_eval = self._evaluator(prep, "lipschitz", norm, clip_to_pixel_box, deadline)
        r_lip[(lip_eval(np.arange(b), r_lip) >= rf) | (rf <= 0)] = 0.0
        evals = b
        if method == "lipschitz":
            return RadiusResult(r_lip, ["lipschitz"] * b, evals)

        if method != "auto":
            ev = self._evaluator(prep, method, norm, clip_to_pixel_box, deadline)
            try:
                seed, seed_evals = None, 0
                if method in SEED_METHOD:  # a cheap method's radius, re-verified by this one, saves rounds
                    cheap = self._evaluator(prep, SEED_METHOD[method], norm, clip_to_pixel_box, deadline)
                    seeded = search_radius(cheap, rf, guess, None, scfg, deadline)
                    seed, seed_evals = seeded.radius, seeded.evaluations
                res = search_radius(ev, rf, guess, None, scfg, deadline, seed=seed)
            except DeadlineExceeded as exc:
                raise DeadlineExceeded(f"{method} search ran past the deadline") from exc
            if not res.finished and deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"{method} search ran past the deadline")
            return RadiusResult(res.radius, [method] * b, res.evaluations + seed_evals)

        best, used = r_lip.copy(), ["lipschitz"] * b
        plan = ["local_lipschitz", "crown_ibp"]
        budget = None if deadline is None else deadline - time.monotonic()
        if budget is not None and budget > b * self.config.auto_crown_seconds_per_image:
            plan.append("crown")
        for m in plan:
            if deadline is not None and time.monotonic() > deadline:
                break
            ev = self._evaluator(prep, m, norm, clip_to_pixel_box, deadline)
            try:
                res = search_radius(ev, rf, guess, best, scfg, deadline)
            except DeadlineExceeded:
                break
            evals += res.evaluations
            for i in range(b):
                if res.radius[i] > best[i]:
                    best[i], used[i] = res.radius[i], m
        return RadiusResult(best, used, evals)

    @torch.no_grad()
    def curve(
        self,
        images: np.ndarray,
        image_radii: np.ndarray,
        *,
        norm: str = "l2",
        method: str = "auto",
        clip_to_pixel_box: bool = True,
        deadline: float | None = None,
    ) -> np.ndarray:
        """[B, K] sound upper bounds U(r_k) of the feature shift, non-decreasing in r_k."""
        if method not in (*METHODS, "auto"):
            raise ValueError(f"unknown method {method!r}")
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
        methods = ["lipschitz", "local_lipschitz", "crown_ibp"] if method == "auto" else [method]
        if (
            method == "auto"
            and deadline is not None
            and (deadline - time.monotonic() > b * self.config.auto_crown_seconds_per_image)
        ):
            methods.append("crown")
        u = np.full(flat.shape, np.inf)
        for m in methods:
            try:
                um = self._evaluator(prep, m, norm, clip_to_pixel_box, deadline)(rows, flat)
            except DeadlineExceeded:
                if method != "auto":
                    raise
                break
            u = np.minimum(u, um)
        u = u.reshape(b, k)
        order = np.argsort(radii, axis=1, kind="stable")
        u_sorted = np.take_along_axis(u, order, axis=1)
        # U(r_j) for r_j ≥ r_k also bounds the smaller ball: suffix minimum keeps soundness and monotonicity
        u_sorted = np.minimum.accumulate(u_sorted[:, ::-1], axis=1)[:, ::-1]
        out = np.empty_like(u)
        np.put_along_axis(out, order, u_sorted, axis=1)
        return out
