"""F2IPerturb-API over gRPC: radii vs a linear encoder's closed form, deadlines, cache, status codes.

The linear encoder f(x) = W x has the exact l2 answer R = R_F / ||W||_2. Deadline, cache and error-mapping
tests use a small stand-in engine with the bound engine's API so they control timing exactly.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import EngineFacts, auth, images, replace

from reaas.tensors import from_proto, to_proto
from reaas.v1 import common_pb2, perturb_pb2, perturb_pb2_grpc
from services.perturb.engine import (
    CurveResult,
    DeadlineExceeded,
    RadiusResult,
    UnsupportedModelError,
)
from services.perturb.server import create_server


def _stub(channel) -> perturb_pb2_grpc.PerturbStub:
    return perturb_pb2_grpc.PerturbStub(channel)


def _radius(
    channel, x, feature_radius, key="alice", timeout=30.0, **fields
) -> perturb_pb2.F2IPerturbResponse:
    request = perturb_pb2.F2IPerturbRequest(images=to_proto(x), feature_radius=feature_radius, **fields)
    return _stub(channel).F2IPerturb(request, metadata=auth(key), timeout=timeout)


def _curve(channel, x, **fields) -> perturb_pb2.F2IPerturbCurveResponse:
    request = perturb_pb2.F2IPerturbCurveRequest(images=to_proto(x), **fields)
    return _stub(channel).F2IPerturbCurve(request, metadata=auth(), timeout=30)


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- the real bound engine against closed forms ----------------------------------------------------------


@pytest.mark.parametrize("method", [common_pb2.LIPSCHITZ, common_pb2.CROWN_IBP, common_pb2.AUTO])
def test_l2_radius_matches_linear_closed_form(start_server, perturb_config, linear_weight, method):
    _, channel = start_server(create_server, perturb_config)
    x = images(3, seed=5)
    feature_radius = [0.05, 0.4, 1.5]
    reply = _radius(channel, x, feature_radius, method=method)
    sigma = np.linalg.norm(linear_weight.astype(np.float64), 2)
    exact = np.array(feature_radius) / sigma
    radius = np.array(reply.image_radius)
    assert np.all(radius <= exact), (radius, exact)  # sound: never beyond the exact radius
    # and tight for a linear map, up to the proven float32 margin (at most the pixel-box one)
    margin = _stub(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), metadata=auth()).float_margin_l2
    assert np.all(radius >= 0.99 * (np.array(feature_radius) - margin) / sigma), (radius, exact, margin)
    assert all(m != common_pb2.AUTO for m in reply.method_used) and len(reply.method_used) == 3
    if method != common_pb2.AUTO:
        assert list(reply.method_used) == [method] * 3
    assert reply.usage.queries == 3


def test_zero_feature_radius_gives_zero(start_server, perturb_config):
    _, channel = start_server(create_server, perturb_config)
    assert list(_radius(channel, images(2), [0.0, 0.0], method=common_pb2.LIPSCHITZ).image_radius) == [
        0.0,
        0.0,
    ]


def test_linf_radius_resists_sign_attacks(start_server, perturb_config, linear_weight):
    _, channel = start_server(create_server, perturb_config)
    reply = _radius(channel, images(1), [0.3], norm=common_pb2.LINF, method=common_pb2.CROWN_IBP)
    r = reply.image_radius[0]
    assert r > 0
    signs = np.sign(np.random.default_rng(0).normal(size=(2000, 784)))
    signs[0] = np.sign(np.linalg.svd(linear_weight.astype(np.float64))[2][0])  # the top singular direction
    assert np.max(np.linalg.norm(r * signs @ linear_weight.T.astype(np.float64), axis=1)) < 0.3


def test_curve_is_sound_monotone_and_consistent(start_server, perturb_config, linear_weight, linear_onnx):
    _, channel = start_server(create_server, perturb_config)
    x = images(2, seed=9)
    reply = _curve(channel, x, method=common_pb2.LIPSCHITZ)
    sigma = np.linalg.norm(linear_weight.astype(np.float64), 2)
    info = _stub(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), metadata=auth())
    info_margin = info.float_margin_l2
    assert len(reply.curves) == 2 and list(reply.method_used) == [common_pb2.LIPSCHITZ] * 2
    features = from_proto(reply.features, field="features")
    np.testing.assert_allclose(features, x.reshape(2, -1) @ linear_weight.T, rtol=1e-4, atol=1e-5)
    for curve in reply.curves:
        radii, bounds = np.array(curve.image_radius), np.array(curve.feature_shift_bound)
        assert len(radii) == 64 and radii[0] == pytest.approx(1e-3) and radii[-1] == pytest.approx(4.0)
        np.testing.assert_allclose(radii[1:] / radii[:-1], (4.0 / 1e-3) ** (1 / 63), rtol=1e-9)
        assert np.all(np.diff(bounds) >= 0) and np.all(bounds >= sigma * radii)  # sound and monotone
        assert np.all(bounds <= 1.01 * sigma * radii + info_margin)
    custom = _curve(channel, x[:1], num_radii=3, min_radius=0.1, max_radius=0.4)
    np.testing.assert_allclose(custom.curves[0].image_radius, [0.1, 0.2, 0.4])


def test_model_info_reports_the_engine_bound(start_server, perturb_config, linear_weight, linear_onnx):
    import hashlib

    _, channel = start_server(create_server, perturb_config)
    info = _stub(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), metadata=auth())
    sigma = np.linalg.norm(linear_weight.astype(np.float64), 2)
    assert sigma <= info.lipschitz_bound_l2 <= 1.01 * sigma
    assert info.model_sha256 == hashlib.sha256(linear_onnx.read_bytes()).hexdigest()
    assert info.feature_dim == 6 and list(info.input_shape) == [1, 28, 28]
    assert info.execution_provider == f"torch-cpu ({torch.get_num_threads()} threads)"
    assert info.max_batch_size == 64
    assert info.lipschitz_bound_verified and info.served_precision == "float32"
    # linear f = W x, no bias: E ≤ γ_k ‖|W| 1‖₂ + σ u ‖1‖₂ on the pixel box (and twice that for two points)
    w = np.abs(linear_weight.astype(np.float64))
    gamma = (w.shape[1] + 9) * 2.0**-24 / (1 - (w.shape[1] + 9) * 2.0**-24)
    closed = 2 * (gamma * np.linalg.norm(w.sum(1)) + sigma * 2.0**-24 * 28)
    assert 0 < info.float_margin_l2 <= 2 * closed  # the engine's box bound adds E at the box center


# ---- validation and status codes ---------------------------------------------------------------------------

_BAD_RADIUS_FIELDS = {
    "too few radii": ({"feature_radius": [0.1]}, "feature_radius"),
    "negative radius": ({"feature_radius": [0.1, -0.1]}, "feature_radius"),
    "NaN radius": ({"feature_radius": [0.1, float("nan")]}, "feature_radius"),
    "Inf radius": ({"feature_radius": [float("inf"), 0.1]}, "feature_radius"),
    "tolerance too big": ({"relative_tolerance": 0.6}, "relative_tolerance"),
    "tolerance too small": ({"relative_tolerance": 1e-7}, "relative_tolerance"),
    "tolerance negative": ({"relative_tolerance": -0.1}, "relative_tolerance"),
    "tolerance NaN": ({"relative_tolerance": float("nan")}, "relative_tolerance"),
    "unknown norm": ({"norm": 7}, "norm"),
    "unknown method": ({"method": 9}, "method"),
    "pixels out of range": ({"images": to_proto(images(2) + 2)}, "images"),
    "empty batch": ({"images": common_pb2.Tensor(shape=[0, 1, 28, 28], dtype=common_pb2.FLOAT32)}, "images"),
}


@pytest.mark.parametrize("case", list(_BAD_RADIUS_FIELDS))
def test_invalid_f2iperturb_fields(start_server, perturb_config, case):
    _, channel = start_server(create_server, perturb_config)
    fields, name = _BAD_RADIUS_FIELDS[case]
    request = perturb_pb2.F2IPerturbRequest(images=to_proto(images(2)), feature_radius=[0.1, 0.2])
    for key, value in fields.items():
        if key == "images":
            request.images.CopyFrom(value)
        elif key == "feature_radius":
            request.ClearField("feature_radius")
            request.feature_radius.extend(value)
        else:
            setattr(request, key, value)
    error = _error(lambda: _stub(channel).F2IPerturb(request, metadata=auth()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(name), (
        error.details()
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"num_radii": 1},
        {"num_radii": 2000},
        {"min_radius": -1.0},
        {"min_radius": 2.0, "max_radius": 1.0},
        {"max_radius": float("inf")},
        {"norm": 3},
        {"method": -1},
    ],
)
def test_invalid_curve_fields(start_server, perturb_config, fields):
    _, channel = start_server(create_server, perturb_config)
    error = _error(lambda: _curve(channel, images(1), **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


def test_oversize_batch_and_pin_mismatch(start_server, perturb_config):
    _, channel = start_server(create_server, replace(perturb_config, max_batch_size=2))
    error = _error(lambda: _radius(channel, images(3), [0.1] * 3))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch_size" in error.details()
    error = _error(lambda: _radius(channel, images(1), [0.1], model_sha256="ab" * 32))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = _error(lambda: _curve(channel, images(1), model_sha256="ab" * 32))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_auth_quota_and_health(start_server, perturb_config):
    server, channel = start_server(create_server, perturb_config)
    error = _error(
        lambda: _stub(channel).F2IPerturb(
            perturb_pb2.F2IPerturbRequest(images=to_proto(images(1)), feature_radius=[0.1])
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    _radius(channel, images(8), [0.1] * 8, key="bob", method=common_pb2.LIPSCHITZ)  # bob: 10 images/min
    error = _error(lambda: _radius(channel, images(4), [0.1] * 4, key="bob"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry-after-ms" in dict(error.trailing_metadata())
    assert server.metrics.value("reaas_queries_total", method="F2IPerturb", key="bob") == 8
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="reaas.v1.Perturb")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ---- deadlines, cache, method mapping with a stand-in engine -----------------------------------------------


class StandInEngine(EngineFacts):
    """The bound engine's API (no ``features``: the data plane runs the served model itself) with scripted
    behaviour: radius = R_F / 2, records calls and deadlines."""

    def __init__(self, behaviour: str = "ok"):
        self.behaviour = behaviour
        self.calls: list[tuple[str, int, float | None]] = []

    def image_radius(
        self, x, feature_radius, *, norm, method, relative_tolerance, clip_to_pixel_box, deadline
    ):
        self.calls.append(("radius", len(x), deadline))
        if self.behaviour == "deadline":
            raise DeadlineExceeded("search could not verify a radius in time")
        if self.behaviour == "unsupported":
            raise UnsupportedModelError("op 'Softmax' cannot be bounded by crown")
        used = ["crown_ibp" if i % 2 == 0 else "lipschitz" for i in range(len(x))]
        return RadiusResult(np.asarray(feature_radius) / 2.0, used, 3, completed=True)

    def curve(self, x, image_radii, *, norm, method, clip_to_pixel_box, deadline):
        self.calls.append(("curve", len(x), deadline))
        return CurveResult(np.tile(2.0 * np.asarray(image_radii), (len(x), 1)), completed=True)


def test_engine_deadline_becomes_deadline_exceeded(start_server, perturb_config):
    engine = StandInEngine("deadline")
    _, channel = start_server(create_server, replace(perturb_config, deadline_margin_ms=500), engine=engine)
    started = time.monotonic()
    error = _error(lambda: _radius(channel, images(1), [0.1], timeout=5.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0  # the server answered, long before the client's own timeout
    ((_, _, deadline),) = engine.calls
    assert started + 4.0 < deadline < started + 4.6  # about call time + 5 s timeout - 0.5 s margin


def test_deadline_too_close_never_reaches_the_engine(start_server, perturb_config):
    engine = StandInEngine()
    _, channel = start_server(create_server, replace(perturb_config, deadline_margin_ms=2000), engine=engine)
    error = _error(lambda: _radius(channel, images(1), [0.1], timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and engine.calls == []
    _radius(channel, images(1), [0.1], timeout=None)
    assert engine.calls[-1][2] is None  # no client deadline: the engine gets none either


def test_unsupported_model_is_failed_precondition(start_server, perturb_config):
    _, channel = start_server(create_server, perturb_config, engine=StandInEngine("unsupported"))
    error = _error(lambda: _radius(channel, images(1), [0.1], method=common_pb2.CROWN))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "Softmax" in error.details()


def test_cache_and_method_mapping(start_server, perturb_config):
    engine = StandInEngine()
    server, channel = start_server(create_server, perturb_config, engine=engine)
    x = images(2, seed=4)
    first = _radius(channel, x, [0.2, 0.4])
    assert list(first.image_radius) == [0.1, 0.2]
    assert list(first.method_used) == [common_pb2.CROWN_IBP, common_pb2.LIPSCHITZ]
    assert _radius(channel, x, [0.2, 0.4]).image_radius == first.image_radius
    assert [c[:2] for c in engine.calls] == [("radius", 2)]  # second call served from the cache
    _radius(channel, x, [0.2, 0.8])  # a new R_F for image 1 only
    _radius(channel, x, [0.2, 0.4], norm=common_pb2.LINF)  # another norm: both miss
    _radius(channel, x, [0.2, 0.4], clip_to_pixel_box=True)
    assert [c[1] for c in engine.calls] == [2, 1, 2, 2]
    _curve(channel, x, num_radii=4)
    _curve(channel, x, num_radii=4)
    _curve(channel, x, num_radii=5)
    assert [c[:2] for c in engine.calls if c[0] == "curve"] == [("curve", 2), ("curve", 2)]
    assert server.metrics.value("reaas_cache_lookups_total", outcome="hit") == 2 + 1 + 2
    _, channel2 = start_server(
        create_server, replace(perturb_config, cache_entries=0), engine=(engine2 := StandInEngine())
    )
    _radius(channel2, x, [0.2, 0.4])
    _radius(channel2, x, [0.2, 0.4])
    assert len(engine2.calls) == 2


def test_queued_call_times_out_waiting_for_a_busy_engine(start_server, perturb_config):
    class SlowEngine(StandInEngine):
        def image_radius(self, x, feature_radius, **kwargs):
            time.sleep(1.5)
            return super().image_radius(x, feature_radius, **kwargs)

    engine = SlowEngine()
    _, channel = start_server(create_server, replace(perturb_config, deadline_margin_ms=10), engine=engine)
    busy = _stub(channel).F2IPerturb.future(
        perturb_pb2.F2IPerturbRequest(images=to_proto(images(1)), feature_radius=[0.1]),
        metadata=auth(),
        timeout=10,
    )
    time.sleep(0.3)  # the first call holds the only engine slot (concurrent_bounds = 1)
    error = _error(lambda: _radius(channel, images(1, seed=1), [0.1], timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert list(busy.result().image_radius) == [0.05] and len(engine.calls) == 1


def test_a_server_bug_is_internal_without_leaking_details(start_server, perturb_config):
    class BrokenEngine(StandInEngine):
        def image_radius(self, *args, **kwargs):
            raise RuntimeError("secret stack detail")

    _, channel = start_server(create_server, perturb_config, engine=BrokenEngine())
    error = _error(lambda: _radius(channel, images(1), [0.1]))
    assert error.code() == grpc.StatusCode.INTERNAL and "secret" not in error.details()


def test_every_engine_method_has_a_wire_name_on_both_sides():
    """A method the engine can report must map to the proto enum on the server and back in the SDK."""
    from edge_client.sdk import _METHOD_NAMES
    from reaas.methods import PERTURB_METHODS
    from services.perturb.engine.engine import METHODS as ENGINE_METHODS

    assert set(ENGINE_METHODS) <= set(PERTURB_METHODS)
    assert {PERTURB_METHODS[m] for m in ENGINE_METHODS} <= set(_METHOD_NAMES)
