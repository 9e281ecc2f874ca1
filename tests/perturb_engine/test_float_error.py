"""The proven float32 margin: the served model's rounding never breaks a certificate.

Oracles: a model whose exact and float32 values differ wildly (relu(x + 1e6) − 1e6), a dot product
whose sequential float32 sum reaches the worst case, and ONNX Runtime's float32 outputs against the
float64 graph on random conv nets (the bound must dominate every observed error).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from engine_nets import engine_for, images, onnx_path
from onnx import helper
from onnx_helpers import f32, hand_model, ort_features

from services.perturb.engine import BoundEngine
from services.perturb.engine.float_error import FLOAT32, REDUCED, gamma


def _gemm_model(weights: list[np.ndarray], biases: list[np.ndarray], in_shape=(1, 1, 2)) -> onnx.ModelProto:
    """Flatten → (Gemm → Relu)* → Gemm, float32 weights (the served model)."""
    nodes = [helper.make_node("Flatten", ["images"], ["h0"], name="flatten")]
    inits = []
    prev = "h0"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        inits += [f32(f"W{i}", w), f32(f"b{i}", b)]
        out = "features" if i == len(weights) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [out], name=f"gemm{i}", transB=1))
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    return hand_model(nodes, inits, in_shape, weights[-1].shape[0])


def _pathological() -> onnx.ModelProto:
    """f(x) = relu(x + 1e6) − 1e6 = x exactly; float32 rounds x + 1e6 to a multiple of 1/16."""
    eye = np.eye(2)
    return _gemm_model([eye, eye], [np.full(2, 1e6), np.full(2, -1e6)])


@pytest.mark.parametrize("method", ["lipschitz", "auto", "ibp", "crown_ibp", "local_lipschitz"])
def test_pathological_model_gets_no_radius_an_attack_beats(method):
    eng, features = BoundEngine(_pathological()), ort_features(_pathological())
    x = np.array([[[[0.03, 0.5]]]], dtype=np.float32)
    rf = np.array([0.05])
    r = float(eng.image_radius(x, rf, method=method).image_radius[0])
    # the attack: moving pixel 0 from 0.03 to 0.032 (distance 0.002) moves the served output by 1/16
    moved = x.copy()
    moved[0, 0, 0, 0] = 0.032
    shift = np.linalg.norm(features(moved) - features(x))
    assert shift > rf[0]  # the reproducer still bites the served model
    assert r < 0.002
    # and no point of a dense segment inside the certified ball beats it
    for t in np.linspace(-r, r, 201):
        xp = x.copy()
        xp[0, 0, 0, 0] += t
        assert np.linalg.norm(features(xp) - features(x)) < rf[0]


def test_gamma_closed_form():
    assert gamma(1, FLOAT32.unit_roundoff) == pytest.approx(2**-24 / (1 - 2**-24))
    assert gamma(3000, 2**-24) == pytest.approx(3000 * 2**-24, rel=1e-3)
    assert gamma(2**11, REDUCED.unit_roundoff) == float("inf")


def test_worst_case_sequential_sum_is_covered():
    """Σ x_i with x = (1, u, …, u): a sequential float32 sum loses every u, error (k − 1)·u."""
    k = 4097
    u = 2.0**-24
    x = np.full(k, u)
    x[0] = 1.0
    acc = np.float32(0.0)
    for v in x.astype(np.float32):
        acc = np.float32(acc + v)
    observed = abs(float(acc) - float(x.sum()))
    assert observed > 0.9 * (k - 1) * u  # the worst case is real
    eng = BoundEngine(_gemm_model([np.ones((1, k))], [np.zeros(1)], in_shape=(1, 1, k)))
    margin = eng.served_error(x.reshape(1, 1, 1, k), np.zeros(1))[0]
    assert margin / 2 >= observed  # E(x) alone covers the worst ordering


@pytest.mark.parametrize("kind", ["plain", "bn", "residual", "pool"])
def test_bound_dominates_onnxruntime_float32_error(kind, tmp_path):
    """Random conv nets, random points in the ball: ‖f̂ − f‖ observed ≤ E(ball)."""
    eng, _ = engine_for(kind, 3, tmp_path)
    features = ort_features(onnx_path(kind, 3, tmp_path))
    x = images(4, 11)
    r = 0.5
    margin = eng.served_error(x, np.full(len(x), r))
    gen = np.random.default_rng(0)
    for i in range(len(x)):
        d = gen.normal(size=(64, *x.shape[1:]))
        norms = np.linalg.norm(d.reshape(64, -1), axis=1)[:, None, None, None]
        d *= r * gen.uniform(size=(64, 1, 1, 1)) / norms
        xp = (x[i] + d).astype(np.float32)
        served = features(xp).astype(np.float64)
        exact = eng.graph.forward(torch.as_tensor(xp, dtype=torch.float64)).numpy()
        err = np.linalg.norm(served - exact, axis=1).max()
        served0 = features(x[i : i + 1]).astype(np.float64)
        exact0 = eng.graph.forward(torch.as_tensor(x[i : i + 1], dtype=torch.float64)).numpy()
        err0 = np.linalg.norm(served0 - exact0)
        assert err + err0 <= margin[i]


def test_reduced_precision_widens_the_margin(tmp_path):
    eng, _ = engine_for("plain", 3, tmp_path)
    path = tmp_path / "plain-3.onnx"
    reduced = BoundEngine.from_onnx(path, eng.config.__class__(served_format="reduced"))
    x = images(2, 3)
    assert np.all(reduced.served_error(x, np.full(2, 0.1)) > 100 * eng.served_error(x, np.full(2, 0.1)))
    with pytest.raises(ValueError, match="served_format"):
        BoundEngine.from_onnx(path, eng.config.__class__(served_format="bfloat3"))


@pytest.mark.parametrize("kind", ["plain", "bn", "residual", "pool"])
@pytest.mark.parametrize("clip", [True, False])
def test_margin_never_shrinks_as_the_ball_grows(kind, clip, tmp_path):
    """LIPSCHITZ's closed form takes the margin at the largest radius it could certify and reuses it."""
    eng, _ = engine_for(kind, 5, tmp_path)
    x = images(3, 7)
    radii = np.array([0.0, 1e-3, 0.01, 0.1, 0.5, 1.0, 4.0])
    margins = np.stack([eng.served_error(x, np.full(len(x), r), clip=clip) for r in radii], axis=1)
    assert np.all(np.diff(margins, axis=1) >= 0)
