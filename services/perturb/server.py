"""F2IPerturb-API server: the servicer converts proto <-> domain types and delegates to the data plane."""

from __future__ import annotations

import grpc

from reaas.methods import PERTURB_METHODS
from reaas.tensors import to_proto
from reaas.v1 import perturb_pb2, perturb_pb2_grpc
from services.common.config import PerturbConfig
from services.common.metrics import ServerMetrics
from services.common.model_file import ModelFile, load_model_file, model_info
from services.common.rpc import ServiceRuntime, unary_rpc
from services.common.server import ManagedServer, build_server
from services.common.status import check_model_pin
from services.perturb import validation
from services.perturb.dataplane import (
    CurveAnswer,
    CurveQuery,
    PerturbDataPlane,
    RadiusQuery,
    SemanticQuery,
    feature_model,
)
from services.perturb.engine import BoundEngine, EngineConfig, UnsupportedModelError

# a bound search checks the deadline between rounds and one round may overrun it: keep 10% of the time
# left in reserve, so that a search stopped at its deadline still answers before the client's
SEARCH_ROUND_RESERVE = 0.1


class PerturbServicer(perturb_pb2_grpc.PerturbServicer):
    """F2IPerturb, F2IPerturbCurve, F2ISemantic and GetModelInfo: validate, charge, delegate to the data
    plane (which owns the engine, the result cache and the concurrent-bounds limit), convert back."""

    # DeadlineExceeded is a TimeoutError and maps to DEADLINE_EXCEEDED in services.common.status.
    error_codes = {UnsupportedModelError: grpc.StatusCode.FAILED_PRECONDITION}

    def __init__(
        self,
        runtime: ServiceRuntime,
        model: ModelFile,
        data_plane: PerturbDataPlane,
        *,
        max_batch_size: int,
        deadline_margin_s: float,
    ):
        self.runtime = runtime
        self._model, self._plane = model, data_plane
        self._max_batch_size = max_batch_size
        self._margin_s = deadline_margin_s

    def _deadline(self, call) -> float | None:
        """When a bound search must stop: the client's deadline less the reply margin and the reserve."""
        return call.deadline(self._margin_s, SEARCH_ROUND_RESERVE)

    @unary_rpc
    def F2IPerturb(self, request, call):
        query = self._radius_query(request)
        call.charge(len(query.images))
        result = self._plane.image_radius(query, deadline=self._deadline(call))
        return perturb_pb2.F2IPerturbResponse(
            image_radius=result.image_radius.tolist(),
            method_used=_method_values(result.method_used),
            model_sha256=self._model.sha256,
            search_completed=result.completed,
        )

    @unary_rpc
    def F2IPerturbCurve(self, request, call):
        query = self._curve_query(request)
        call.charge(len(query.images))
        answer = self._plane.curve(query, deadline=self._deadline(call))
        # the curve is the pointwise minimum over the methods run: AUTO stays AUTO
        return _curve_response(answer, [request.method] * len(query.images), self._model.sha256)

    @unary_rpc
    def F2ISemantic(self, request, call):
        query = self._semantic_query(request)
        call.charge(len(query.images))
        result = self._plane.semantic(query, deadline=self._deadline(call))
        return perturb_pb2.F2ISemanticResponse(
            brightness=result.brightness.tolist(),
            contrast=result.contrast.tolist(),
            l2_equivalent=result.l2_equivalent.tolist(),
            method_used=_method_values(result.method_used),
            model_sha256=self._model.sha256,
            search_completed=result.completed,
        )

    @unary_rpc
    def GetModelInfo(self, request, call):
        facts = self._plane.model_facts()
        return model_info(
            self._model,
            input_shape=facts.input_shape,
            feature_dim=facts.feature_dim,
            max_batch_size=self._max_batch_size,
            execution_provider=facts.bound_device,
            facts=facts.verified,
        )

    # ---- proto -> domain, validated in the order the fields are documented ----

    def _images(self, request):
        check_model_pin(request.model_sha256, self._model.sha256)
        return validation.images(
            request.images, input_shape=self._plane.input_shape, max_batch_size=self._max_batch_size
        )

    def _radius_query(self, request) -> RadiusQuery:
        images = self._images(request)
        return RadiusQuery(
            images=images,
            feature_radius=validation.feature_radii(request.feature_radius, len(images)),
            norm=validation.norm(request.norm),
            method=validation.method(request.method),
            relative_tolerance=validation.relative_tolerance(request.relative_tolerance),
            clip_to_pixel_box=request.clip_to_pixel_box,
        )

    def _curve_query(self, request) -> CurveQuery:
        return CurveQuery(
            images=self._images(request),
            norm=validation.norm(request.norm),
            method=validation.method(request.method),
            image_radii=validation.radius_ladder(request.num_radii, request.min_radius, request.max_radius),
            clip_to_pixel_box=request.clip_to_pixel_box,
        )

    def _semantic_query(self, request) -> SemanticQuery:
        images = self._images(request)
        return SemanticQuery(
            images=images,
            feature_radius=validation.feature_radii(request.feature_radius, len(images)),
            perturbation=validation.semantic_perturbation(request.perturbation),
            method=validation.semantic_method(request.method),
            contrast_per_brightness=validation.contrast_per_brightness(request.contrast_per_brightness),
            relative_tolerance=validation.relative_tolerance(request.relative_tolerance),
        )


# ---- domain -> proto ----


def _method_values(names: list[str]) -> list[int]:
    return [PERTURB_METHODS[name] for name in names]


def _curve_response(answer: CurveAnswer, method_used: list[int], sha256: str):
    radii = answer.image_radii.tolist()
    curves = [
        perturb_pb2.RadiusCurve(image_radius=radii, feature_shift_bound=row.tolist()) for row in answer.bounds
    ]
    return perturb_pb2.F2IPerturbCurveResponse(
        features=to_proto(answer.features),
        curves=curves,
        method_used=method_used,
        model_sha256=sha256,
        search_completed=answer.completed,
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
    plane = PerturbDataPlane(
        engine,
        feature_model(model.path, config.feature_threads),
        cache_entries=config.cache_entries,
        concurrent_bounds=config.concurrent_bounds,
        on_cache_lookup=metrics.record_cache,
    )

    def register(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        servicer = PerturbServicer(
            runtime,
            model,
            plane,
            max_batch_size=config.max_batch_size,
            deadline_margin_s=config.deadline_margin_ms / 1000.0,
        )
        perturb_pb2_grpc.add_PerturbServicer_to_server(servicer, server)
        return [perturb_pb2.DESCRIPTOR.services_by_name["Perturb"].full_name]

    server, port = build_server(config, "perturb", register, metrics=metrics)
    server.data_plane = plane  # exposed for tests and benchmarks
    return server, port
