"""Feature-API over gRPC: results against ONNX Runtime and torch, every status code, batching, TLS, health."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import auth, images, replace

from reaas.kserve.v2 import inference_pb2, inference_pb2_grpc
from reaas.tensors import from_proto, to_proto
from reaas.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.encoder.server import create_server


def _oracle(cnn_onnx, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(cnn_onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def _encode(channel, x, key: str = "alice", **kwargs) -> encoder_pb2.EncodeResponse:
    request = encoder_pb2.EncodeRequest(
        images=x if isinstance(x, common_pb2.Tensor) else to_proto(x), **kwargs
    )
    return encoder_pb2_grpc.EncoderStub(channel).Encode(request, metadata=auth(key), timeout=10)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_encode_matches_onnxruntime_and_torch(start_server, encoder_config, cnn_onnx, cnn_module):
    _, channel = start_server(create_server, encoder_config)
    x = images(5)
    response = _encode(channel, x)
    features = from_proto(response.features, field="features")
    assert features.shape == (5, 8) and features.dtype == np.float32
    np.testing.assert_allclose(features, _oracle(cnn_onnx, x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(features, cnn_module(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    assert response.model_sha256 == hashlib.sha256(cnn_onnx.read_bytes()).hexdigest()
    # Usage: B queries and the serialized sizes.
    assert response.usage.queries == 5
    assert response.usage.request_bytes == encoder_pb2.EncodeRequest(images=to_proto(x)).ByteSize()
    assert 5 * 8 * 4 < response.usage.response_bytes < response.ByteSize()


def test_uint8_images_are_scaled(start_server, encoder_config, cnn_onnx):
    _, channel = start_server(create_server, encoder_config)
    raw = np.random.default_rng(3).integers(0, 256, size=(2, 1, 28, 28), dtype=np.uint8)
    features = from_proto(_encode(channel, raw).features, field="features")
    np.testing.assert_allclose(
        features, _oracle(cnn_onnx, raw.astype(np.float32) / 255), rtol=1e-5, atol=1e-6
    )


def test_get_model_info(start_server, encoder_config, cnn_onnx):
    _, channel = start_server(create_server, encoder_config)
    info = encoder_pb2_grpc.EncoderStub(channel).GetModelInfo(
        common_pb2.GetModelInfoRequest(), metadata=auth()
    )
    assert info.model_name == "tiny-cnn"
    assert info.model_sha256 == hashlib.sha256(cnn_onnx.read_bytes()).hexdigest()
    assert list(info.input_shape) == [1, 28, 28] and info.feature_dim == 8
    assert (info.input_min, info.input_max) == (0.0, 1.0)
    # the card says 3.5; GetModelInfo reports what the bound engine proves of the served model
    from services.perturb.engine import BoundEngine

    engine = BoundEngine.from_onnx(cnn_onnx)
    assert info.lipschitz_bound_verified
    assert info.lipschitz_bound_l2 == pytest.approx(engine.lipschitz_bound_l2) != pytest.approx(3.5)
    assert info.served_precision == "float32"
    assert info.float_margin_l2 == pytest.approx(engine.pixel_box_float_margin()) and info.float_margin_l2 > 0
    assert info.feature_spread == pytest.approx(0.7)
    assert info.max_batch_size == 256 and info.execution_provider == "CPUExecutionProvider"
    assert json.loads(info.model_card_json)["note"] == "test"


def test_a_card_for_another_model_is_never_believed(tmp_path, cnn_onnx, caplog):
    from services.common.model_file import load_model_file

    model = tmp_path / "m.onnx"
    model.write_bytes(cnn_onnx.read_bytes())
    model.with_suffix(".json").write_text(json.dumps({"model_sha256": "0" * 64, "feature_spread": 9.0}))
    loaded = load_model_file(model)
    assert loaded.card == {} and loaded.feature_spread == 0.0
    assert "ignoring the card" in caplog.text


def test_model_info_without_the_bound_engine_reports_unknown(monkeypatch, cnn_onnx):
    import builtins

    from services.common.model_file import verify_model

    real_import = builtins.__import__

    def no_engine(name, *args, **kwargs):
        if name.startswith("services.perturb.engine"):
            raise ImportError("torch-free image")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_engine)
    facts = verify_model(cnn_onnx, "float32")
    assert (facts.verified, facts.lipschitz_bound_l2, facts.float_margin_l2) == (False, 0.0, 0.0)


def _bad_tensors() -> dict[str, common_pb2.Tensor]:
    good = to_proto(images(2))
    nan, inf = images(2), images(2)
    nan[0, 0, 0, 0], inf[1, 0, 3, 3] = np.nan, np.inf
    return {
        "wrong shape": to_proto(images(2).reshape(2, 28, 28, 1)),
        "wrong rank": to_proto(images(2).reshape(2, 784)),
        "unspecified dtype": common_pb2.Tensor(
            shape=good.shape, dtype=common_pb2.DTYPE_UNSPECIFIED, data=good.data
        ),
        "byte length": common_pb2.Tensor(shape=good.shape, dtype=good.dtype, data=good.data[:-4]),
        "NaN": to_proto(nan),
        "Inf": to_proto(inf),
        "above 1": to_proto(images(2) + 1.5),
        "below 0": to_proto(images(2) - 1.5),
        "empty batch": common_pb2.Tensor(shape=[0, 1, 28, 28], dtype=common_pb2.FLOAT32, data=b""),
        "no shape": common_pb2.Tensor(dtype=common_pb2.FLOAT32, data=b""),
        "oversize batch": to_proto(images(5)),
    }


@pytest.mark.parametrize("case", list(_bad_tensors()))
def test_invalid_images_give_invalid_argument_naming_the_field(start_server, encoder_config, case):
    _, channel = start_server(create_server, replace(encoder_config, max_batch_size=4))
    code, details = _code(lambda: _encode(channel, _bad_tensors()[case]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("images"), details


def test_model_pin(start_server, encoder_config, cnn_onnx):
    _, channel = start_server(create_server, encoder_config)
    sha = hashlib.sha256(cnn_onnx.read_bytes()).hexdigest()
    assert _encode(channel, images(1), model_sha256=sha).model_sha256 == sha
    code, details = _code(lambda: _encode(channel, images(1), model_sha256="0" * 64))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "model_sha256" in details


def test_auth(start_server, encoder_config):
    _, channel = start_server(create_server, encoder_config)
    stub = encoder_pb2_grpc.EncoderStub(channel)
    request = encoder_pb2.EncodeRequest(images=to_proto(images(1)))
    for metadata in [(), (("authorization", "Bearer nope"),), (("authorization", "Basic key-alice"),)]:
        code, _ = _code(lambda md=metadata: stub.Encode(request, metadata=md))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = _code(lambda: stub.GetModelInfo(common_pb2.GetModelInfoRequest()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert stub.Encode(request, metadata=auth("alice")).usage.queries == 1
    # Health stays open for probes.
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="reaas.v1.Encoder")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_refuses_to_start_without_keys(encoder_config):
    with pytest.raises(ValueError, match="without API keys"):
        create_server(replace(encoder_config, api_key_file=None))


def test_quota_per_key_and_usage_metrics(start_server, encoder_config):
    server, channel = start_server(
        create_server, replace(encoder_config, quota_images_per_minute=20, metrics_port=0)
    )
    _encode(channel, images(6), key="bob")  # bob: 10 images/min from the key file
    _encode(channel, images(4), key="bob")
    with pytest.raises(grpc.RpcError) as info:
        _encode(channel, images(3), key="bob")
    error = info.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry after" in error.details()
    retry_ms = int(dict(error.trailing_metadata())["retry-after-ms"])
    assert 0 < retry_ms <= 60_000 * 3 / 10 + 1  # 3 images at 10/min take at most 18 s to refill
    # A batch above the whole quota can never pass: no retry time, advice to split.
    code, details = _code(lambda: _encode(channel, images(11), key="bob"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "split" in details
    # alice has the server default (20/min) and her own bucket.
    _encode(channel, images(20), key="alice")
    code, _ = _code(lambda: _encode(channel, images(1), key="alice"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    labels = {"method": "Encode"}
    assert server.metrics.value("reaas_queries_total", key="bob", **labels) == 10
    assert server.metrics.value("reaas_queries_total", key="alice", **labels) == 20
    assert server.metrics.value("reaas_request_bytes_total", key="bob", **labels) > 10 * 784 * 4
    assert server.metrics.value("reaas_rpc_total", code="RESOURCE_EXHAUSTED", **labels) == 3
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    )
    assert 'reaas_queries_total{key="bob",method="Encode",service="encoder"} 10.0' in text


def test_message_size_limit(start_server, encoder_config):
    _, channel = start_server(create_server, replace(encoder_config, max_message_mb=1))
    code, _ = _code(lambda: _encode(channel, images(400)))  # 1.25 MB of float32
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_64_concurrent_clients_get_their_own_results(start_server, encoder_config, cnn_onnx):
    server, channel = start_server(
        create_server, replace(encoder_config, max_queue_delay_ms=20.0, worker_threads=64)
    )
    inputs = [images(1 + i % 3, seed=100 + i) for i in range(64)]
    expected = [_oracle(cnn_onnx, x) for x in inputs]
    barrier = threading.Barrier(64)

    def client(i: int) -> np.ndarray:
        barrier.wait()
        return from_proto(_encode(channel, inputs[i]).features, field="features")

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(client, range(64)))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert server.batcher.largest_batch_requests > 1  # requests really were coalesced
    assert server.batcher.batches_run < 64


def test_health_flips_to_not_serving_before_stop(start_server, encoder_config):
    server, channel = start_server(create_server, replace(encoder_config, drain_delay_s=1.0))
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "reaas.v1.Encoder", "inference.GRPCInferenceService"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=server.stop, args=(2.0,))
    stopper.start()
    time.sleep(0.3)  # inside the drain delay: still accepting calls, but reporting NOT_SERVING
    reply = health.Check(health_pb2.HealthCheckRequest(service="reaas.v1.Encoder"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _encode(channel, images(1)).usage.queries == 1  # in-flight work still served while draining
    kserve = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert not kserve.ServerReady(inference_pb2.ServerReadyRequest(), timeout=5).ready
    stopper.join(10)
    code, _ = _code(lambda: _encode(channel, images(1)))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_tls_round_trip(tmp_path, encoder_config, cnn_onnx):
    from reliability.security import generate_self_signed

    cert, key = generate_self_signed(tmp_path)  # for 127.0.0.1 and localhost
    cert_pem = cert.read_bytes()
    server, port = create_server(replace(encoder_config, tls_cert=cert, tls_key=key))
    server.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            x = images(2)
            features = from_proto(_encode(channel, x).features, field="features")
            np.testing.assert_allclose(features, _oracle(cnn_onnx, x), rtol=1e-5, atol=1e-6)
        with grpc.insecure_channel(f"localhost:{port}") as plain:
            code, _ = _code(lambda: _encode(plain, images(1)))
            assert code == grpc.StatusCode.UNAVAILABLE  # plaintext cannot talk to a TLS port
    finally:
        server.stop(0)


def test_deadline_exceeded_while_queued(start_server, encoder_config):
    _, channel = start_server(create_server, replace(encoder_config, max_queue_delay_ms=2000.0))
    code, _ = _code(
        lambda: encoder_pb2_grpc.EncoderStub(channel).Encode(
            encoder_pb2.EncodeRequest(images=to_proto(images(1))), metadata=auth(), timeout=0.3
        )
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_without_dynamic_batching(start_server, encoder_config, cnn_onnx):
    server, channel = start_server(create_server, replace(encoder_config, dynamic_batching=False))
    assert server.batcher is None
    x = images(3)
    np.testing.assert_allclose(
        from_proto(_encode(channel, x).features, field="f"), _oracle(cnn_onnx, x), rtol=1e-5, atol=1e-6
    )


def test_calls_are_traced(start_server, encoder_config):
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    server, channel = start_server(create_server, encoder_config)
    exporter = InMemorySpanExporter()
    server.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    _encode(channel, images(2))
    _code(lambda: _encode(channel, images(1) + 3))
    ok, failed = exporter.get_finished_spans()
    assert ok.name == "encoder/Encode" and ok.attributes["reaas.queries"] == 2
    assert ok.attributes["rpc.grpc.status_code"] == 0 and ok.attributes["reaas.key"] == "alice"
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_provider_preference_is_filtered_by_availability_and_precision(monkeypatch):
    from services.encoder import onnx_model

    def names(chosen):
        return [p for p, _ in chosen]

    monkeypatch.setattr(onnx_model.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert names(onnx_model.choose_providers()) == ["CPUExecutionProvider"]
    available = ["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"]
    monkeypatch.setattr(onnx_model.ort, "get_available_providers", lambda: available)
    # float32 (default): no TensorRT, CUDA with TF32 off and implicit-GEMM convolutions
    chosen = onnx_model.choose_providers()
    assert names(chosen) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1] == {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
    with pytest.raises(ValueError, match="TensorrtExecutionProvider"):
        onnx_model.choose_providers(["TensorrtExecutionProvider"])
    reduced = onnx_model.choose_providers(precision="reduced")
    assert names(reduced) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert reduced[0][1]["trt_fp16_enable"] == "True" and reduced[1][1]["use_tf32"] == "1"
    assert names(onnx_model.choose_providers(["CUDAExecutionProvider"])) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(ValueError, match="precision"):
        onnx_model.choose_providers(precision="int8")


def test_otlp_exporter_is_used_when_an_endpoint_is_configured():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    from services.common.tracing import make_tracer_provider

    provider = make_tracer_provider("encoder", otlp_endpoint="http://127.0.0.1:4317")
    exporters = [p.span_exporter for p in provider._active_span_processor._span_processors]
    assert any(isinstance(e, OTLPSpanExporter) for e in exporters)
    provider.shutdown()
