"""F2IPerturb answers exactly what the in-process bound engine answers for the same images and R_F.

Both sides run the same float64 arithmetic, so any difference means they certified different sets (for
example a pixel-box default on one side only) or the engine's rounding depended on something besides
the pixels (the memory layout of the caller's array).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx_helpers import export_encoder
from service_helpers import auth, replace

from reaas.methods import PERTURB_METHODS
from reaas.tensors import to_proto
from reaas.v1 import perturb_pb2, perturb_pb2_grpc
from services.perturb.engine import BoundEngine
from services.perturb.server import create_server


@pytest.fixture(scope="module")
def two_conv_onnx(tmp_path_factory):
    """A conv-ReLU-conv-ReLU-linear encoder [B, 1, 28, 28] -> [B, 8] (feature spread about 0.06 on random
    images): the second conv's kernel, so its rounding, follows the memory format torch infers from the
    input's strides."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 7 * 7, 8),
    )
    return export_encoder(net, tmp_path_factory.mktemp("models") / "two-conv.onnx")


def _channels_last_batch(batch: int, seed: int) -> np.ndarray:
    """Images [B, 1, 28, 28] float32 in [0, 1] stored as [B, 28, 28, 1] (as image files decode): C-contiguous
    by numpy's rules, yet the size-1 channel axis has stride 1, which torch reads as channels-last."""
    x = np.random.default_rng(seed).random((batch, 28, 28, 1), dtype=np.float32).transpose(0, 3, 1, 2)
    assert x.flags["C_CONTIGUOUS"] and x.strides[1] == x.itemsize
    return x


@pytest.mark.parametrize("method", ["crown_ibp", "ibp"])
def test_served_radius_equals_in_process_engine(start_server, perturb_config, two_conv_onnx, method):
    _, channel = start_server(
        create_server, replace(perturb_config, model_path=two_conv_onnx, cache_entries=0)
    )
    engine = BoundEngine.from_onnx(two_conv_onnx)
    stub = perturb_pb2_grpc.PerturbStub(channel)
    x = _channels_last_batch(3, seed=7)
    rf = np.array([0.01, 0.03, 0.06])
    for i in range(len(x)):
        # the engine with its defaults, as a library user calls it, on a view of the caller's array
        local = engine.image_radius(x[i : i + 1], rf[i : i + 1], method=method).image_radius
        request = perturb_pb2.F2IPerturbRequest(
            images=to_proto(x[i : i + 1]),
            feature_radius=rf[i : i + 1].tolist(),
            method=PERTURB_METHODS[method],
        )
        served = stub.F2IPerturb(request, metadata=auth(), timeout=60).image_radius
        assert local[0] > 0, "a zero radius would compare nothing"
        assert list(served) == local.tolist(), (i, served[0], local[0])


def test_engine_bounds_do_not_depend_on_array_layout(two_conv_onnx):
    engine = BoundEngine.from_onnx(two_conv_onnx)
    x = _channels_last_batch(3, seed=7)
    standard = np.array(x, order="C")  # the same pixels with conventional strides
    assert standard.strides[1] != x.strides[1]
    ladder = np.array([0.01, 0.1])
    for method in ("ibp", "crown_ibp"):
        bounds = engine.curve(x, ladder, method=method).bounds
        assert bounds.tolist() == engine.curve(standard, ladder, method=method).bounds.tolist(), method
