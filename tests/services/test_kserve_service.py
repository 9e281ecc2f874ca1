"""KServe v2 (Open Inference Protocol) on the Feature-API port: tritonclient unchanged, and our own stubs.

tritonclient registers the same ``inference.*`` protobuf symbols as ``reaas.kserve.v2`` in the default
descriptor pool, so the two cannot share a process: the tritonclient check runs in a subprocess.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest
from service_helpers import KEYS, auth, images

from reaas.kserve.v2 import inference_pb2, inference_pb2_grpc
from reaas.tensors import from_proto, to_proto
from reaas.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import create_server

_TRITON_CLIENT = textwrap.dedent("""
    import io, json, sys
    import numpy as np
    import tritonclient.grpc as tc
    port, key = sys.argv[1], sys.argv[2]
    x = np.load(io.BytesIO(sys.stdin.buffer.read()))
    client = tc.InferenceServerClient(url=f"127.0.0.1:{port}")
    headers = {"authorization": f"Bearer {key}"}
    meta = client.get_model_metadata("tiny-cnn", headers=headers, as_json=True)
    inp = tc.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tiny-cnn", [inp], outputs=[tc.InferRequestedOutput("features")], headers=headers,
                          request_id="r1")
    try:
        client.infer("tiny-cnn", [inp])
        unauthenticated = False
    except tc.InferenceServerException as exc:
        unauthenticated = exc.status() == "StatusCode.UNAUTHENTICATED"
    print(json.dumps({
        "live": client.is_server_live(), "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("tiny-cnn", headers=headers),
        "metadata": meta, "features": result.as_numpy("features").tolist(),
        "id": result.get_response().id, "unauthenticated": unauthenticated,
        "usage_queries": result.get_response().parameters["usage_queries"].int64_param}))
""")


def test_tritonclient_model_infer_equals_encode(start_server, encoder_config):
    server, channel = start_server(create_server, encoder_config)
    x = images(3, seed=7)
    encoded = encoder_pb2_grpc.EncoderStub(channel).Encode(
        encoder_pb2.EncodeRequest(images=to_proto(x)), metadata=auth()
    )
    buffer = io.BytesIO()
    np.save(buffer, x)
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_CLIENT, str(server.port), KEYS["alice"]],
        input=buffer.getvalue(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    reply = json.loads(done.stdout)
    assert reply["live"] and reply["ready"] and reply["model_ready"] and reply["unauthenticated"]
    np.testing.assert_array_equal(
        np.array(reply["features"], dtype=np.float32), from_proto(encoded.features, field="features")
    )
    assert reply["id"] == "r1" and int(reply["usage_queries"]) == 3
    meta = reply["metadata"]
    assert meta["name"] == "tiny-cnn" and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "images", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    assert meta["outputs"][0] == {"name": "features", "datatype": "FP32", "shape": ["-1", "8"]}


def _infer_request(x: np.ndarray, **overrides) -> inference_pb2.ModelInferRequest:
    fields = {"name": "images", "datatype": "FP32", "shape": list(x.shape)}
    fields.update({k: v for k, v in overrides.items() if k in fields})
    request = inference_pb2.ModelInferRequest(
        model_name=overrides.get("model_name", "tiny-cnn"),
        inputs=[inference_pb2.ModelInferRequest.InferInputTensor(**fields)],
        raw_input_contents=[x.astype("<f4").tobytes()],
    )
    for name in overrides.get("outputs", []):
        request.outputs.add(name=name)
    return request


def test_typed_contents_and_errors(start_server, encoder_config):
    _, channel = start_server(create_server, encoder_config)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = images(2, seed=3)
    raw = stub.ModelInfer(_infer_request(x), metadata=auth())
    typed_request = inference_pb2.ModelInferRequest(
        model_name="tiny-cnn",
        inputs=[
            inference_pb2.ModelInferRequest.InferInputTensor(
                name="images",
                datatype="FP32",
                shape=list(x.shape),
                contents=inference_pb2.InferTensorContents(fp32_contents=x.ravel().tolist()),
            )
        ],
    )
    typed = stub.ModelInfer(typed_request, metadata=auth())
    assert raw.raw_output_contents[0] == typed.raw_output_contents[0]
    assert list(raw.outputs[0].shape) == [2, 8]

    cases = {
        grpc.StatusCode.NOT_FOUND: [_infer_request(x, model_name="other")],
        grpc.StatusCode.INVALID_ARGUMENT: [
            _infer_request(x, name="pixels"),
            _infer_request(x, datatype="BYTES"),
            _infer_request(x, shape=[2, 1, 28, 27]),
            _infer_request(x * 3),
            _infer_request(x, outputs=["logits"]),
        ],
    }
    for code, requests in cases.items():
        for request in requests:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=auth())
            assert info.value.code() == code, info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="other"), metadata=auth())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.ServerLive(inference_pb2.ServerLiveRequest()).live  # liveness needs no key
