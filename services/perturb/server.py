"""F2IPerturb-API server: image radii and radius curves from the bound engine, behind a result cache."""

from __future__ import annotations

import grpc
import numpy as np

from reaas.methods import METHOD_NAMES, NORM_NAMES, PERTURB_METHODS
from reaas.tensors import decode_images, to_proto
from reaas.v1 import perturb_pb2, perturb_pb2_grpc
from services.common.config import PerturbConfig
from services.common.metrics import ServerMetrics
from services.common.model_file import ModelFile, engine_facts, load_model_file, model_info
from services.common.rpc import ServiceRuntime, unary_rpc
from services.common.server import ManagedServer, build_server
from services.common.status import InvalidArgument, check_model_pin, require_finite_range
from services.perturb.cache import CachedEngine
from services.perturb.engine import BoundEngine, EngineConfig, UnsupportedModelError

NORMS = NORM_NAMES
METHODS = METHOD_NAMES
METHOD_ENUM = PERTURB_METHODS
SEMANTIC_KINDS = {
    perturb_pb2.BRIGHTNESS: "brightness",
    perturb_pb2.CONTRAST: "contrast",
    perturb_pb2.BRIGHTNESS_CONTRAST: "brightness_contrast",
}
DEFAULT_RELATIVE_TOLERANCE = 1e-3
DEFAULT_NUM_RADII, DEFAULT_MIN_RADIUS, DEFAULT_MAX_RADIUS = 64, 1e-3, 4.0


def _norm(value: int, field: str) -> str:
    if value not in NORMS:
        raise InvalidArgument(field, f"unknown Norm {value}")
    return NORMS[value]


def _method(value: int, field: str) -> str:
    if value not in METHODS:
        raise InvalidArgument(field, f"unknown Method {value}")
    return METHODS[value]


def feature_radii(values, batch: int) -> np.ndarray:
    """R_F [B] float64: exactly one finite, non-negative entry per image."""
    radii = np.asarray(values, dtype=np.float64)
    if radii.shape != (batch,):
        raise InvalidArgument("feature_radius", f"expected {batch} entries (one per image), got {radii.size}")
    bad = np.flatnonzero(~np.isfinite(radii) | (radii < 0))
    if bad.size:
        raise InvalidArgument(
            "feature_radius", f"entry {bad[0]} is {radii[bad[0]]!r}; must be finite and >= 0"
        )
    return radii


def semantic_request(request) -> tuple[str, str, float]:
    """(perturbation kind, method, contrast_per_brightness) of an F2ISemanticRequest, validated."""
    if request.perturbation not in SEMANTIC_KINDS:
        raise InvalidArgument("perturbation", f"unknown SemanticPerturbation {request.perturbation}")
    method = _method(request.method, "method")
    if method == "local_lipschitz":
        raise InvalidArgument("method", "LOCAL_LIPSCHITZ has no semantic variant")
    ratio = request.contrast_per_brightness
    ratio = 1.0 if ratio == 0 else require_finite_range("contrast_per_brightness", ratio, 1e-6, 1e6)
    return SEMANTIC_KINDS[request.perturbation], method, ratio


def relative_tolerance(value: float) -> float:
    """0 means the server default 1e-3; otherwise it must lie in [1e-6, 0.5]."""
    if value == 0:
        return DEFAULT_RELATIVE_TOLERANCE
    return require_finite_range("relative_tolerance", value, 1e-6, 0.5)


def radius_ladder(num_radii: int, min_radius: float, max_radius: float) -> np.ndarray:
    """Geometric ladder r_k [K] float64; zeros select the defaults (64 radii, 1e-3 .. 4.0)."""
    num = DEFAULT_NUM_RADII if num_radii == 0 else num_radii
    if not 2 <= num <= 1024:
        raise InvalidArgument("num_radii", f"must be 0 or in [2, 1024], got {num_radii}")
    low = DEFAULT_MIN_RADIUS if min_radius == 0 else min_radius
    high = DEFAULT_MAX_RADIUS if max_radius == 0 else max_radius
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
        raise InvalidArgument("min_radius", f"need finite 0 < min_radius < max_radius, got {low!r}, {high!r}")
    return np.geomspace(low, high, num)


class PerturbServicer(perturb_pb2_grpc.PerturbServicer):
    """F2IPerturb, F2IPerturbCurve, F2ISemantic and GetModelInfo: validate, charge, delegate to the cached
    engine (its result cache and its concurrent-bounds limit cover all three bound RPCs)."""

    # DeadlineExceeded is a TimeoutError and maps to DEADLINE_EXCEEDED in services.common.status.
    error_codes = {UnsupportedModelError: grpc.StatusCode.FAILED_PRECONDITION}

    def __init__(
        self,
        runtime: ServiceRuntime,
        model: ModelFile,
        engine: CachedEngine,
        *,
        max_batch_size: int,
        deadline_margin_s: float,
    ):
        self.runtime = runtime
        self._model, self._engine = model, engine
        self._max_batch_size = max_batch_size
        self._margin_s = deadline_margin_s

    def _images(self, request) -> np.ndarray:
        check_model_pin(request.model_sha256, self._model.sha256)
        return decode_images(
            request.images,
            field="images",
            input_shape=self._engine.engine.input_shape,
            max_batch_size=self._max_batch_size,
        )

    @unary_rpc
    def F2IPerturb(self, request, call):
        images = self._images(request)
        radii_f = feature_radii(request.feature_radius, len(images))
        norm, method = _norm(request.norm, "norm"), _method(request.method, "method")
        tolerance = relative_tolerance(request.relative_tolerance)
        call.charge(len(images))
        result = self._engine.image_radius(
            images,
            radii_f,
            norm=norm,
            method=method,
            relative_tolerance=tolerance,
            clip_to_pixel_box=request.clip_to_pixel_box,
            deadline=call.deadline(self._margin_s),
        )
        return perturb_pb2.F2IPerturbResponse(
            image_radius=result.image_radius.tolist(),
            method_used=[METHOD_ENUM[m] for m in result.method_used],
            model_sha256=self._model.sha256,
            search_completed=result.completed,
        )

    @unary_rpc
    def F2IPerturbCurve(self, request, call):
        images = self._images(request)
        norm, method = _norm(request.norm, "norm"), _method(request.method, "method")
        ladder = radius_ladder(request.num_radii, request.min_radius, request.max_radius)
        call.charge(len(images))
        features, bounds = self._engine.curve(
            images,
            ladder,
            norm=norm,
            method=method,
            clip_to_pixel_box=request.clip_to_pixel_box,
            deadline=call.deadline(self._margin_s),
        )
        curves = [
            perturb_pb2.RadiusCurve(image_radius=ladder.tolist(), feature_shift_bound=row.tolist())
            for row in bounds.bounds
        ]
        # The engine's curve is the pointwise minimum over methods: AUTO stays AUTO here.
        return perturb_pb2.F2IPerturbCurveResponse(
            features=to_proto(features),
            curves=curves,
            method_used=[request.method] * len(images),
            model_sha256=self._model.sha256,
            search_completed=bounds.completed,
        )

    @unary_rpc
    def F2ISemantic(self, request, call):
        images = self._images(request)
        radii_f = feature_radii(request.feature_radius, len(images))
        kind, method, ratio = semantic_request(request)
        tolerance = relative_tolerance(request.relative_tolerance)
        call.charge(len(images))
        # DeadlineExceeded when the search cannot finish in time, like every other RPC
        result = self._engine.semantic(
            images, radii_f, kind, method=method, relative_tolerance=tolerance,
            contrast_per_brightness=ratio, deadline=call.deadline(self._margin_s),
        )
        return perturb_pb2.F2ISemanticResponse(
            brightness=result.brightness.tolist(),
            contrast=result.contrast.tolist(),
            l2_equivalent=result.l2_floor.tolist(),
            method_used=[METHOD_ENUM[m] for m in result.method_used],
            model_sha256=self._model.sha256,
            search_completed=result.completed,
        )

    @unary_rpc
    def GetModelInfo(self, request, call):
        engine = self._engine.engine
        return model_info(
            self._model,
            input_shape=engine.input_shape,
            feature_dim=engine.feature_dim,
            max_batch_size=self._max_batch_size,
            execution_provider="torch-cpu",
            facts=engine_facts(engine),
        )


def create_server(config: PerturbConfig, engine=None) -> tuple[ManagedServer, int]:
    """Load the model and engine (or take ``engine``); build the F2IPerturb server, bound, not started."""
    model = load_model_file(config.model_path, config.model_name)
    if engine is None:
        engine = BoundEngine.from_onnx(model.path, EngineConfig(served_format=config.served_precision))
    elif engine.config.served_format != config.served_precision:
        raise ValueError(
            f"engine bounds {engine.config.served_format} rounding but the service is configured "
            f"for {config.served_precision}"
        )
    metrics = ServerMetrics("perturb")
    cached = CachedEngine(
        engine, config.cache_entries, on_lookup=metrics.record_cache, max_concurrent=config.concurrent_bounds
    )

    def register(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        perturb_pb2_grpc.add_PerturbServicer_to_server(
            PerturbServicer(
                runtime,
                model,
                cached,
                max_batch_size=config.max_batch_size,
                deadline_margin_s=config.deadline_margin_ms / 1000.0,
            ),
            server,
        )
        return [perturb_pb2.DESCRIPTOR.services_by_name["Perturb"].full_name]

    server, port = build_server(config, "perturb", register, metrics=metrics)
    server.cache = cached.cache  # exposed for tests
    return server, port
