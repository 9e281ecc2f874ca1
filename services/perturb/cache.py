"""Per-image result cache in front of the bound engine, keyed by (image sha256, norm, method, clip, ...).

F2IPerturb entries also key on the feature radius and tolerance; curve entries on the radius ladder;
F2ISemantic entries on the perturbation, its C/B ratio, the feature radius and tolerance. Only verified
results of *completed* searches are stored: a result the deadline cut short (``completed`` False) is
returned to its caller but never cached, so a later caller with more time recomputes it. AUTO's method
plan still depends on the time left (full CROWN only with a long deadline), so an AUTO hit may come from a
completed search under a shorter deadline whose plan skipped CROWN: sound, possibly smaller.

Every engine call, F2ISemantic's included, runs in one of ``max_concurrent`` slots.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np

from services.perturb.engine import CurveResult, DeadlineExceeded, RadiusResult
from services.perturb.semantic import SemanticCertifier, SemanticResult


def image_sha256(image: np.ndarray) -> str:
    """sha256 of one image's shape and float32 little-endian bytes."""
    data = np.ascontiguousarray(image, dtype="<f4")
    return hashlib.sha256(repr(data.shape).encode() + data.tobytes()).hexdigest()


class LruCache:
    """A thread-safe least-recently-used map with at most ``max_entries`` entries (0 disables it)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        """The cached value or None (counts a hit or a miss)."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class CachedEngine:
    """The bound engine's ``image_radius`` and ``curve`` and the semantic certifier's ``certify``, with
    per-image caching of verified, completed results and a limit on concurrent engine calls."""

    def __init__(self, engine, max_entries: int, on_lookup=None, max_concurrent: int = 1, semantic=None):
        self.engine = engine
        self.semantic_certifier = semantic if semantic is not None else SemanticCertifier(engine)
        self.cache = LruCache(max_entries)
        self._on_lookup = on_lookup  # (hits, misses) -> None, e.g. Prometheus counters
        # Each engine call already uses all compute threads; running more at once only oversubscribes.
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent))

    @contextlib.contextmanager
    def _slot(self, deadline: float | None) -> Iterator[None]:
        timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=timeout_s):
            raise DeadlineExceeded("deadline passed while waiting for a free bound-engine slot")
        try:
            yield
        finally:
            self._slots.release()

    def _count(self, hits: int, misses: int) -> None:
        if self._on_lookup is not None:
            self._on_lookup(hits, misses)

    def image_radius(
        self,
        images: np.ndarray,
        feature_radius: np.ndarray,
        *,
        norm: str,
        method: str,
        relative_tolerance: float,
        clip_to_pixel_box: bool,
        deadline: float | None,
    ) -> RadiusResult:
        """Verified radii [B] float64, the method per image, the engine's bound evaluations and whether
        the search completed; only cache misses reach the engine, only completed results are cached."""
        keys = [
            (image_sha256(img), "radius", norm, method, clip_to_pixel_box, float(rf), relative_tolerance)
            for img, rf in zip(images, feature_radius, strict=True)
        ]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        self._count(len(keys) - len(missing), len(missing))
        evaluations, completed = 0, True
        if missing:
            with self._slot(deadline):
                result: RadiusResult = self.engine.image_radius(
                    images[missing],
                    np.asarray(feature_radius, dtype=np.float64)[missing],
                    norm=norm,
                    method=method,
                    relative_tolerance=relative_tolerance,
                    clip_to_pixel_box=clip_to_pixel_box,
                    deadline=deadline,
                )
            evaluations, completed = result.bound_evaluations, bool(result.completed)
            for j, i in enumerate(missing):
                found[i] = (float(result.image_radius[j]), str(result.method_used[j]))
                if completed:
                    self.cache.put(keys[i], found[i])
        return RadiusResult(
            np.array([r for r, _ in found], dtype=np.float64), [m for _, m in found], evaluations, completed
        )

    def curve(
        self,
        images: np.ndarray,
        image_radii: np.ndarray,
        *,
        norm: str,
        method: str,
        clip_to_pixel_box: bool,
        deadline: float | None,
    ) -> tuple[np.ndarray, CurveResult]:
        """(features [B, D] float32, bounds U(r_k) [B, K] float64 with whether every method ran); only
        cache misses reach the engine, only completed curves are cached."""
        ladder = tuple(float(r) for r in image_radii)
        keys = [(image_sha256(img), "curve", norm, method, clip_to_pixel_box, ladder) for img in images]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        self._count(len(keys) - len(missing), len(missing))
        completed = True
        if missing:
            subset = images[missing]
            with self._slot(deadline):
                computed: CurveResult = self.engine.curve(
                    subset,
                    np.asarray(image_radii, dtype=np.float64),
                    norm=norm,
                    method=method,
                    clip_to_pixel_box=clip_to_pixel_box,
                    deadline=deadline,
                )
                features = self.engine.features(subset)
            completed = bool(computed.completed)
            for j, i in enumerate(missing):
                found[i] = (
                    np.asarray(features[j], dtype=np.float32),
                    np.asarray(computed.bounds[j], dtype=np.float64),
                )
                if completed:
                    self.cache.put(keys[i], found[i])
        bounds = CurveResult(np.stack([u for _, u in found]), completed)
        return np.stack([f for f, _ in found]), bounds

    def semantic(
        self,
        images: np.ndarray,
        feature_radius: np.ndarray,
        kind: str,
        *,
        method: str,
        relative_tolerance: float,
        contrast_per_brightness: float,
        deadline: float | None,
    ) -> SemanticResult:
        """The semantic certifier's answer per image; only cache misses reach it, only completed answers
        are cached. Raises ``DeadlineExceeded`` (as the certifier does) when the deadline cuts it short."""
        ratio = float(contrast_per_brightness)
        keys = [
            (image_sha256(img), "semantic", kind, method, ratio, float(rf), relative_tolerance)
            for img, rf in zip(images, feature_radius, strict=True)
        ]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        self._count(len(keys) - len(missing), len(missing))
        evaluations, completed = 0, True
        if missing:
            with self._slot(deadline):
                result: SemanticResult = self.semantic_certifier.certify(
                    images[missing],
                    np.asarray(feature_radius, dtype=np.float64)[missing],
                    kind,
                    method=method,
                    relative_tolerance=relative_tolerance,
                    contrast_per_brightness=ratio,
                    deadline=deadline,
                )
            evaluations, completed = result.bound_evaluations, bool(result.completed)
            for j, i in enumerate(missing):
                found[i] = (
                    float(result.parameter_radius[j]),
                    float(result.brightness[j]),
                    float(result.contrast[j]),
                    float(result.l2_floor[j]),
                    str(result.method_used[j]),
                )
                if completed:
                    self.cache.put(keys[i], found[i])
        t, b, c, floor = (np.array([v[n] for v in found], dtype=np.float64) for n in range(4))
        return SemanticResult(t, b, c, floor, [v[4] for v in found], evaluations, completed)
