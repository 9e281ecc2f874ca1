"""Soundness probes: certified bounds / float margins that the served model (ONNX Runtime, float32) beats.

Each test failed on the code it was written against (before the fixes in float_error.py and the loader's
BatchNormalization), because of the bug its docstring describes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from onnx_helpers import f32, hand_model, ort_features

from services.perturb.engine import BoundEngine


def _model(nodes, inits, in_shape, out_dim) -> onnx.ModelProto:
    return hand_model(nodes, inits, in_shape, out_dim, input_name="x", output_name="y")


_MEAN, _VAR, _EPS = 1e4, 0.5, 1e-5


def _bn_model(bias: float, relu: bool, c: int = 1, side: int = 1, conv: bool = False) -> onnx.ModelProto:
    """[conv 1x1 identity ->] BatchNormalization(scale 1, mean 1e4, var 0.5) [-> Relu] -> Flatten."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])] if conv else []
    nodes.append(helper.make_node("BatchNormalization", ["c" if conv else "x", "sc", "b", "m", "v"], ["bn"],
                                  epsilon=_EPS))
    last = "bn"
    if relu:
        nodes.append(helper.make_node("Relu", ["bn"], ["r"]))
        last = "r"
    nodes.append(helper.make_node("Flatten", [last], ["y"]))
    inits = [f32("sc", np.ones(c)), f32("b", np.full(c, bias)), f32("m", np.full(c, _MEAN)),
             f32("v", np.full(c, _VAR))]
    if conv:
        inits.append(f32("w", np.eye(c).reshape(c, c, 1, 1)))
    return _model(nodes, inits, (c, side, side), c * side * side)


def test_batchnorm_folded_bias_rounding_beats_a_certified_radius():
    """float_error.py (FloatErrorModel: the per-node rounding model) under-charges BatchNormalization.

    ONNX Runtime serves BN y = scale·(x − mean)/√(var + ε) + B as y = s′·x + b′ with s′, b′ precomputed
    in float32 (and folds BN into a preceding Conv the same way). b′ = B − mean·s′ carries a rounding
    error of about u·(|B| + |mean·s′|), but the error model charges the BN node only
    γ₁₀·(|s|·|x| + |B − s·mean|) (the FUSION_SLACK argument covers the weights' perturbation, not the
    bias's cancellation). With |mean·s| ≫ |x| the served pre-activation is shifted by ~u·|mean·s|
    (here ~5e-4) while the proven margin is ~1e-6. A shift that moves the ReLU kink is not cancelled in
    f̂(x′) − f̂(x): on a ball where the exact ReLU input stays ≤ 0 (U = 0) the served ReLU is live, so
    the engine certifies a radius r for R_F = 1e-5 and the served feature moves by ~s·r ≈ 8e-4.
    Model: x [1, 1, 1] -> BatchNormalization(mean 1e4, var 0.5, scale 1, B ≈ s·(1e4 − 0.5)) -> Relu.
    """
    s = 1.0 / np.sqrt(np.float64(np.float32(_VAR)) + _EPS)  # the engine's exact BN scale
    xs = np.linspace(0.0, 1.0, 201, dtype=np.float32).reshape(-1, 1, 1, 1)
    best = None
    for k in range(-20, 21):  # biases near s·(1e4 − 0.5): pick the one whose served kink moved most
        bias = float(np.float32(s * (_MEAN - 0.5)) + np.float32(k * 2.0**-10))
        exact_kink = _MEAN - (bias - 0.0) / s  # s·(x − mean) + B = 0, mean and B exact in float64
        served = ort_features(_bn_model(bias, relu=False))(xs)[:, 0].astype(np.float64)
        slope, icpt = np.polyfit(xs.reshape(-1).astype(np.float64), served, 1)
        gap = exact_kink - (-icpt / slope)  # > 0: the served ReLU switches on before the exact one
        if 0.05 < exact_kink < 0.95 and (best is None or gap > best[0]):
            best = (gap, bias, exact_kink)
    gap, bias, kink = best
    assert gap > 2e-4  # the served kink sits ~gap below the exact one (rounding of b′ in float32)
    model = _bn_model(bias, relu=True)
    engine, served = BoundEngine(model), ort_features(model)
    x0 = np.float32(kink - 0.8 * gap)  # exact ReLU input < 0 here, served one > 0
    image = np.full((1, 1, 1, 1), x0, dtype=np.float64)
    rf = 1e-5
    r = float(engine.image_radius(image, np.array([rf]), method="ibp").image_radius[0])
    x_adv = np.full((1, 1, 1, 1), np.float32(x0 + 0.999 * r), dtype=np.float32)  # inside the ball
    shift = float(np.abs(served(x_adv) - served(image.astype(np.float32))).max())
    assert shift < rf, f"certified radius {r:.3g} for R_F = {rf}, but the served feature moves by {shift:.3g}"


@pytest.mark.parametrize("conv", [False, True], ids=["bn", "conv+bn"])
def test_batchnorm_point_error_bound_holds(conv):
    """float_error.py: ``served_point_error`` (a "proven bound of ‖f̂(x) − f(x)‖₂") is exceeded ~10³-fold on
    a BatchNormalization with a large running mean, alone or after a Conv (ONNX Runtime's Conv+BN fusion):
    the float32 precomputation of the folded bias b′ = (b − mean)·s′ + B rounds at the scale |mean·s′|,
    which the model never charges (see the test above). Model: 4 channels, mean 1e4, B = s·mean."""
    c = 4
    s = 1.0 / np.sqrt(np.float64(np.float32(_VAR)) + _EPS)
    model = _bn_model(float(np.float32(s * _MEAN)), relu=False, c=c, side=2, conv=conv)
    engine = BoundEngine(model)
    x = np.random.default_rng(0).uniform(0, 1, (3, c, 2, 2)).astype(np.float32).astype(np.float64)
    actual = np.linalg.norm(ort_features(model)(x).astype(np.float64)
                            - engine.graph.forward(torch.as_tensor(x)).numpy(), axis=1)
    bound = engine.served_point_error(x)
    assert np.all(actual <= bound), f"served error {actual} exceeds the proven bound {bound}"


def test_input_rounding_to_a_float32_subnormal_is_charged():
    """float_error.py, FloatErrorModel.from_intervals, "input" branch: the served input's rounding is
    charged as u·|x| only. A pixel in float32's subnormal range rounds with an absolute error up to
    2⁻¹⁵⁰ (and to 0 under flush-to-zero), far above u·|x|; every other node adds ``terms · tiny`` for
    underflow, the input adds nothing. Flatten-only encoder, pixels 3·2⁻¹⁵⁰: served 4·2⁻¹⁵⁰, so
    ‖f̂(x) − f(x)‖₂ = 2⁻¹⁵⁰·2 while the "proven" bound is ~2.5e-52; the certificate for R_F = 1e-45
    (radius ~1e-45) is beaten by lowering one pixel by 2⁻¹⁵¹ (served shift 2⁻¹⁴⁹ ≈ 1.4e-45).
    Negligible in magnitude, but a violation of the stated proof."""
    model = _model([helper.make_node("Flatten", ["x"], ["y"])], [], (1, 2, 2), 4)
    engine, served = BoundEngine(model), ort_features(model)
    x = np.full((1, 1, 2, 2), 3 * 2.0**-150)
    actual = float(np.linalg.norm(served(x).astype(np.float64) - x.reshape(1, -1)))
    assert actual <= engine.served_point_error(x)[0]
    rf = 1e-45
    r = float(engine.image_radius(x, np.array([rf]), method="lipschitz").image_radius[0])
    x_adv = x.copy()
    x_adv[0, 0, 0, 0] -= 2.0**-151
    shift = float(np.linalg.norm(served(x_adv).astype(np.float64) - served(x).astype(np.float64)))
    assert shift >= rf  # the attack moves the served feature by more than R_F ...
    assert r < 2.0**-151  # ... so the certificate must not reach it (the old margin certified ~1e-45)
