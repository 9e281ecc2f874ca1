"""Certified operator norms against exact SVDs of explicit matrices; power iteration stays below."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reaas.onnx_export import torch_to_onnx
from services.perturb.engine import BoundEngine
from services.perturb.engine.linear_maps import Conv2dMap, DenseMap
from services.perturb.engine.operator_norms import (
    certified_norm,
    conv_circular_norm,
    explicit_matrix,
    polyphase_kernel,
    power_iteration_norm,
)


def _exact(lmap) -> float:
    return float(torch.linalg.matrix_norm(explicit_matrix(lmap), ord=2))


@pytest.mark.parametrize(
    "k,stride,pad,side,cin,cout",
    [
        (3, 1, 1, 5, 2, 3),
        (3, 2, 1, 6, 2, 4),
        (4, 2, 1, 6, 3, 2),
        (4, 1, 1, 5, 1, 3),
        (3, 1, 0, 4, 2, 2),
        (2, 2, 0, 4, 3, 3),
        (3, 2, 1, 7, 1, 1),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_certified_norm_never_below_exact(k, stride, pad, side, cin, cout, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64)
    lmap = Conv2dMap(w, (stride, stride), (pad, pad, pad, pad), (cin, side, side))
    exact = _exact(lmap)
    cert = certified_norm(lmap)
    assert cert >= exact
    assert cert <= 1.6 * exact  # zero padding only shrinks the circular norm (little, past tiny sizes)
    assert power_iteration_norm(lmap, iterations=200) <= exact * (1 + 1e-9)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("stride,n,k", [(1, 5, 3), (2, 6, 3), (2, 6, 4), (3, 6, 2)])
def test_strided_circular_conv_norm_equals_explicit_matrix(seed, stride, n, k):
    gen = torch.Generator().manual_seed(seed)
    cin, cout = 2, 3
    w = torch.randn(cout, cin, k, k, generator=gen, dtype=torch.float64)
    m = n // stride
    mat = torch.zeros(cout * m * m, cin * n * n, dtype=torch.float64)
    for o in range(cout):
        for i in range(m):
            for j in range(m):
                for c in range(cin):
                    for a in range(k):
                        for b in range(k):
                            col = c * n * n + ((i * stride + a) % n) * n + (j * stride + b) % n
                            mat[o * m * m + i * m + j, col] += w[o, c, a, b]
    exact = float(torch.linalg.matrix_norm(mat, ord=2))
    value = conv_circular_norm(polyphase_kernel(w, (stride, stride)), (m, m))
    assert value == pytest.approx(exact, rel=1e-10)


def test_conv_matches_torch_and_transpose_is_adjoint():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, 4, 4, generator=gen, dtype=torch.float64)
    lmap = Conv2dMap(w, (2, 2), (1, 1, 1, 1), (3, 7, 7))
    x = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    ref = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
    assert torch.allclose(lmap.apply(x), ref)
    y = torch.randn(2, *lmap.out_shape, generator=gen, dtype=torch.float64)
    assert torch.allclose((lmap.apply(x) * y).sum(), (x * lmap.apply_t(y)).sum())
    m = explicit_matrix(lmap)
    assert torch.allclose(
        torch.sqrt(lmap.apply_sq(torch.ones(1, 3, 7, 7, dtype=torch.float64))).flatten(), m.norm(dim=1)
    )


def test_dense_norm_is_exact_svd_with_margin():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(7, 11, generator=gen, dtype=torch.float64)
    exact = float(torch.linalg.matrix_norm(w, ord=2))
    cert = certified_norm(DenseMap(w, (11,), (7,)))
    assert exact <= cert <= exact * (1 + 1e-4)


_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [_ROOT / "models" / "fmnist-robust.onnx", _ROOT / "models" / "fmnist-standard.onnx"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_certified_layer_norms_on_shipped_encoders(path):
    if not path.exists():
        pytest.skip(f"{path.name} not trained yet")
    eng = BoundEngine.from_onnx(path)
    for node in eng.graph.nodes:
        if node.kind != "affine":
            continue
        cert = certified_norm(node.lmap)
        low = power_iteration_norm(node.lmap, iterations=60)
        assert low <= cert <= 2.0 * low + 1e-9, node.name


def test_certified_layer_norms_on_planned_encoder_shape():
    from services.trainer.encoders import EncoderConfig, build_encoder

    torch.manual_seed(0)
    eng = BoundEngine.from_onnx(torch_to_onnx(
        build_encoder(EncoderConfig(channels=(4, 8), strides=(1, 2), hidden_dim=16, feature_dim=8)),
        (1, 28, 28),
    ))
    for node in eng.graph.nodes:
        if node.kind == "affine":
            low = power_iteration_norm(node.lmap, iterations=60)
            assert low <= certified_norm(node.lmap) <= 2.0 * low + 1e-9, node.name
    assert eng.lipschitz_bound_l2 >= 1e-6
