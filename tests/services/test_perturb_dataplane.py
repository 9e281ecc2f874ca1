"""The perturb data plane: the servicer only converts and delegates to it; its curve features are the served
ONNX model's own output; it owns the model facts GetModelInfo reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from service_helpers import auth, images

from reaas.tensors import from_proto, to_proto
from reaas.v1 import common_pb2, perturb_pb2, perturb_pb2_grpc
from services.common.model_file import VerifiedFacts, engine_facts, load_model_file
from services.common.server import build_server
from services.perturb.dataplane import (
    CurveAnswer,
    CurveQuery,
    ModelFacts,
    PerturbDataPlane,
    RadiusQuery,
    SemanticQuery,
    feature_model,
)
from services.perturb.engine import BoundEngine, CurveResult, EngineConfig, RadiusResult
from services.perturb.semantic import SemanticResult
from services.perturb.server import PerturbServicer, create_server

# ---- the servicer only converts and delegates -------------------------------------------------------------


@dataclass
class RecordingDataPlane:
    """The data plane's API with canned answers; records every call. It holds no engine at all."""

    input_shape: tuple[int, ...] = (1, 28, 28)
    calls: list[tuple[str, object, float | None]] = field(default_factory=list)

    def model_facts(self) -> ModelFacts:
        self.calls.append(("model_facts", None, None))
        verified = VerifiedFacts(2.5, 1e-4, "float32", True)
        return ModelFacts(self.input_shape, 5, "torch-test (3 threads)", verified)

    def image_radius(self, query: RadiusQuery, deadline=None) -> RadiusResult:
        self.calls.append(("image_radius", query, deadline))
        return RadiusResult(query.feature_radius / 4, ["ibp"] * len(query.images), 7, completed=False)

    def curve(self, query: CurveQuery, deadline=None) -> CurveAnswer:
        self.calls.append(("curve", query, deadline))
        b = len(query.images)
        bounds = np.tile(3.0 * query.image_radii, (b, 1))
        return CurveAnswer(np.full((b, 5), 0.25, np.float32), query.image_radii, bounds, completed=True)

    def semantic(self, query: SemanticQuery, deadline=None) -> SemanticResult:
        self.calls.append(("semantic", query, deadline))
        t = query.feature_radius / 10
        return SemanticResult(t, t, 2 * t, t / 2, ["crown"] * len(t), 3, completed=True)


@pytest.fixture
def recorded(perturb_config, linear_onnx):
    """(stub, recording data plane) of a Perturb servicer serving ``linear_onnx``'s model file."""
    plane, model = RecordingDataPlane(), load_model_file(linear_onnx)

    def register(server, runtime):
        servicer = PerturbServicer(runtime, model, plane, max_batch_size=8, deadline_margin_s=0.05)
        perturb_pb2_grpc.add_PerturbServicer_to_server(servicer, server)
        return [perturb_pb2.DESCRIPTOR.services_by_name["Perturb"].full_name]

    server, port = build_server(perturb_config, "perturb", register)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield perturb_pb2_grpc.PerturbStub(channel), plane
    channel.close()
    server.stop(0)


def test_every_rpc_goes_to_the_data_plane(recorded):
    stub, plane = recorded
    x = images(2, seed=3)
    radius = stub.F2IPerturb(
        perturb_pb2.F2IPerturbRequest(
            images=to_proto(x), feature_radius=[0.4, 0.8], norm=common_pb2.LINF, method=common_pb2.IBP,
            relative_tolerance=0.01, clip_to_pixel_box=True,
        ),
        metadata=auth(), timeout=30,
    )
    assert list(radius.image_radius) == [0.1, 0.2] and not radius.search_completed
    assert list(radius.method_used) == [common_pb2.IBP] * 2
    name, query, deadline = plane.calls[-1]
    assert name == "image_radius" and deadline is not None
    np.testing.assert_array_equal(query.images, x)
    assert (query.norm, query.method, query.relative_tolerance, query.clip_to_pixel_box) == (
        "linf", "ibp", 0.01, True
    )

    curve = stub.F2IPerturbCurve(
        perturb_pb2.F2IPerturbCurveRequest(images=to_proto(x), num_radii=3, min_radius=0.1, max_radius=0.4),
        metadata=auth(),
    )
    name, query, deadline = plane.calls[-1]
    assert name == "curve" and deadline is None  # no client deadline: none for the data plane either
    np.testing.assert_allclose(query.image_radii, [0.1, 0.2, 0.4])
    assert (query.norm, query.method) == ("l2", "auto")
    np.testing.assert_array_equal(from_proto(curve.features, field="features"), np.full((2, 5), 0.25))
    np.testing.assert_allclose(curve.curves[1].feature_shift_bound, [0.3, 0.6, 1.2])
    assert list(curve.method_used) == [common_pb2.AUTO] * 2 and curve.search_completed

    semantic = stub.F2ISemantic(
        perturb_pb2.F2ISemanticRequest(
            images=to_proto(x), feature_radius=[1.0, 2.0], perturbation=perturb_pb2.BRIGHTNESS_CONTRAST,
            contrast_per_brightness=2.0,
        ),
        metadata=auth(), timeout=30,
    )
    name, query, _ = plane.calls[-1]
    assert name == "semantic" and (query.perturbation, query.contrast_per_brightness) == (
        "brightness_contrast", 2.0
    )
    assert list(semantic.l2_equivalent) == [0.05, 0.1] and list(semantic.contrast) == [0.2, 0.4]

    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), metadata=auth())
    assert plane.calls[-1][0] == "model_facts"
    assert (info.feature_dim, info.execution_provider, info.lipschitz_bound_l2) == (
        5, "torch-test (3 threads)", 2.5
    )
    assert info.float_margin_l2 == 1e-4 and info.max_batch_size == 8
    assert [c[0] for c in plane.calls] == ["image_radius", "curve", "semantic", "model_facts"]


def test_invalid_requests_never_reach_the_data_plane(recorded):
    stub, plane = recorded
    with pytest.raises(grpc.RpcError) as error:
        stub.F2IPerturb(
            perturb_pb2.F2IPerturbRequest(images=to_proto(images(2)), feature_radius=[0.1]), metadata=auth()
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("feature_radius") and plane.calls == []


# ---- the data plane over the real engine ------------------------------------------------------------------


def _plane(path, **kwargs) -> PerturbDataPlane:
    return PerturbDataPlane(BoundEngine.from_onnx(path), feature_model(path), cache_entries=100, **kwargs)


def test_curve_features_are_the_onnx_models_output(cnn_onnx, cnn_module):
    plane = _plane(cnn_onnx)
    x = images(3, seed=11)
    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    (served,) = session.run(None, {session.get_inputs()[0].name: x})
    answer = plane.curve(CurveQuery(x, np.array([0.01, 0.1]), method="lipschitz"))
    assert answer.features.dtype == np.float32 and answer.features.shape == (3, 8)
    np.testing.assert_allclose(answer.features, served, rtol=1e-6, atol=1e-7)
    with torch.no_grad():  # a second implementation: the torch module that was exported
        np.testing.assert_allclose(answer.features, cnn_module(torch.from_numpy(x)).numpy(), atol=1e-5)
    again = plane.curve(CurveQuery(x[::-1].copy(), np.array([0.01, 0.1]), method="lipschitz"))  # cache hits
    np.testing.assert_array_equal(again.features, answer.features[::-1])
    assert plane.cache.hits == 3


def test_curve_features_of_the_linear_encoder(linear_onnx, linear_weight):
    plane = _plane(linear_onnx)
    x = images(2, seed=12)
    answer = plane.curve(CurveQuery(x, np.geomspace(1e-3, 1.0, 5), method="lipschitz"))
    np.testing.assert_allclose(answer.features, x.reshape(2, -1) @ linear_weight.T, rtol=1e-4, atol=1e-5)
    sigma = np.linalg.norm(linear_weight.astype(np.float64), 2)
    assert answer.completed and np.all(answer.bounds >= sigma * answer.image_radii)


def test_model_facts_come_from_the_engine(linear_onnx):
    engine = BoundEngine.from_onnx(linear_onnx)
    plane = PerturbDataPlane(engine, feature_model(linear_onnx), cache_entries=0)
    facts = plane.model_facts()
    assert facts.input_shape == (1, 28, 28) and facts.feature_dim == 6
    assert facts.verified == engine_facts(engine)
    assert facts.bound_device == f"torch-cpu ({torch.get_num_threads()} threads)"


def test_a_feature_model_of_another_shape_is_refused(linear_onnx, tmp_path):
    from onnx_helpers import export_encoder

    other = export_encoder(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(196, 2)),
                           tmp_path / "small.onnx", {}, input_shape=(1, 14, 14))
    with pytest.raises(ValueError, match="not the same model"):
        PerturbDataPlane(BoundEngine.from_onnx(linear_onnx), feature_model(other), cache_entries=0)


def test_create_server_builds_one_data_plane(start_server, perturb_config):
    server, _ = start_server(create_server, perturb_config)
    assert isinstance(server.data_plane, PerturbDataPlane)
    assert server.data_plane.model_facts().verified.served_precision == perturb_config.served_precision


class _NoFeatures:
    """A bound engine stand-in without ``features()`` (being removed from the engine)."""

    input_shape, feature_dim, lipschitz_bound_l2, config = (1, 28, 28), 6, 1.0, EngineConfig()

    def pixel_box_float_margin(self) -> float:
        return 0.0

    def curve(self, x, image_radii, *, norm, method, clip_to_pixel_box, deadline):
        return CurveResult(np.tile(np.asarray(image_radii), (len(x), 1)), completed=False)

    def image_radius(self, x, feature_radius, **_):
        return RadiusResult(np.asarray(feature_radius), ["lipschitz"] * len(x), 1, completed=True)


def test_truncated_curves_are_not_cached_and_need_no_engine_features(linear_onnx, linear_weight):
    plane = PerturbDataPlane(_NoFeatures(), feature_model(linear_onnx), cache_entries=10)
    x = images(1, seed=13)
    answer = plane.curve(CurveQuery(x, np.array([0.1, 0.2])))
    assert not answer.completed and len(plane.cache) == 0
    np.testing.assert_allclose(answer.features, x.reshape(1, -1) @ linear_weight.T, rtol=1e-4, atol=1e-5)
    plane.image_radius(RadiusQuery(x, np.array([0.3])))
    assert len(plane.cache) == 1
