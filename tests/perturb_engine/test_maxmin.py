"""MaxMin (GroupSort-2) activations: recognized as a whole, lowered exactly, bounded soundly and tightly.

Oracles: ONNX Runtime and the torch module in float64 (forward), sampled Jacobian spectral / row norms
(Lipschitz), the product of the layer norms and the same net with ReLU (no factor 3 per MaxMin), PGD
and dense sampling in the ball (every method's feature-shift bounds and certified radii), ONNX
Runtime's observed float32 error (the floating-point margin), the exact bound of a linear map
(stable pairs), and hand-built malformed patterns (refusals naming the node).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from engine_nets import assert_bounds_hold, assert_semantic_bounds_hold
from onnx import helper
from onnx_helpers import f32, hand_model, i64, ort_features

from reaas.onnx_export import torch_to_onnx
from services.perturb.engine import BoundEngine, UnsupportedModelError
from services.perturb.engine.ball import InputBall
from services.perturb.engine.crown import crown_intermediate_bounds, output_shift_bounds
from services.perturb.engine.float_error import FloatErrorModel
from services.perturb.engine.ibp import interval_bounds
from services.perturb.engine.linear_maps import Conv2dMap, DenseMap, PairMap, compose
from services.perturb.engine.onnx_graph import SUPPORTED_OPS, build_bound_graph
from services.perturb.engine.operator_norms import certified_norm, explicit_matrix
from services.perturb.semantic.composed import ComposedBounds
from services.perturb.semantic.sp_layer import basis, perturb
from services.trainer.encoders import EncoderConfig, build_encoder
from services.trainer.export import strip_parametrizations
from services.trainer.pgd import AttackConfig, pgd_feature_shift

SIDE = 8
METHODS = ["lipschitz", "local_lipschitz", "ibp", "crown_ibp", "crown", "auto"]


# ---- nets ----------------------------------------------------------------------------------------------


def _config(layers: str = "plain", activation: str = "maxmin", side: int = SIDE, **kw) -> EncoderConfig:
    base = dict(channels=(4, 6), strides=(1, 2), hidden_dim=8, feature_dim=6, image_size=side)
    base.update(kw)
    return EncoderConfig(layers=layers, activation=activation, **base)


def _encoder(cfg: EncoderConfig, seed: int, perturb_aol: bool = True) -> torch.nn.Module:
    """A stripped (plain-weight) encoder; random biases (plain) or randomly moved raw AOL weights."""
    torch.manual_seed(seed)
    net = build_encoder(cfg)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "parametrizations") and perturb_aol:
                w = m.parametrizations.weight.original
                w.add_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * w.std())
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.6 - 0.3)
    return strip_parametrizations(net.eval())


def _export(net: torch.nn.Module, side: int = SIDE) -> bytes:
    return torch_to_onnx(net, (1, side, side))


def _images(n: int, seed: int, side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, side, side)).astype(np.float32)


@pytest.fixture(scope="module")
def plain_net():
    net = _encoder(_config(), seed=3)
    model = _export(net)
    return net, model, BoundEngine(onnx.load_from_string(model))


def _f64(net: torch.nn.Module):
    """The torch module in float64: the independent reference of the exact function."""
    ref = _clone_double(net)

    def f(x: torch.Tensor) -> torch.Tensor:
        return ref(x)

    return f


def _clone_double(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).double().eval()


# ---- hand-built ONNX -----------------------------------------------------------------------------------




def _slice(name: str, x: str, start, end, axis=1, step=1, out: str | None = None):
    """A Slice node with its constant inputs (as initializers)."""
    inits = [
        i64(f"{name}_st", [start]),
        i64(f"{name}_en", [end]),
        i64(f"{name}_ax", [axis]),
        i64(f"{name}_sp", [step]),
    ]
    node = helper.make_node(
        "Slice", [x, f"{name}_st", f"{name}_en", f"{name}_ax", f"{name}_sp"], [out or name], name=name
    )
    return node, inits


def _conv_maxmin_model(variant: str = "ok", channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """images [B, 1, 4, 4] -> Conv (channels) -> MaxMin (or a malformed variant) -> Flatten -> Gemm [B, 3]."""
    rng = np.random.default_rng(seed)
    c, side = channels, 4
    h = c // 2
    inits = [f32("cw", rng.normal(size=(c, 1, 3, 3))), f32("cb", rng.normal(size=c) * 0.3)]
    inits += [f32("cw2", rng.normal(size=(c, 1, 3, 3)))]
    nodes = [helper.make_node("Conv", ["images", "cw", "cb"], ["x"], name="conv", pads=[1, 1, 1, 1])]
    s0_range, s1_range, axis = (0, h), (h, 2 * h), 1
    if variant == "not_halves":
        s0_range, s1_range = (0, 1), (1, 2)
    if variant == "overlap":
        s1_range = (1, 1 + h)
    if variant == "axis":
        axis, s0_range, s1_range = 2, (0, side // 2), (side // 2, side)
    if variant != "unrelated":
        n, i = _slice("s0", "x", *s0_range, axis=axis, step=2 if variant == "step" else 1)
        nodes.append(n)
        inits += i
        second_src = "x"
        if variant == "different_tensors":
            nodes.append(helper.make_node("Conv", ["images", "cw2"], ["x2"], name="conv2", pads=[1, 1, 1, 1]))
            second_src = "x2"
        n, i = _slice("s1", second_src, *s1_range, axis=axis)
        nodes.append(n)
        inits += i
    max_in = ["s0", "s1"]
    if variant == "max_const":
        inits.append(f32("k", np.zeros((1, h, side, side))))
        max_in = ["s0", "k"]
    if variant == "unrelated":
        nodes.append(helper.make_node("Conv", ["images", "cw2"], ["x2"], name="conv2", pads=[1, 1, 1, 1]))
        max_in = ["x", "x2"]
    min_op = "Max" if variant == "max_without_min" else "Min"
    nodes.append(helper.make_node("Max", max_in, ["mx"], name="the_max"))
    min_in = ["x", "x2"] if variant == "unrelated" else ["s0", "s1"]
    nodes.append(helper.make_node(min_op, min_in, ["mn"], name="the_min"))
    cat_in = ["mn", "mx"] if variant == "min_first" else ["mx", "mn"]
    cat_axis = 2 if variant == "concat_axis" else 1
    nodes.append(helper.make_node("Concat", cat_in, ["y"], name="the_concat", axis=cat_axis))
    if variant == "slice_reused":
        nodes.append(helper.make_node("Relu", ["s0"], ["r0"], name="relu_of_slice"))
        nodes.append(helper.make_node("Add", ["y", "r0"], ["y2"], name="add"))  # shapes differ: never run
    if variant == "maxmin_reused":
        nodes.append(helper.make_node("Relu", ["mx"], ["r0"], name="relu_of_max"))
    width = c * side * side if variant not in ("unrelated",) else 2 * c * side * side
    nodes.append(helper.make_node("Flatten", ["y"], ["flat"], name="flatten"))
    inits += [f32("gw", rng.normal(size=(3, width)) * 0.2), f32("gb", rng.normal(size=3) * 0.1)]
    nodes.append(helper.make_node("Gemm", ["flat", "gw", "gb"], ["features"], name="gemm", transB=1))
    return hand_model(nodes, inits, (1, side, side), 3)


def _dense_maxmin_model(w: np.ndarray, c: np.ndarray, spelling: str = "torch", opset: int = 17):
    """x [B, 1, 4, 4] -> MaxMin(W flatten(x) + c) [B, 2m], the halves spelled as ``spelling``."""
    m2 = w.shape[0]
    h = m2 // 2
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w", "c"], ["z"], name="gemm", transB=1),
    ]
    inits = [f32("w", w), f32("c", c)]
    if opset < 10:  # Slice-1: attributes
        nodes += [
            helper.make_node("Slice", ["z"], ["s0"], name="s0", starts=[0], ends=[h], axes=[1]),
            helper.make_node("Slice", ["z"], ["s1"], name="s1", starts=[h], ends=[2 * h], axes=[1]),
        ]
    else:
        first = (0, h, 1) if spelling == "torch" else (-2 * h, -h, -1)  # negative indices, negative axis
        second = (h, 2 * h, 1) if spelling == "torch" else (h, 2**62, -1)  # "to the end"
        for name, (s, e, ax) in (("s0", first), ("s1", second)):
            n, i = _slice(name, "z", s, e, axis=ax)
            nodes.append(n)
            inits += i
    order = ["s0", "s1"] if spelling == "torch" else ["s1", "s0"]
    nodes += [
        helper.make_node("Max", order, ["mx"], name="mx"),
        helper.make_node("Min", order[::-1], ["mn"], name="mn"),
        helper.make_node(
            "Concat", ["mx", "mn"], ["features"], name="cat", axis=1 if spelling == "torch" else -1
        ),
    ]
    return hand_model(nodes, inits, (1, 4, 4), m2, opset)


# ---- 0. the pairing maps -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 3, 2), (8,)])
def test_pair_maps_are_exact_and_normed(shape):
    gen = torch.Generator().manual_seed(0)
    for mode in ("diff", "swap", "split"):
        pm = PairMap(mode, shape)
        m = explicit_matrix(pm)
        x = torch.randn(3, *pm.in_shape, generator=gen, dtype=torch.float64)
        y = torch.randn(3, *pm.out_shape, generator=gen, dtype=torch.float64)
        flat = x.reshape(3, -1)
        assert torch.allclose(pm.apply(x).reshape(3, -1), flat @ m.T)
        assert torch.allclose(pm.apply_t(y).reshape(3, -1), y.reshape(3, -1) @ m)
        assert torch.allclose(pm.apply_abs(x).reshape(3, -1), flat @ m.abs().T)
        assert torch.allclose(pm.apply_sq(x).reshape(3, -1), flat @ (m * m).T)
        assert torch.allclose(pm.apply_abs_t(y).reshape(3, -1), y.reshape(3, -1) @ m.abs())
        exact = float(torch.linalg.matrix_norm(m, ord=2))
        assert exact <= certified_norm(pm) <= exact * (1 + 1e-4) + 1e-8
        assert certified_norm(pm) == pytest.approx(1.0 if mode == "swap" else 2**0.5, rel=1e-4)
    # a MaxMin is swap + split ∘ relu ∘ diff
    x = torch.randn(5, *shape, generator=gen, dtype=torch.float64)
    mm = PairMap("swap", shape).apply(x) + PairMap("split", shape).apply(
        torch.relu(PairMap("diff", shape).apply(x))
    )
    a, b = x.chunk(2, dim=1)
    assert torch.allclose(mm, torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1))


def test_compose_folds_only_the_difference():
    gen = torch.Generator().manual_seed(1)
    conv = Conv2dMap(
        torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64), (2, 2), (1, 1, 1, 1), (2, 7, 7)
    )
    dense = DenseMap(torch.randn(8, 5, generator=gen, dtype=torch.float64), (5,), (8,))
    for first in (conv, dense):
        diff = PairMap("diff", first.out_shape)
        folded = compose(first, diff)
        assert folded is not None and not isinstance(folded, PairMap)
        assert torch.allclose(explicit_matrix(folded), explicit_matrix(diff) @ explicit_matrix(first))
        for mode in ("swap", "split"):
            pm = PairMap(mode, first.out_shape)
            if pm.in_shape == first.out_shape:
                assert compose(first, pm) is None
        assert compose(diff, PairMap("split", first.out_shape)) is None


# ---- 1. forward ----------------------------------------------------------------------------------------


def test_forward_matches_onnxruntime_and_torch(plain_net):
    net, model, eng = plain_net
    sources = [n for n in eng.graph.nodes if n.lipschitz_source is not None]
    assert len(sources) == 3  # after conv 1, conv 2 and the hidden dense layer
    assert {n.kind for n in eng.graph.nodes} <= {"input", "affine", "relu", "add"}
    x = _images(16, 1)
    ort = ort_features(model)(x)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    out = eng.graph.forward(x64).numpy()
    with torch.no_grad():
        ref = _f64(net)(x64).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, ort, rtol=1e-4, atol=1e-5)
    # the unfolded (served) graph computes the same function
    unfolded = build_bound_graph(onnx.load_from_string(model), fold=False)
    np.testing.assert_allclose(unfolded.forward(x64).numpy(), ref, rtol=1e-10, atol=1e-12)
    # every pair is exercised: some channel pairs are ordered each way on these images
    vals = eng.graph.forward_all(x64)
    for n in sources:
        a, b = vals[n.lipschitz_source].chunk(2, dim=1)
        assert bool((a > b).any()) and bool((a < b).any())


def test_batchnorm_before_maxmin_folds_and_matches_onnxruntime():
    net = _encoder(_config(batch_norm=True), seed=5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    model = _export(net)
    eng = BoundEngine(onnx.load_from_string(model))
    assert not any(type(n.lmap).__name__ == "ScaleMap" for n in eng.graph.nodes)  # BN folded into convs
    x = _images(8, 2)
    out = eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(out, ort_features(model)(x), rtol=1e-4, atol=1e-5)
    assert np.all(eng.served_point_error(x) >= np.linalg.norm(out - ort_features(model)(x), axis=1))


def _assert_matches_onnxruntime(eng: BoundEngine, model, x: np.ndarray, atol: float) -> None:
    """The bound graph's float64 forward pass agrees with ONNX Runtime's float32 one on images x."""
    np.testing.assert_allclose(eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy(),
                               ort_features(model)(x), rtol=1e-5, atol=atol)

@pytest.mark.parametrize("spelling,opset", [("torch", 17), ("other", 13), ("torch", 9)])
def test_other_spellings_of_the_halves_match_onnxruntime(spelling, opset):
    rng = np.random.default_rng(2)
    model = _dense_maxmin_model(rng.normal(size=(6, 16)), rng.normal(size=6) * 0.3, spelling, opset)
    eng = BoundEngine(model)
    x = _images(8, 3, side=4)
    _assert_matches_onnxruntime(eng, model, x, atol=1e-6)


# ---- 2. Lipschitz --------------------------------------------------------------------------------------


def _jacobian_norms(net: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """max over the points of ‖J‖₂, and max over the points of each output row's ‖∇f_i‖₂."""
    f = _f64(net)
    spec, rows = 0.0, None
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], x[i]).reshape(-1, x[i].numel())
        spec = max(spec, float(torch.linalg.matrix_norm(jac, ord=2)))
        r = jac.norm(dim=1)
        rows = r if rows is None else torch.maximum(rows, r)
    return spec, rows


def test_aol_maxmin_lipschitz_bound_is_certified_and_sound():
    cfg = EncoderConfig(
        channels=(4, 8), strides=(1, 2), hidden_dim=16, feature_dim=8, layers="aol", activation="maxmin"
    )
    net = _encoder(cfg, seed=7)
    eng = BoundEngine(onnx.load_from_string(_export(net, 28)))
    bound = eng.lipschitz_bound_l2
    assert bound <= (1 / cfg.std) * (1 + 1e-4)
    x = torch.rand(12, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spec, rows = _jacobian_norms(net, x)
    assert 0 < spec <= bound
    per = eng.lipschitz.per_neuron_l2[eng.graph.output]
    assert torch.all(rows <= per * (1 + 1e-9))
    # the same weights with ReLU: the very same certified bound (MaxMin costs no factor)
    relu = _encoder(
        EncoderConfig(**{**cfg.to_dict(), "channels": (4, 8), "strides": (1, 2), "activation": "relu"}), 7
    )
    for p, q in zip(net.state_dict().values(), relu.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    eng_relu = BoundEngine(onnx.load_from_string(_export(relu, 28)))
    assert bound == pytest.approx(eng_relu.lipschitz_bound_l2, rel=1e-12)


def test_plain_maxmin_bound_is_the_product_of_layer_norms():
    cfg = _config()
    net = _encoder(cfg, seed=11)
    eng = BoundEngine(onnx.load_from_string(_export(net)))
    product, shape = 1.0 / cfg.std, (1, SIDE, SIDE)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            lm = Conv2dMap(m.weight.detach().double(), m.stride, (1, 1, 1, 1), shape)
            product *= certified_norm(lm)
            shape = lm.out_shape
        elif isinstance(m, torch.nn.Linear):
            product *= certified_norm(
                DenseMap(m.weight.detach().double(), (m.in_features,), (m.out_features,))
            )
    # margins compound per node (a few 1e-5): far from the factor 3 per MaxMin (27 here) of the sum rule
    assert eng.lipschitz_bound_l2 == pytest.approx(product, rel=2e-4)
    relu = _encoder(_config(activation="relu"), seed=11)
    eng_relu = BoundEngine(onnx.load_from_string(_export(relu)))
    assert eng.lipschitz_bound_l2 == pytest.approx(eng_relu.lipschitz_bound_l2, rel=1e-12)
    spec, rows = _jacobian_norms(net, torch.as_tensor(_images(8, 4), dtype=torch.float64))
    assert spec <= eng.lipschitz_bound_l2
    assert torch.all(rows <= eng.lipschitz.per_neuron_l2[eng.graph.output] * (1 + 1e-9))


# ---- 3. soundness --------------------------------------------------------------------------------------


def _ball_points(x: torch.Tensor, r: float, n: int, norm: str, seed: int, clip: bool) -> torch.Tensor:
    """Points on the sphere (ℓ2) / corners (ℓ∞) of the ball and scaled inside it, around x [1, ...]."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, *x.shape[1:], generator=gen, dtype=torch.float64)
    if norm == "l2":
        d = d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * r
    else:
        d = torch.sign(d) * r
    scale = torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)
    d = d * torch.where(scale < 0.5, 1.0, scale)
    pts = x + d
    return pts.clamp(0, 1) if clip else pts


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_certified_radii_survive_pgd_and_sampling(plain_net, norm):
    net, model, eng = plain_net
    x = _images(2, 5)
    f = _f64(net)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad():
        spread = float(f(torch.as_tensor(_images(32, 6), dtype=torch.float64)).std(0).norm()) + 1e-3
    rf = np.array([0.3, 1.0]) * spread
    radii = {}
    for method in METHODS:
        r = radii[method] = eng.image_radius(
            x, rf, norm=norm, method=method, clip_to_pixel_box=True
        ).image_radius
        assert np.all(r > 0) and np.all(np.isfinite(r)), method
        worst = pgd_feature_shift(f, x64, torch.as_tensor(r), norm, True, AttackConfig(steps=60, restarts=3))
        assert np.all(worst.numpy() < rf), (method, worst, rf)
        with torch.no_grad():
            for i in range(2):
                pts = _ball_points(x64[i : i + 1], float(r[i]), 3000, norm, seed=i, clip=True)
                shift = (f(pts) - f(x64[i : i + 1])).norm(dim=1)
                assert float(shift.max()) < rf[i], method
    assert np.all(radii["auto"] >= radii["lipschitz"])
    assert np.all(radii["local_lipschitz"] >= radii["lipschitz"] / (1 + 2e-3))


@pytest.mark.parametrize("method", METHODS)
def test_feature_shift_bounds_dominate_pgd_and_sampling(plain_net, method):
    net, _, eng = plain_net
    x = _images(2, 9)
    radii = np.array([0.02, 0.1, 0.4])
    curve = eng.curve(x, radii, method=method).bounds
    f = _f64(net)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    for k, r in enumerate(radii):
        worst = pgd_feature_shift(
            f, x64, torch.full((2,), r, dtype=torch.float64), "l2", False, AttackConfig(steps=40, restarts=2)
        )
        assert np.all(worst.numpy() <= curve[:, k]), (method, r)
        with torch.no_grad():
            for i in range(2):
                pts = _ball_points(x64[i : i + 1], float(r), 2000, "l2", seed=20 + i, clip=False)
                assert float((f(pts) - f(x64[i : i + 1])).norm(dim=1).max()) <= curve[i, k]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_node_intervals_contain_sampled_values(plain_net, norm):
    _, _, eng = plain_net
    x64 = torch.as_tensor(_images(1, 7), dtype=torch.float64).repeat(3, 1, 1, 1)
    radii = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)
    rr = radii if norm == "l2" else radii / SIDE
    assert_bounds_hold(eng, x64, rr, norm,
                       lambda i, r: _ball_points(x64[i : i + 1], r, 3000, norm, seed=30 + i, clip=True))


def test_float_margin_covers_onnxruntime(plain_net):
    net, model, eng = plain_net
    x = _images(32, 12)
    served = ort_features(model)(x).astype(np.float64)
    with torch.no_grad():
        exact = _f64(net)(torch.as_tensor(x, dtype=torch.float64)).numpy()
    observed = np.linalg.norm(served - exact, axis=1)
    bound = eng.served_point_error(x)
    assert np.all(observed <= bound)
    # over a ball: E(ball) + E(x) covers the served shift's rounding at sampled points
    r = np.full(4, 0.2)
    margin = eng.served_error(x[:4], r)
    for i in range(4):
        pts = _ball_points(
            torch.as_tensor(x[i : i + 1], dtype=torch.float64), 0.2, 200, "l2", seed=i, clip=False
        )
        p32 = pts.numpy().astype(np.float32)
        with torch.no_grad():
            ex = _f64(net)(torch.as_tensor(p32, dtype=torch.float64)).numpy()
        err = np.linalg.norm(ort_features(model)(p32) - ex, axis=1).max() + observed[i]
        assert err <= margin[i]


def test_float_margin_when_maxmin_is_the_output():
    """MaxMin as the served output: the runtime's error is exactly the rounding of its input carried
    through the pair sort (large offsets make it large); the margin must cover it, but no more than the
    input's own bound (MaxMin is exact in the runtime)."""
    rng = np.random.default_rng(3)
    w, c = rng.normal(size=(8, 16)), rng.normal(size=8) + 3000.0  # |z| ~ 3000: ulp 2^-12
    model = _dense_maxmin_model(w, c)
    eng = BoundEngine(model)
    x = _images(64, 4, side=4)
    served = ort_features(model)(x).astype(np.float64)
    exact = eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()
    observed = np.linalg.norm(served - exact, axis=1)
    bound = eng.served_point_error(x)
    assert observed.max() > 0 and np.all(observed <= bound)
    fe = eng.float_error
    centers = fe.centers(torch.as_tensor(x, dtype=torch.float64))
    z = [n.lipschitz_source for n in fe.graph.nodes if n.lipschitz_source is not None]
    assert len(z) == 1
    at_z = FloatErrorModel(_truncated(fe.graph, z[0]), _truncated(fe.graph, z[0])).at_points(
        centers[: z[0] + 1]
    )
    assert np.all(bound <= at_z.numpy() * (1 + 1e-12))


def _truncated(graph, k):
    """The graph up to node k, with k as its output."""
    from services.perturb.engine.onnx_graph import BoundGraph

    return BoundGraph(graph.nodes[: k + 1], k)


def test_maxmin_directly_on_the_image_and_in_the_semantic_graph():
    """MaxMin of the (2-channel) image itself: its Lipschitz source is the input node; in the semantic
    θ-graph that node is the SP layer (then pruned); bounds stay sound."""
    rng = np.random.default_rng(4)
    h = 1
    nodes = []
    inits = []
    for name, (s, e) in (("s0", (0, h)), ("s1", (h, 2 * h))):
        n, i = _slice(name, "images", s, e)
        nodes.append(n)
        inits += i
    nodes += [
        helper.make_node("Max", ["s0", "s1"], ["mx"], name="mx"),
        helper.make_node("Min", ["s0", "s1"], ["mn"], name="mn"),
        helper.make_node("Concat", ["mx", "mn"], ["y"], name="cat", axis=1),
        helper.make_node("Flatten", ["y"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w", "b"], ["features"], name="gemm", transB=1),
    ]
    w = rng.normal(size=(4, 2 * 16)).astype(np.float32)
    inits += [f32("w", w), f32("b", rng.normal(size=4) * 0.1)]
    model = hand_model(nodes, inits, (2, 4, 4), 4)
    eng = BoundEngine(model)
    add = [n for n in eng.graph.nodes if n.lipschitz_source is not None]
    assert len(add) == 1 and add[0].lipschitz_source == 0
    # MaxMin is 1-Lipschitz: L is the dense layer's norm alone
    assert eng.lipschitz_bound_l2 == pytest.approx(float(np.linalg.norm(w.astype(np.float64), 2)), rel=1e-4)
    x = np.random.default_rng(5).random((1, 2, 4, 4)).astype(np.float32)
    _assert_matches_onnxruntime(eng, model, x, atol=1e-5)
    a = basis(x[0], "brightness_contrast")
    for method in ("ibp", "crown_ibp", "crown"):
        cb = ComposedBounds(eng.graph, x[0], a)
        t = np.array([0.05, 0.3])
        u = cb.shift_bound(t, method)
        f0 = eng.graph.forward(torch.as_tensor(x, dtype=torch.float64))[0]
        for k, tk in enumerate(t):
            theta = np.random.default_rng(k).uniform(-tk, tk, size=(2000, 2))
            theta[:4] = [[tk, tk], [tk, -tk], [-tk, tk], [-tk, -tk]]
            pts = torch.as_tensor(perturb(x[0], a, theta))
            shift = (eng.graph.forward(pts) - f0).norm(dim=1).max()
            assert float(shift) <= u[k] + 1e-9, method


def test_semantic_bounds_on_a_maxmin_encoder(plain_net):
    _, _, eng = plain_net
    x = _images(1, 13)[0]
    cb = ComposedBounds(eng.graph, x, basis(x, "brightness_contrast"))
    assert sum(n.lipschitz_source is not None for n in cb.graph.nodes) == 3
    assert_semantic_bounds_hold(eng, x, np.array([0.02, 0.1]), 1500)


# ---- 4. tightness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stable", [True, False])
def test_crown_is_exact_on_stable_pairs_and_never_looser_than_ibp(stable):
    rng = np.random.default_rng(8)
    m = 5
    w = rng.normal(size=(2 * m, 16)) * 0.5
    c = rng.normal(size=2 * m) * 0.1
    if stable:  # a − b = ±8 at the center, far beyond what a radius-0.3 ball moves it: every pair stable
        c[:m] += np.where(np.arange(m) % 2 == 0, 8.0, -8.0)
    model = _dense_maxmin_model(w, c)
    eng = BoundEngine(model)
    x64 = torch.as_tensor(_images(1, 9, side=4), dtype=torch.float64)
    r = 0.3
    ball = InputBall(x64, torch.tensor([r], dtype=torch.float64), "l2", False)
    centers = eng.graph.forward_all(x64)
    f0 = centers[eng.graph.output].reshape(1, -1)
    ibp_bounds = interval_bounds(eng.graph, ball, centers, eng.lipschitz)
    lo, hi = ibp_bounds[eng.graph.output]
    ibp = float(torch.maximum(hi - f0, f0 - lo).norm())
    crown = output_shift_bounds(
        eng.graph, ball, f0, crown_intermediate_bounds(eng.graph, ball, centers, eng.lipschitz)
    )
    crown_ibp = output_shift_bounds(eng.graph, ball, f0, ibp_bounds)
    assert float(crown.per_feature[0]) <= ibp + 1e-12
    assert float(crown_ibp.per_feature[0]) <= ibp + 1e-12
    # sound: the true per-feature ranges on the ball stay inside (samples, plus each row's maximizer)
    w32 = torch.as_tensor(w.astype(np.float32).astype(np.float64))
    toward = (w32 / w32.norm(dim=1, keepdim=True) * r).reshape(-1, 1, 4, 4)
    pts = torch.cat([_ball_points(x64, r, 4000, "l2", seed=0, clip=False), x64 + toward, x64 - toward])
    shifts = (eng.graph.forward(pts) - f0).abs().max(0).values
    assert float(shifts.norm()) <= float(crown.per_feature[0]) + 1e-9
    assert float(shifts.norm()) <= float(crown_ibp.per_feature[0]) + 1e-9
    diff = [n.inputs[0] for n in eng.graph.nodes if n.kind == "relu"]
    lo_d, hi_d = ibp_bounds[diff[0]]
    if stable:
        assert bool(torch.all((lo_d > 0) | (hi_d < 0)))
        # f is then the linear map x ↦ z with each pair ordered as at the center: feature i moves by r‖W_i‖
        exact = float((r * w32.norm(dim=1)).norm())
        assert float(crown.per_feature[0]) == pytest.approx(exact, rel=1e-9)
        assert float(crown_ibp.per_feature[0]) == pytest.approx(exact, rel=1e-9)
        assert float(shifts.norm()) == pytest.approx(exact, rel=1e-9)  # and it is attained
    # the difference a − b is computed from the input directly (folded): its IBP bound is exact per pair
    wd = w32[:m] - w32[m:]
    zd = centers[diff[0]].reshape(-1)
    np.testing.assert_allclose(
        hi_d.reshape(-1).numpy(), (zd + r * wd.norm(dim=1)).numpy(), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        lo_d.reshape(-1).numpy(), (zd - r * wd.norm(dim=1)).numpy(), rtol=1e-9, atol=1e-9
    )
    if not stable:
        assert bool(torch.any((lo_d < 0) & (hi_d > 0)))  # the case the relaxation matters in
        # (one layer: IBP's pair-sort interval is exact at max's top and min's bottom, so CROWN can only
        # match it here; it is sound and no looser, checked above)


# ---- 5. refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,channels,node",
    [
        ("ok_odd", 5, "s0"),
        ("not_halves", 4, "s0"),
        ("overlap", 4, "s1"),
        ("axis", 4, "s0"),
        ("step", 4, "s0"),
        ("max_without_min", 4, "s0"),
        ("min_first", 4, "the_concat"),
        ("concat_axis", 4, "the_concat"),
        ("slice_reused", 4, "s0"),
        ("maxmin_reused", 4, "the_max"),
        ("unrelated", 4, "the_max"),
        ("max_const", 4, "s1"),  # s1 is then read by the Min alone
        ("different_tensors", 4, "the_max"),
    ],
)
def test_malformed_patterns_are_refused_naming_the_node(variant, channels, node):
    model = _conv_maxmin_model(variant, channels)
    with pytest.raises(UnsupportedModelError, match=f"node '{re.escape(node)}'"):
        build_bound_graph(model)


def test_the_well_formed_pattern_loads_and_matches_onnxruntime():
    model = _conv_maxmin_model("ok", 4)
    eng = BoundEngine(model)
    x = _images(4, 0, side=4)
    _assert_matches_onnxruntime(eng, model, x, atol=1e-5)


def test_other_dynamic_slices_and_concats_are_refused():
    rng = np.random.default_rng(0)
    inits = [f32("cw", rng.normal(size=(4, 1, 3, 3)))]
    conv = helper.make_node("Conv", ["images", "cw"], ["x"], name="conv", pads=[1, 1, 1, 1])
    flat = helper.make_node("Flatten", ["y"], ["features"], name="flatten")
    # a swap of the halves by Slice + Concat (no Max / Min)
    s0, i0 = _slice("s0", "x", 0, 2)
    s1, i1 = _slice("s1", "x", 2, 4)
    cat = helper.make_node("Concat", ["s1", "s0"], ["y"], name="cat", axis=1)
    with pytest.raises(UnsupportedModelError, match="node 's0'"):
        build_bound_graph(hand_model([conv, s0, s1, cat, flat], inits + i0 + i1, (1, 4, 4), 64))
    # a Concat of two image tensors
    cat = helper.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=1)
    with pytest.raises(UnsupportedModelError, match="node 'cat'"):
        build_bound_graph(hand_model([conv, cat, flat], inits, (1, 4, 4), 128))
    # Max of an image tensor with itself / with a constant; Min of an image tensor with a constant
    mx = helper.make_node("Max", ["x", "x"], ["y"], name="mx")
    with pytest.raises(UnsupportedModelError, match="node 'mx'"):
        build_bound_graph(hand_model([conv, mx, flat], inits, (1, 4, 4), 64))
    for op in ("Max", "Min"):
        mx = helper.make_node(op, ["x", "zero"], ["y"], name="with_const")
        with pytest.raises(UnsupportedModelError, match="node 'with_const'"):
            build_bound_graph(hand_model([conv, mx, flat], inits + [f32("zero", np.zeros(1))], (1, 4, 4), 64))
    # a Slice that is the graph output
    s0, i0 = _slice("s0", "x", 0, 2, out="features")
    with pytest.raises(UnsupportedModelError, match="node 's0'"):
        build_bound_graph(hand_model([conv, s0], inits + i0, (1, 4, 4), 32))


# ---- docs ----------------------------------------------------------------------------------------------


def test_op_tables_list_every_supported_op():
    import services.perturb.engine.onnx_graph as og

    doc = og.__doc__
    md = (Path(__file__).resolve().parents[2] / "docs" / "engine-supported-ops.md").read_text()
    doc_ops = {
        o.strip()
        for line in doc.splitlines()
        if re.match(r"^[A-Z]\w*(, [A-Z]\w*)* {2,}", line)
        for o in re.split(r" {2,}", line)[0].split(",")
    }
    md_ops = {
        o.strip()
        for line in md.splitlines()
        if line.startswith("| ") and not line.startswith("| Op")
        for o in line.split("|")[1].split(",")
    }
    assert set(SUPPORTED_OPS) <= doc_ops
    assert set(SUPPORTED_OPS) <= md_ops
    assert {"Max", "Min"} <= set(SUPPORTED_OPS)
