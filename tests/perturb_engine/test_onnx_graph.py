"""ONNX loading: the bound graph computes the same function as onnxruntime; unsupported ops fail loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_nets import Normalize, engine_for, export, images, onnx_path
from onnx_helpers import ort_features
from torch import nn

from services.perturb.engine import BoundEngine, UnsupportedModelError


@pytest.mark.parametrize("kind", ["plain", "bn", "residual", "pool", "linear"])
def test_graph_matches_onnxruntime(kind, tmp_path):
    eng, net = engine_for(kind, 0, tmp_path)
    x = images(5, 1)
    ort_out = ort_features(onnx_path(kind, 0, tmp_path))(x)
    graph_out = eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()
    with torch.no_grad():
        torch_out = net(torch.as_tensor(x)).numpy()
    assert ort_out.shape == (5, 6) and ort_out.dtype == np.float32
    np.testing.assert_allclose(graph_out, torch_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(graph_out, ort_out, rtol=1e-4, atol=1e-5)
    assert eng.input_shape == (1, 8, 8) and eng.feature_dim == 6
    assert all(n.kind != "affine" or n.lmap is not None for n in eng.graph.nodes)


def test_batchnorm_is_folded_into_conv(tmp_path):
    eng, _ = engine_for("bn", 0, tmp_path)
    kinds = [type(n.lmap).__name__ for n in eng.graph.nodes if n.kind == "affine"]
    assert "ScaleMap" not in kinds  # normalization and BN both folded into convs

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(self.norm(x))))
        g = torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return (
            torch.cat([self.fc(g), h.reshape(h.shape[0], -1) @ self.w], dim=1)[:, :4]
            + h.view(h.shape[0], -1)[:, :4] * 0
        )


@pytest.mark.parametrize("include_pad", [True, False])
def test_pooling_and_matmul_variants(include_pad, tmp_path):
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Normalize()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=include_pad)
            self.w = nn.Parameter(torch.randn(3 * 4 * 4, 5))
            self.b = nn.Parameter(torch.randn(5))
            self.fc = nn.Linear(3, 5)

        def forward(self, x):
            h = self.pool(torch.relu(self.conv(self.norm(x))))
            gap = torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
            h = h * 0.5
            return torch.relu(h.view(h.shape[0], -1) @ self.w + self.b) + self.fc(gap)

    net = Net().eval()
    eng = BoundEngine.from_onnx(export(net, tmp_path / "pool.onnx"))
    x = images(3, 2)
    with torch.no_grad():
        ref = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(
        eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy(), ref, rtol=1e-4, atol=1e-5
    )


def test_unsupported_op_names_op_and_node(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(128, 3))
    path = export(net, tmp_path / "sig.onnx")
    with pytest.raises(UnsupportedModelError, match="Sigmoid.*node"):
        BoundEngine.from_onnx(path)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3))
    with pytest.raises(UnsupportedModelError, match="MaxPool"):
        BoundEngine.from_onnx(export(net, tmp_path / "max.onnx"))


def test_bad_inputs_raise_value_error(tmp_path):
    eng, _ = engine_for("plain", 0, tmp_path)
    x = images(2, 0)
    with pytest.raises(ValueError):
        eng.image_radius(x, np.array([1.0, np.nan]))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError):
        eng.image_radius(bad, np.array([1.0, 1.0]))
    with pytest.raises(ValueError):
        eng.image_radius(x[:, :, :4], np.array([1.0, 1.0]))
    r = eng.image_radius(x, np.array([0.0, -1.0]), method="auto")
    assert np.all(r.image_radius == 0.0)
