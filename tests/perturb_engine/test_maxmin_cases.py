"""MaxMin cases beyond test_maxmin.py, and the float-error model's pairing of unfolded and folded nodes.

MaxMin whose source is not a conv / dense node (a ReLU with pairs dead on the ball, another MaxMin, a
non-per-channel Mul that keeps the difference a bare PairMap), a residual x + MaxMin(x), a dense layer
reshaped to [C, H, W] before MaxMin; per node: intervals (IBP and full CROWN) against sampled values,
per-neuron and local Lipschitz bounds against sampled Jacobians, the float margin against ONNX Runtime and
the θ-graph bounds against sampling. Loader spellings that ONNX evaluates to the same MaxMin (negative axes,
a reversed one-channel Slice, a half read through Identity) load and match ONNX Runtime; near-misses are
refused. ``lipschitz_source`` survives prune / to / the θ-composition and is refused when malformed.

The float-error model once paired unfolded and folded nodes by the last ``+``-separated part of their
names, so an ONNX node literally named ``p+q`` was taken for the value of a node named ``q`` and its
intervals replaced q's (an unsound margin): pairs now come from the folded nodes' ``value_of`` provenance,
checked on random inputs (``test_float_error_pairs_nodes_by_value_not_by_name_suffix`` fails on the old
code).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from engine_nets import assert_bounds_hold, assert_semantic_bounds_hold
from onnx import helper
from onnx_helpers import f32, hand_model, i64, ort_features

from services.perturb.engine import BoundEngine, UnsupportedModelError
from services.perturb.engine.ball import InputBall
from services.perturb.engine.ibp import interval_bounds
from services.perturb.engine.linear_maps import PairMap, ReshapeMap
from services.perturb.engine.lipschitz import lipschitz_info
from services.perturb.engine.local_lipschitz import local_lipschitz
from services.perturb.engine.onnx_graph import BoundGraph, Node, build_bound_graph, prune
from services.perturb.semantic.composed import compose

SIDE = 4


# ---- hand-built ONNX -----------------------------------------------------------------------------------




def _slice(name: str, x: str, start: int, end: int, axis: int = 1, step: int = 1):
    inits = [i64(f"{name}_st", [start]), i64(f"{name}_en", [end]), i64(f"{name}_ax", [axis])]
    inits.append(i64(f"{name}_sp", [step]))
    ins = [x, f"{name}_st", f"{name}_en", f"{name}_ax", f"{name}_sp"]
    return helper.make_node("Slice", ins, [name], name=name), inits


def _maxmin(tag: str, x: str, c: int, out: str, *, spelling: str = "torch", concat_axis: int = 1):
    """Slice / Slice / Max / Min / Concat of x's c channels into ``out``; names prefixed by ``tag``."""
    h = c // 2
    first, second = ((0, h, 1), (h, 2 * h, 1)) if spelling == "torch" else ((-c, -h, -3), (h, 2**62, -3))
    nodes, inits = [], []
    for name, (s, e, ax) in ((f"{tag}s0", first), (f"{tag}s1", second)):
        n, i = _slice(name, x, s, e, axis=ax)
        nodes.append(n)
        inits += i
    nodes += [
        helper.make_node("Max", [f"{tag}s0", f"{tag}s1"], [f"{tag}mx"], name=f"{tag}mx"),
        helper.make_node("Min", [f"{tag}s1", f"{tag}s0"], [f"{tag}mn"], name=f"{tag}mn"),
        helper.make_node("Concat", [f"{tag}mx", f"{tag}mn"], [out], name=f"{tag}cat", axis=concat_axis),
    ]
    return nodes, inits


def _head(y: str, width: int, rng) -> tuple[list, list]:
    nodes = [
        helper.make_node("Flatten", [y], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "gw", "gb"], ["features"], name="gemm", transB=1),
    ]
    return nodes, [f32("gw", rng.normal(size=(3, width)) * 0.2), f32("gb", rng.normal(size=3) * 0.1)]


KINDS = ["relu_source", "maxmin_of_maxmin", "residual", "scaled_source", "dense_reshaped"]


def _net(kind: str, seed: int = 0) -> onnx.ModelProto:
    """images [B, 1, 4, 4] -> (a MaxMin whose source is of the named kind) -> Flatten -> Gemm [B, 3]."""
    rng = np.random.default_rng(seed)
    c = 4
    bias = rng.normal(size=c) * 0.3
    if kind == "relu_source":
        bias[[0, 2]] = -40.0  # channels 0 and 2 (one MaxMin pair) dead on every ball below
    inits = [f32("cw", rng.normal(size=(c, 1, 3, 3))), f32("cb", bias)]
    nodes = [helper.make_node("Conv", ["images", "cw", "cb"], ["x"], name="conv", pads=[1, 1, 1, 1])]
    if kind == "relu_source":
        nodes.append(helper.make_node("Relu", ["x"], ["xr"], name="relu0"))
        n, i = _maxmin("m", "xr", c, "y")
    elif kind == "maxmin_of_maxmin":
        n, i = _maxmin("m", "x", c, "y0")
        n2, i2 = _maxmin("k", "y0", c, "y", spelling="other", concat_axis=-3)
        n, i = n + n2, i + i2
    elif kind == "residual":
        n, i = _maxmin("m", "x", c, "y0")
        n.append(helper.make_node("Add", ["x", "y0"], ["y"], name="res"))
    elif kind == "scaled_source":  # not per-channel: stays a ScaleMap, so the difference is a bare PairMap
        inits.append(f32("k", rng.uniform(0.5, 2.0, size=(1, c, SIDE, SIDE))))
        nodes.append(helper.make_node("Mul", ["x", "k"], ["xs"], name="mul"))
        n, i = _maxmin("m", "xs", c, "y")
    else:  # dense_reshaped
        d = c * SIDE * SIDE
        nodes = [
            helper.make_node("Flatten", ["images"], ["fl"], name="fl"),
            helper.make_node("Gemm", ["fl", "gw0", "gb0"], ["z"], name="gemm0", transB=1),
            helper.make_node("Reshape", ["z", "shp"], ["x"], name="resh"),
        ]
        inits = [
            f32("gw0", rng.normal(size=(d, SIDE * SIDE)) * 0.3),
            f32("gb0", rng.normal(size=d) * 0.3),
            i64("shp", [-1, c, SIDE, SIDE]),
        ]
        n, i = _maxmin("m", "x", c, "y")
    nodes += n
    inits += i
    hn, hi = _head("y", c * SIDE * SIDE, rng)
    return hand_model(nodes + hn, inits + hi, (1, SIDE, SIDE), 3)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, SIDE, SIDE)).astype(np.float32)


def _ball_points(x: torch.Tensor, r: float, n: int, norm: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, *x.shape[1:], generator=gen, dtype=torch.float64)
    d = d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * r if norm == "l2" else torch.sign(d) * r
    scale = torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64).clamp(min=0.5)
    return (x + d * scale).clamp(0, 1)


# ---- MaxMin sources other than a conv -------------------------------------------------------------------


def test_the_sources_have_the_structure_under_test():
    g = {kind: BoundEngine(_net(kind)).graph for kind in KINDS}
    src = {kind: [n.lipschitz_source for n in gr.nodes if n.lipschitz_source is not None]
           for kind, gr in g.items()}
    assert g["relu_source"].nodes[src["relu_source"][0]].kind == "relu"
    assert [g["maxmin_of_maxmin"].nodes[s].kind for s in src["maxmin_of_maxmin"]] == ["affine", "add"]
    # the swap and the residual Add read x; the difference is rewired to read the conv's input directly
    gr = g["residual"]
    assert sorted(gr.nodes[c].kind for c in gr.consumers[src["residual"][0]]) == ["add", "affine"]
    assert gr.nodes[src["residual"][0]].kind == "affine"
    # the difference stays a PairMap on a node that is neither the input nor behind a ReLU: full CROWN
    # must bound it (the old "not deep" skip would have left it to interval arithmetic)
    gs = g["scaled_source"]
    diff = [n for n in gs.nodes if isinstance(n.lmap, PairMap) and n.lmap.mode == "diff"]
    assert len(diff) == 1 and diff[0].inputs != (0,)
    # a dense layer's output reshaped to [C, H, W]: the difference folds into the dense map
    gd = g["dense_reshaped"]
    assert not any(isinstance(n.lmap, PairMap) and n.lmap.mode == "diff" for n in gd.nodes)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_float_margin_match_onnxruntime(kind):
    model = _net(kind)
    eng = BoundEngine(model)
    x = _images(16, 1)
    exact = eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()
    served = ort_features(model)(x).astype(np.float64)
    np.testing.assert_allclose(exact, served, rtol=1e-5, atol=1e-5)
    unfolded = build_bound_graph(model, fold=False)
    np.testing.assert_allclose(unfolded.forward(torch.as_tensor(x, dtype=torch.float64)).numpy(), exact,
                               rtol=1e-10, atol=1e-10)
    assert np.all(np.linalg.norm(served - exact, axis=1) <= eng.served_point_error(x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_intervals_and_shift_bounds_contain_sampled_values(kind, norm):
    eng = BoundEngine(_net(kind))
    x64 = torch.as_tensor(_images(1, 2), dtype=torch.float64).repeat(2, 1, 1, 1)
    radii = torch.tensor([0.1, 0.8], dtype=torch.float64)
    if norm == "linf":
        radii = radii / SIDE
    assert_bounds_hold(eng, x64, radii, norm,
                       lambda i, r: _ball_points(x64[i : i + 1], r, 1500, norm, 10 + i))


@pytest.mark.parametrize("kind", KINDS)
def test_lipschitz_bounds_dominate_sampled_jacobians(kind):
    """Global, per-neuron and local (alive-masked) Lipschitz bounds against Jacobians at ball points."""
    eng = BoundEngine(_net(kind))
    x64 = torch.as_tensor(_images(2, 3), dtype=torch.float64)
    radii = torch.tensor([0.2, 1.0], dtype=torch.float64)
    ball = InputBall(x64, radii, "l2", True)
    bounds = interval_bounds(eng.graph, ball, eng.graph.forward_all(x64), eng.lipschitz)
    local = local_lipschitz(eng.graph, bounds, eng.lipschitz)
    per = eng.lipschitz.per_neuron_l2[eng.graph.output]
    assert torch.all(local <= eng.lipschitz_bound_l2 * (1 + 1e-9))
    for i in range(2):
        pts = _ball_points(x64[i : i + 1], float(radii[i]), 40, "l2", seed=i)
        for p in pts:
            jac = torch.autograd.functional.jacobian(lambda v: eng.graph.forward(v[None])[0], p)
            jac = jac.reshape(3, -1)
            assert float(torch.linalg.matrix_norm(jac, ord=2)) <= float(local[i]) * (1 + 1e-9)
            assert torch.all(jac.norm(dim=1) <= per * (1 + 1e-9))
    if kind == "relu_source":  # the dead pair is dropped: tighter than the global constant
        assert float(local[0]) < eng.lipschitz_bound_l2 * 0.999


@pytest.mark.parametrize("kind", ["maxmin_of_maxmin", "scaled_source", "relu_source"])
def test_semantic_bounds_contain_sampled_shifts(kind):
    assert_semantic_bounds_hold(BoundEngine(_net(kind)), _images(1, 4)[0], np.array([0.05, 0.3]), 800)


# ---- loader: equivalent spellings accepted, near-misses refused -----------------------------------------


def _conv(c: int, rng) -> tuple[list, list]:
    inits = [f32("cw", rng.normal(size=(c, 1, 3, 3))), f32("cb", rng.normal(size=c) * 0.3)]
    return [helper.make_node("Conv", ["images", "cw", "cb"], ["x"], name="conv", pads=[1, 1, 1, 1])], inits


def _assert_matches_onnxruntime(model: onnx.ModelProto) -> None:
    eng = BoundEngine(model)
    x = _images(6, 5)
    np.testing.assert_allclose(eng.graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy(),
                               ort_features(model)(x), rtol=1e-5, atol=1e-5)
    assert sum(n.lipschitz_source is not None for n in eng.graph.nodes) == 1


def test_equivalent_spellings_load_and_match_onnxruntime():
    rng = np.random.default_rng(6)
    # negative slice axes, clamped end, Concat axis -3 (all = axis 1 of a rank-4 tensor)
    conv, ci = _conv(4, rng)
    n, i = _maxmin("m", "x", 4, "y", spelling="other", concat_axis=-3)
    hn, hi = _head("y", 4 * SIDE * SIDE, rng)
    _assert_matches_onnxruntime(hand_model(conv + n + hn, ci + i + hi, (1, SIDE, SIDE), 3))
    # two channels, the halves spelled with a negative step (one channel each) and one read via Identity
    conv, ci = _conv(2, rng)
    s0, i0 = _slice("s0", "x", 0, -100, step=-1)  # index 0 only
    s1, i1 = _slice("s1", "xi", 1, 0, step=-1)  # index 1 only
    nodes = conv + [helper.make_node("Identity", ["x"], ["xi"], name="ident"), s0, s1]
    nodes += [
        helper.make_node("Max", ["s1", "s0"], ["mx"], name="mx"),
        helper.make_node("Min", ["s0", "s1"], ["mn"], name="mn"),
        helper.make_node("Concat", ["mx", "mn"], ["y"], name="cat", axis=1),
    ]
    hn, hi = _head("y", 2 * SIDE * SIDE, rng)
    _assert_matches_onnxruntime(hand_model(nodes + hn, ci + i0 + i1 + hi, (1, SIDE, SIDE), 3))


def _variant(name: str) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    conv, inits = _conv(4, rng)
    nodes = list(conv)
    out_dim, y = 3, "y"
    if name == "three_input_max":
        n, i = _maxmin("m", "x", 4, "y")
        n[2] = helper.make_node("Max", ["ms0", "ms1", "ms0"], ["mmx"], name="mmx")
    elif name in ("crossed_pairs", "min_in_two_concats"):
        n, i = _maxmin("m", "x", 4, "y")
        n2, i2 = _maxmin("k", "x", 4, "y2")
        if name == "crossed_pairs":  # Concat(Max of one Slice pair, Min of another), and vice versa
            n[4] = helper.make_node("Concat", ["mmx", "kmn"], ["y"], name="mcat", axis=1)
            n2[4] = helper.make_node("Concat", ["kmx", "mmn"], ["y2"], name="kcat", axis=1)
        else:
            n2[4] = helper.make_node("Concat", ["kmx", "mmn"], ["y2"], name="kcat", axis=1)
        n, i = n + n2, i + i2
        n.append(helper.make_node("Add", ["y", "y2"], ["y3"], name="sum"))
        y = "y3"
    elif name == "max_and_min_of_different_tensors":
        nodes.append(helper.make_node("Conv", ["images", "cw", "cb"], ["x2"], name="conv2",
                                      pads=[1, 1, 1, 1]))
        n, i = _maxmin("m", "x", 4, "y")
        n2, i2 = _maxmin("k", "x2", 4, "y2")
        n[4] = helper.make_node("Concat", ["mmx", "kmn"], ["y"], name="mcat", axis=1)
        n2[4] = helper.make_node("Concat", ["kmx", "mmn"], ["y2"], name="kcat", axis=1)
        n, i = n + n2, i + i2
        n.append(helper.make_node("Add", ["y", "y2"], ["y3"], name="sum"))
        y = "y3"
    elif name == "concat_last_axis":
        n, i = _maxmin("m", "x", 4, "y", concat_axis=-1)
    elif name == "slice_of_a_half":
        n, i = _maxmin("m", "x", 4, "y")
        s, si = _slice("again", "ms0", 0, 1)
        n.insert(2, s)
        i += si
    elif name == "batch_and_channel_axes":
        n, i = _maxmin("m", "x", 4, "y")
        for k, (s, e) in enumerate(((0, 2), (2, 4))):
            nm = f"ms{k}"
            i = [t for t in i if not t.name.startswith(nm + "_")]
            i += [i64(f"{nm}_st", [0, s]), i64(f"{nm}_en", [2**62, e]), i64(f"{nm}_ax", [0, 1])]
            i += [i64(f"{nm}_sp", [1, 1])]
    else:
        raise AssertionError(name)
    hn, hi = _head(y, 4 * SIDE * SIDE * (2 if name == "concat_last_axis" else 1), rng)
    return hand_model(nodes + n + hn, inits + i + hi, (1, SIDE, SIDE), out_dim)


@pytest.mark.parametrize(
    "name",
    [
        "three_input_max",
        "crossed_pairs",
        "min_in_two_concats",
        "max_and_min_of_different_tensors",
        "concat_last_axis",
        "slice_of_a_half",
        "batch_and_channel_axes",
    ],
)
def test_near_miss_patterns_are_refused(name):
    with pytest.raises(UnsupportedModelError, match="node '"):
        build_bound_graph(_variant(name))


def test_max_as_a_graph_output_is_refused():
    rng = np.random.default_rng(8)
    conv, inits = _conv(4, rng)
    n, i = _maxmin("m", "x", 4, "y")
    n = n[:4]  # Slices, Max, Min; the Max is the graph output, the Min dangles
    n[2] = helper.make_node("Max", ["ms0", "ms1"], ["features"], name="mmx")
    model = hand_model(conv + n, inits + i, (1, SIDE, SIDE), 2 * SIDE * SIDE)
    with pytest.raises(UnsupportedModelError, match="node '"):
        build_bound_graph(model)


# ---- lipschitz_source bookkeeping -----------------------------------------------------------------------


def _lowered(shape=(4,)) -> list[Node]:
    """input [4] -> x = input (identity reshape) -> MaxMin(x) lowered by hand, the add naming x."""
    z = torch.zeros
    h = (shape[0] // 2, *shape[1:])
    return [
        Node("input", (), shape, "in"),
        Node("affine", (0,), shape, "x", ReshapeMap(shape, shape), z(shape, dtype=torch.float64)),
        Node("affine", (1,), h, "d", PairMap("diff", shape), z(h, dtype=torch.float64)),
        Node("relu", (2,), h, "r"),
        Node("affine", (3,), shape, "e", PairMap("split", shape), z(shape, dtype=torch.float64)),
        Node("affine", (1,), shape, "p", PairMap("swap", shape), z(shape, dtype=torch.float64)),
        Node("add", (5, 4), shape, "mm", lipschitz_source=1),
    ]


def test_malformed_lipschitz_sources_are_refused():
    lipschitz_info(BoundGraph(_lowered(), 6))  # well formed
    for bad in (6, 7, -1):  # itself, a later node, a negative index
        nodes = _lowered()
        nodes[6] = Node("add", (5, 4), (4,), "mm", lipschitz_source=bad)
        with pytest.raises((ValueError, IndexError)):
            lipschitz_info(BoundGraph(nodes, 6))
    nodes = _lowered()
    nodes[6] = Node("add", (5, 4), (4,), "mm", lipschitz_source=2)  # the difference: a different shape
    with pytest.raises(ValueError, match="lipschitz_source"):
        lipschitz_info(BoundGraph(nodes, 6))


def test_lipschitz_source_survives_rewrites():
    g = BoundGraph(_lowered(), 6)
    assert g.to(torch.float32).nodes[6].lipschitz_source == 1
    # prune renumbers it: an unused node in front shifts every index by one
    nodes = _lowered()
    nodes.insert(1, Node("affine", (0,), (4,), "unused", ReshapeMap((4,), (4,)), torch.zeros(4)))
    nodes = [
        Node(n.kind, tuple(i + 1 if i >= 1 else i for i in n.inputs), n.shape, n.name, n.lmap, n.bias,
             None if n.lipschitz_source is None else n.lipschitz_source + 1)
        for n in nodes
    ]
    pruned = prune(BoundGraph(nodes, 7))
    assert len(pruned.nodes) == 7 and pruned.nodes[6].lipschitz_source == 1
    assert pruned.nodes[1].name == "x"
    # the θ-composition keeps it pointing at the same value (here x, not the image, so it is kept)
    x0 = np.linspace(-1, 1, 4)
    a = np.eye(4)[:2]
    comp = compose(g, x0, a)
    add = [n for n in comp.nodes if n.lipschitz_source is not None]
    assert len(add) == 1 and comp.nodes[add[0].lipschitz_source].name.startswith("x")
    theta = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vals = comp.forward_all(theta)
    src = vals[add[0].lipschitz_source]
    a_, b_ = src.chunk(2, dim=1)
    sorted_pairs = torch.cat([torch.maximum(a_, b_), torch.minimum(a_, b_)], 1)
    assert torch.allclose(vals[comp.nodes.index(add[0])], sorted_pairs)


# ---- float error: unfolded nodes paired with folded ones of the same exact value ------------------------


def _same_value_pairs_differ(model: onnx.ModelProto) -> list[tuple[str, str, float]]:
    eng = BoundEngine(model)
    fe = eng.float_error
    x = torch.as_tensor(_images(3, 9), dtype=torch.float64)
    cu, cf = fe.graph.forward_all(x), eng.graph.forward_all(x)
    bad = []
    for i, j in fe._same_value.items():
        gap = float((cu[i] - cf[j]).abs().max())
        if gap > 1e-9 * (1 + float(cu[i].abs().max())):
            bad.append((fe.graph.nodes[i].name, eng.graph.nodes[j].name, gap))
    return bad


@pytest.mark.parametrize("kind", KINDS)
def test_float_error_pairs_maxmin_nodes_with_their_own_values(kind):
    assert _same_value_pairs_differ(_net(kind)) == []


def test_float_error_pairs_nodes_by_value_not_by_name_suffix():
    """A node named "q" merged into its consumer in the folded graph ("q+sc") must not be paired with an
    unrelated node literally named "p+q": name-suffix pairing intersected q's served-error intervals with
    p+q's bounds, which over a ball exclude q's own value (its magnitude, hence the rounding charged
    downstream, was underestimated)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["images", "wq"], ["a"], name="q"),
        helper.make_node("Mul", ["a", "k"], ["b"], name="sc"),  # per-channel: folds into q ("q+sc")
        helper.make_node("Conv", ["images", "wp"], ["c"], name="p+q"),
        helper.make_node("Add", ["b", "c"], ["d"], name="res"),
    ]
    inits = [
        f32("wq", rng.normal(size=(2, 1, 1, 1)) * 1000),
        f32("wp", rng.normal(size=(2, 1, 1, 1)) * 1e-3),
        f32("k", np.full((1, 2, 1, 1), 1 / 3)),
    ]
    hn, hi = _head("d", 2 * SIDE * SIDE, rng)
    model = hand_model(nodes + hn, inits + hi, (1, SIDE, SIDE), 3)
    eng = BoundEngine(model)
    fe = eng.float_error
    x64 = torch.as_tensor(_images(1, 1), dtype=torch.float64)
    ball = InputBall(x64, torch.tensor([0.05], dtype=torch.float64), "l2", False)
    centers = eng.graph.forward_all(x64)
    folded = interval_bounds(eng.graph, ball, centers, eng.lipschitz)
    overrides = {i: folded[j] for i, j in fe._same_value.items()}
    served = fe.centers(x64)
    bounds = interval_bounds(fe.graph, ball, served, fe.lipschitz, overrides)
    for k, (lo, hi_) in enumerate(bounds):
        name = fe.graph.nodes[k].name
        assert torch.all(lo <= served[k] + 1e-9) and torch.all(served[k] <= hi_ + 1e-9), name


def test_same_value_pairs_refuse_wrong_provenance_and_drop_value_mismatches():
    from dataclasses import replace as dc_replace

    from services.perturb.engine.float_error import same_value_pairs
    from services.perturb.engine.onnx_graph import fold_affine

    unfolded = build_bound_graph(_net("residual"), fold=False)
    folded = fold_affine(unfolded)
    pairs = same_value_pairs(unfolded, folded)
    assert pairs[0] == 0 and pairs[unfolded.output] == folded.output
    assert all(folded.nodes[j].value_of in (i, None) for i, j in pairs.items())
    # a provenance naming a node of another kind, or none at all, is a bug: refused
    relu = next(j for j, n in enumerate(folded.nodes) if n.kind == "relu")
    affine = next(i for i, n in enumerate(unfolded.nodes) if n.kind == "affine")
    bad = list(folded.nodes)
    bad[relu] = dc_replace(bad[relu], value_of=affine)
    with pytest.raises(ValueError, match="cannot compute"):
        same_value_pairs(unfolded, BoundGraph(bad, folded.output))
    bad[relu] = dc_replace(bad[relu], value_of=len(unfolded.nodes))
    with pytest.raises(ValueError, match="does not exist"):
        same_value_pairs(unfolded, BoundGraph(bad, folded.output))
    # same kind and shape but another value (a wrong bias): the pair is dropped, not trusted
    j = next(j for j, n in enumerate(folded.nodes) if n.kind == "affine" and n.value_of is not None
             and n.value_of != unfolded.output)
    wrong = list(folded.nodes)
    wrong[j] = dc_replace(wrong[j], bias=wrong[j].bias + 1.0)
    kept = same_value_pairs(unfolded, BoundGraph(wrong, folded.output))
    assert folded.nodes[j].value_of not in kept and kept[0] == 0
    # a graph without provenance pairs only the input and the output
    plain = BoundGraph([dc_replace(n, value_of=None) for n in folded.nodes], folded.output)
    assert same_value_pairs(unfolded, plain) == {0: 0, unfolded.output: folded.output}
