"""A sum of zero-padded branches (a concatenation) is √(L_a² + L_b²)-Lipschitz, not L_a + L_b; overlapping
branches keep the sum rule. Oracles: the exact norm of the stacked matrix, sampling and PGD."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from engine_nets import assert_bounds_hold, export, images, tiny_net
from onnx import helper
from onnx_helpers import f32, hand_model, ort_features

from services.perturb.engine import BoundEngine
from services.trainer.pgd import AttackConfig, pgd_feature_shift
from services.trainer.pixel_view import compose, principal_directions

SIDE = 6
D = SIDE * SIDE


def _branches(w_a: np.ndarray, w_b: np.ndarray, rows_a: slice, rows_b: slice, out_dim: int
              ) -> onnx.ModelProto:
    """flatten(x) -> P_a W_a x + P_b W_b x + biases, each branch padded into its rows of ``out_dim``."""
    pad_a, pad_b = np.zeros((out_dim, D)), np.zeros((out_dim, D))
    pad_a[rows_a], pad_b[rows_b] = w_a, w_b
    bias_a, bias_b = np.zeros(out_dim), np.zeros(out_dim)
    bias_a[rows_a], bias_b[rows_b] = 0.3, -0.2  # constant coordinates need not be zero
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wa", "ba"], ["va"], transB=1),
        helper.make_node("Gemm", ["flat", "wb", "bb"], ["vb"], transB=1),
        helper.make_node("Add", ["va", "vb"], ["features"]),
    ]
    inits = [f32("wa", pad_a), f32("ba", bias_a), f32("wb", pad_b), f32("bb", bias_b)]
    return hand_model(nodes, inits, (1, SIDE, SIDE), out_dim)


def _norm(m: np.ndarray) -> float:
    return float(np.linalg.norm(m.astype(np.float32).astype(np.float64), 2))


def test_concatenated_linear_branches_get_the_root_sum_of_squares():
    rng = np.random.default_rng(0)
    w_a, w_b = rng.normal(size=(4, D)), 3 * rng.normal(size=(5, D))
    eng = BoundEngine(_branches(w_a, w_b, slice(0, 4), slice(4, 9), 9))
    exact = _norm(np.vstack([w_a, w_b]))
    rule = np.hypot(_norm(w_a), _norm(w_b))
    bound = eng.lipschitz_bound_l2
    assert exact <= bound <= rule * (1 + 1e-4)
    assert bound < 0.9 * (_norm(w_a) + _norm(w_b))  # the sum rule would be far looser here


def test_overlapping_branches_keep_the_sum_rule():
    """Branches that share an output row may add up there: the same matrix twice doubles the norm."""
    w = np.random.default_rng(1).normal(size=(4, D))
    eng = BoundEngine(_branches(w, w, slice(0, 4), slice(0, 4), 4))
    assert eng.lipschitz_bound_l2 >= 2 * _norm(w) * (1 - 1e-6)  # √2·‖W‖ would be unsound
    eng = BoundEngine(_branches(w[:3], w[:2], slice(0, 3), slice(2, 4), 4))  # row 2 shared
    assert eng.lipschitz_bound_l2 >= (_norm(w[:3]) + _norm(w[:2])) * (1 - 1e-6)


def test_a_zero_row_does_not_count_as_overlap():
    """Branch b padded over rows 2..3 with row 2 all zeros changes only row 3: disjoint from a's rows 0..2."""
    w = np.random.default_rng(2).normal(size=(4, D))
    w_b = np.vstack([np.zeros(D), w[3]])
    eng = BoundEngine(_branches(w[:3], w_b, slice(0, 3), slice(2, 4), 4))
    assert eng.lipschitz_bound_l2 <= np.hypot(_norm(w[:3]), _norm(w_b)) * (1 + 1e-4)
    assert eng.lipschitz_bound_l2 >= _norm(w)


@pytest.fixture(scope="module")
def pixel_view_model(tmp_path_factory):
    """A tiny ReLU conv encoder with a 5-direction pixel view, as ``pixel_view.compose`` builds it."""
    path = export(tiny_net("plain", 2, SIDE), tmp_path_factory.mktemp("pv") / "base.onnx", SIDE)
    mean, directions = principal_directions(images(200, 3, SIDE), 5)
    return compose(onnx.load(str(path)), mean, directions, 0.7)


def test_pixel_view_bound_is_the_branch_rule_and_holds(pixel_view_model):
    eng = BoundEngine(pixel_view_model)
    base = eng.lipschitz.global_l2[eng.graph.nodes[eng.graph.output].inputs[1]]
    assert eng.lipschitz_bound_l2 <= np.hypot(0.7, base) * (1 + 1e-4) + 1e-8
    x = torch.as_tensor(images(64, 4, SIDE), dtype=torch.float64)
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = eng.graph.forward
    ratios = (f(y) - f(x)).norm(dim=1) / (y - x).flatten(1).norm(dim=1)
    assert float(ratios.max()) <= eng.lipschitz_bound_l2
    assert float(ratios.max()) >= 0.7 * 0.5  # the view alone moves features: the test can fail


@pytest.mark.parametrize("method", ["lipschitz", "local_lipschitz", "ibp", "crown_ibp", "crown", "auto"])
def test_pixel_view_radii_survive_pgd_and_sampling(pixel_view_model, method):
    eng = BoundEngine(pixel_view_model)
    x = images(2, 5, SIDE)
    feats = ort_features(pixel_view_model)(x)
    rf = np.array([0.3, 1.0]) * float(np.sqrt(((feats - feats.mean(0)) ** 2).sum(1).mean()) + 1e-3)
    r = eng.image_radius(x, rf, norm="l2", method=method).image_radius
    assert np.all(r > 0)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    worst = pgd_feature_shift(eng.graph.forward, x64, torch.as_tensor(r), "l2", True,
                              AttackConfig(steps=100, restarts=3))
    assert np.all(worst.numpy() < rf), (method, worst, rf)
    gen = torch.Generator().manual_seed(1)
    for i in range(2):
        d = torch.randn(4000, 1, SIDE, SIDE, generator=gen, dtype=torch.float64)
        pts = (x64[i : i + 1] + d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * float(r[i])).clamp(0, 1)
        assert float((eng.graph.forward(pts) - eng.graph.forward(x64[i : i + 1])).norm(dim=1).max()) < rf[i]


def test_pixel_view_interval_bounds_contain_sampled_points(pixel_view_model):
    eng = BoundEngine(pixel_view_model)
    x64 = torch.as_tensor(images(2, 6, SIDE), dtype=torch.float64)
    radii = torch.tensor([0.1, 0.5], dtype=torch.float64)

    def points(i: int, r: float) -> torch.Tensor:
        d = torch.randn(2000, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        return (x64[i : i + 1] + d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * r).clamp(0, 1)

    assert_bounds_hold(eng, x64, radii, "l2", points)
