"""F2ISemantic over gRPC: the servicer delegates to the certifier; bad requests get INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from onnx_helpers import export_encoder
from semantic_nets import SIDE, conv_net, images

from edge_client.sdk import ClientConfig, PerturbClient
from reaas.tensors import to_proto
from reaas.v1 import common_pb2, perturb_pb2, perturb_pb2_grpc
from services.common.config import PerturbConfig
from services.perturb.engine import BoundEngine
from services.perturb.semantic import SemanticCertifier
from services.perturb.server import create_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A perturb server on 127.0.0.1:0 serving the tiny conv net, with SynBench fields in its card."""
    path = tmp_path_factory.mktemp("models") / "sem.onnx"
    card = {"synbench_score": 0.25, "synbench": {"threshold_accuracy": 0.7}}
    export_encoder(conv_net(0), path, card, input_shape=(1, SIDE, SIDE))
    config = PerturbConfig(model_path=path, port=0, bind_address="127.0.0.1", insecure_no_auth=True,
                           worker_threads=2)
    server, port = create_server(config)
    server.start()
    yield path, f"127.0.0.1:{port}"
    server.stop(0)


def test_client_semantic_matches_the_certifier(served):
    path, target = served
    client = PerturbClient(ClientConfig(target))
    x, rf = images(2, 0), np.array([0.1, 0.3])
    answer = client.semantic(x, rf, perturbation="brightness")
    local = SemanticCertifier(BoundEngine.from_onnx(path)).certify(x, rf, "brightness")
    np.testing.assert_allclose(answer.brightness, local.brightness)
    np.testing.assert_allclose(answer.l2_equivalent, local.l2_equivalent)
    assert np.all(answer.contrast == 0) and answer.methods_used == ["crown", "crown"]
    both = client.semantic(x, rf, perturbation="brightness_contrast", contrast_per_brightness=0.5)
    np.testing.assert_allclose(both.contrast, 0.5 * both.brightness)
    info = client.model_info()
    assert info.synbench_score == 0.25 and info.synbench_threshold_accuracy == 0.7


@pytest.mark.parametrize(
    "change",
    [{"method": common_pb2.LOCAL_LIPSCHITZ}, {"contrast_per_brightness": -1.0}, {"perturbation": 7},
     {"feature_radius": [0.1]}, {"relative_tolerance": 0.9}],
)
def test_bad_requests_are_invalid_argument(served, change):
    _, target = served
    stub = perturb_pb2_grpc.PerturbStub(grpc.insecure_channel(target))
    fields = {"images": to_proto(images(2, 1)), "feature_radius": [0.1, 0.2], **change}
    with pytest.raises(grpc.RpcError) as err:
        stub.F2ISemantic(perturb_pb2.F2ISemanticRequest(**fields), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
