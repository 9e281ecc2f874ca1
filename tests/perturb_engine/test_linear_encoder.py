"""Closed-form oracle: for f(x) = W x + b the exact radius is R_F / σ_max(W)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_nets import engine_for, images

from services.perturb.engine.ball import InputBall
from services.perturb.engine.crown import output_shift_bounds
from services.perturb.engine.ibp import interval_bounds
from services.perturb.engine.operator_norms import explicit_matrix


def _matrix(eng) -> np.ndarray:
    """The encoder's linear part as an explicit matrix [D, n] (composed from the folded graph)."""
    x = torch.eye(int(np.prod(eng.input_shape)), dtype=torch.float64).reshape(-1, *eng.input_shape)
    zero = torch.zeros(1, *eng.input_shape, dtype=torch.float64)
    return (eng.graph.forward(x) - eng.graph.forward(zero)).T.numpy()


@pytest.mark.parametrize("method", ["auto", "lipschitz", "crown_ibp", "crown"])
def test_linear_encoder_radius_is_exact(method, tmp_path):
    eng, _ = engine_for("linear", 0, tmp_path)
    w = _matrix(eng)
    sigma = np.linalg.norm(w, 2)
    x = images(3, 0)
    rf = np.array([0.5, 1.0, 2.0])
    res = eng.image_radius(x, rf, method=method, clip_to_pixel_box=False)
    assert np.all(res.image_radius * sigma <= rf)
    assert np.all(res.image_radius * sigma >= 0.99 * rf)
    assert len(res.method_used) == 3


def test_per_feature_combination_is_frobenius_loose(tmp_path):
    eng, _ = engine_for("linear", 1, tmp_path)
    w = _matrix(eng)
    x = torch.as_tensor(images(2, 1), dtype=torch.float64)
    r = torch.tensor([0.1, 0.3], dtype=torch.float64)
    ball = InputBall(x, r, "l2", clip_to_pixel_box=False)
    centers = eng.graph.forward_all(x)
    bounds = interval_bounds(eng.graph, ball, centers, eng.lipschitz)
    f0 = centers[eng.graph.output].reshape(2, -1)
    shift = output_shift_bounds(eng.graph, ball, f0, bounds)
    np.testing.assert_allclose(shift.per_feature.numpy(), r.numpy() * np.linalg.norm(w, "fro"), rtol=1e-6)
    np.testing.assert_allclose(
        shift.linear_part.numpy(), r.numpy() * np.linalg.norm(w, 2), rtol=1e-4, atol=1e-8
    )


def test_certified_lipschitz_of_linear_encoder(tmp_path):
    eng, _ = engine_for("linear", 2, tmp_path)
    sigma = np.linalg.norm(_matrix(eng), 2)
    assert sigma <= eng.lipschitz_bound_l2 <= sigma * (1 + 1e-3)
    dense = [n for n in eng.graph.nodes if n.kind == "affine"]
    assert len(dense) == 1  # normalization, flatten and Gemm fold into one dense map
    assert explicit_matrix(dense[0].lmap).shape == (6, 64)
