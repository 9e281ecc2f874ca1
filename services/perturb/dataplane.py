"""The perturb service's data plane: everything between a validated request and its answer.

One ``PerturbDataPlane`` owns the bound engine, the semantic certifier, the served model's feature
session, the per-image result cache and the limit on concurrent bound computations. It takes and
returns numpy arrays and dataclasses and knows nothing of protobuf or gRPC (the servicer in
``server.py`` converts); it is the only code that calls the engine.

Policy, for all three bound RPCs (F2IPerturb, F2IPerturbCurve, F2ISemantic):

* Only cache misses reach the engine; hits are counted through ``on_cache_lookup(hits, misses)``.
* Only results of *completed* searches are cached: an answer the deadline cut short (``completed``
  False) goes back to its caller but is never stored, so a later caller with more time recomputes it.
  AUTO's plan still depends on the time left (full CROWN only with a long deadline), so an AUTO hit may
  come from a completed search under a shorter deadline whose plan skipped CROWN: sound, possibly smaller.
* Every engine call runs in one of ``concurrent_bounds`` slots; a call that cannot get one before its
  deadline raises ``DeadlineExceeded``. Each engine call already uses every compute thread, so running
  more at once would only oversubscribe the cores.
* The curve's features are the served ONNX model's own output (ONNX Runtime, CPU, float32), not the
  bound engine's float64 graph: the client compares them with what the Feature-API serves.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.model_file import VerifiedFacts, engine_facts
from services.encoder.onnx_model import OnnxEncoder
from services.perturb.cache import LruCache, image_keys
from services.perturb.engine import DeadlineExceeded, RadiusResult
from services.perturb.semantic import SemanticCertifier, SemanticResult


@dataclass(frozen=True)
class RadiusQuery:
    """F2IPerturb: per image, the largest verified image radius whose feature shift stays below R_F."""

    images: np.ndarray  # [B, C, H, W] float32 in [0, 1]
    feature_radius: np.ndarray  # R_F [B] float64, finite, >= 0
    norm: str = "l2"
    method: str = "auto"
    relative_tolerance: float = 1e-3
    clip_to_pixel_box: bool = False


@dataclass(frozen=True)
class CurveQuery:
    """F2IPerturbCurve: sound feature-shift bounds U(r_k) on a ladder of image radii."""

    images: np.ndarray  # [B, C, H, W] float32 in [0, 1]
    image_radii: np.ndarray  # r_k [K] float64, increasing
    norm: str = "l2"
    method: str = "auto"
    clip_to_pixel_box: bool = False


@dataclass(frozen=True)
class SemanticQuery:
    """F2ISemantic: per image, the largest verified brightness / contrast range below R_F."""

    images: np.ndarray  # [B, C, H, W] float32 in [0, 1]
    feature_radius: np.ndarray  # R_F [B] float64, finite, >= 0
    perturbation: str = "brightness"  # "brightness", "contrast" or "brightness_contrast"
    method: str = "auto"
    relative_tolerance: float = 1e-3
    contrast_per_brightness: float = 1.0


@dataclass(frozen=True)
class CurveAnswer:
    """The served features and the curves of one CurveQuery."""

    features: np.ndarray  # [B, D] float32: the served ONNX model's output
    image_radii: np.ndarray  # r_k [K] float64, as asked
    bounds: np.ndarray  # U(r_k) [B, K] float64, sound and non-decreasing in r_k
    completed: bool  # False when AUTO stopped at the deadline (still sound, possibly looser)


@dataclass(frozen=True)
class ModelFacts:
    """What GetModelInfo reports about the served model and what bounds it."""

    input_shape: tuple[int, ...]  # (C, H, W)
    feature_dim: int
    bound_device: str  # what computes the bounds, e.g. "torch-cpu (4 threads)"
    verified: VerifiedFacts  # the engine's Lipschitz bound and floating-point margin


def feature_model(path: Path, intra_op_threads: int = 1) -> OnnxEncoder:
    """The served ONNX model on ONNX Runtime's CPU provider in float32: the features the curve returns."""
    return OnnxEncoder(
        path, intra_op_threads=intra_op_threads, providers=["CPUExecutionProvider"], precision="float32"
    )


class PerturbDataPlane:
    """F2IPerturb, F2IPerturbCurve, F2ISemantic and the model facts over one bound engine (see the module
    docstring for the cache and concurrency policy)."""

    def __init__(
        self,
        engine,
        features: OnnxEncoder,
        *,
        cache_entries: int,
        concurrent_bounds: int = 1,
        on_cache_lookup: Callable[[int, int], None] | None = None,
        semantic: SemanticCertifier | None = None,
    ):
        if tuple(features.input_shape) != tuple(engine.input_shape):
            raise ValueError(
                f"the served model takes {features.input_shape} images but the bound engine's takes "
                f"{engine.input_shape}: they are not the same model"
            )
        self._engine = engine
        self._features = features
        self._semantic = semantic if semantic is not None else SemanticCertifier(engine)
        self._cache = LruCache(cache_entries)
        self._on_cache_lookup = on_cache_lookup
        self._slots = threading.BoundedSemaphore(max(1, concurrent_bounds))
        self._verified = engine_facts(engine)  # proven once at load: the margin costs a bound computation

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images every query must carry."""
        return tuple(self._engine.input_shape)

    @property
    def cache(self) -> LruCache:
        """The per-image result cache (read it; the data plane alone decides what goes in)."""
        return self._cache

    def model_facts(self) -> ModelFacts:
        """Input shape, feature dimension, what computes the bounds, and the engine's verified facts."""
        device = torch.get_default_device().type
        return ModelFacts(
            input_shape=self.input_shape,
            feature_dim=int(self._engine.feature_dim),
            bound_device=f"torch-{device} ({torch.get_num_threads()} threads)",
            verified=self._verified,
        )

    def image_radius(self, query: RadiusQuery, deadline: float | None = None) -> RadiusResult:
        """Verified radii [B] float64, the method that certified each, the engine's bound evaluations
        and whether the search completed."""
        settings = (query.norm, query.method, query.clip_to_pixel_box, query.relative_tolerance)
        keys = image_keys(query.images, "radius", settings, per_image=query.feature_radius)

        def compute(missing: list[int]) -> tuple[list, int, bool]:
            result: RadiusResult = self._engine.image_radius(
                query.images[missing],
                np.asarray(query.feature_radius, dtype=np.float64)[missing],
                norm=query.norm,
                method=query.method,
                relative_tolerance=query.relative_tolerance,
                clip_to_pixel_box=query.clip_to_pixel_box,
                deadline=deadline,
            )
            pairs = zip(result.image_radius, result.method_used, strict=True)
            entries = [(float(radius), str(used)) for radius, used in pairs]
            return entries, result.bound_evaluations, bool(result.completed)

        found, evaluations, completed = self._through_cache(keys, compute, deadline)
        radii = np.array([r for r, _ in found], dtype=np.float64)
        return RadiusResult(radii, [m for _, m in found], evaluations, completed)

    def curve(self, query: CurveQuery, deadline: float | None = None) -> CurveAnswer:
        """Served features [B, D] float32 and bounds U(r_k) [B, K] float64 with whether every method ran."""
        ladder = np.asarray(query.image_radii, dtype=np.float64)
        settings = (query.norm, query.method, query.clip_to_pixel_box, tuple(ladder.tolist()))
        keys = image_keys(query.images, "curve", settings)

        def compute(missing: list[int]) -> tuple[list, int, bool]:
            subset = query.images[missing]
            result = self._engine.curve(
                subset,
                ladder,
                norm=query.norm,
                method=query.method,
                clip_to_pixel_box=query.clip_to_pixel_box,
                deadline=deadline,
            )
            features = self._features.run(np.ascontiguousarray(subset, dtype=np.float32))
            bounds = np.asarray(result.bounds, dtype=np.float64)
            return list(zip(features, bounds, strict=True)), 0, bool(result.completed)

        found, _, completed = self._through_cache(keys, compute, deadline)
        features = np.stack([f for f, _ in found]).astype(np.float32, copy=False)
        return CurveAnswer(features, ladder, np.stack([u for _, u in found]), completed)

    def semantic(self, query: SemanticQuery, deadline: float | None = None) -> SemanticResult:
        """The semantic certifier's answer per image. Raises ``DeadlineExceeded`` (as the certifier does)
        when the deadline cuts its search short."""
        ratio = float(query.contrast_per_brightness)
        settings = (query.perturbation, query.method, ratio, query.relative_tolerance)
        keys = image_keys(query.images, "semantic", settings, per_image=query.feature_radius)

        def compute(missing: list[int]) -> tuple[list, int, bool]:
            result: SemanticResult = self._semantic.certify(
                query.images[missing],
                np.asarray(query.feature_radius, dtype=np.float64)[missing],
                query.perturbation,
                method=query.method,
                relative_tolerance=query.relative_tolerance,
                contrast_per_brightness=ratio,
                deadline=deadline,
            )
            columns = (result.parameter_radius, result.brightness, result.contrast, result.l2_equivalent)
            entries = [
                (*(float(c[j]) for c in columns), str(result.method_used[j])) for j in range(len(missing))
            ]
            return entries, result.bound_evaluations, bool(result.completed)

        found, evaluations, completed = self._through_cache(keys, compute, deadline)
        t, b, c, l2 = (np.array([v[n] for v in found], dtype=np.float64) for n in range(4))
        return SemanticResult(t, b, c, l2, [v[4] for v in found], evaluations, completed)

    def _through_cache(
        self,
        keys: Sequence[tuple],
        compute: Callable[[list[int]], tuple[list, int, bool]],
        deadline: float | None,
    ) -> tuple[list, int, bool]:
        """One entry per key: cached ones, the rest from ``compute(missing rows) -> (entries, evaluations,
        completed)`` run in an engine slot; the computed entries are stored only when ``completed``."""
        found = [self._cache.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if self._on_cache_lookup is not None:
            self._on_cache_lookup(len(keys) - len(missing), len(missing))
        if not missing:
            return found, 0, True
        with self._slot(deadline):
            entries, evaluations, completed = compute(missing)
        for i, entry in zip(missing, entries, strict=True):
            found[i] = entry
            if completed:
                self._cache.put(keys[i], entry)
        return found, evaluations, completed

    @contextlib.contextmanager
    def _slot(self, deadline: float | None) -> Iterator[None]:
        timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=timeout_s):
            raise DeadlineExceeded("deadline passed while waiting for a free bound-engine slot")
        try:
            yield
        finally:
            self._slots.release()
