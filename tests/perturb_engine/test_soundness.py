"""Soundness on random small conv nets: no sampled or attacked perturbation beats a certified radius."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_nets import assert_bounds_hold, engine_for, images, onnx_path
from onnx_helpers import ort_features

from services.trainer.pgd import AttackConfig, pgd_feature_shift

KINDS = ["plain", "bn", "residual", "pool"]


def _sphere(x: torch.Tensor, r: float, n: int, norm: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, *x.shape[1:], generator=gen, dtype=torch.float64)
    if norm == "l2":
        d = d / d.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * r
    else:
        d = torch.sign(d) * r * torch.where(torch.rand(d.shape, generator=gen) < 0.9, 1.0, 0.3).double()
    return x + d


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_certified_radii_survive_sampling_and_pgd(kind, norm, tmp_path):
    eng, _ = engine_for(kind, 3, tmp_path)
    x = images(2, 5)
    f = ort_features(onnx_path(kind, 3, tmp_path))(x)
    spread = float(np.sqrt(((f - f.mean(0)) ** 2).sum(1).mean())) + 1e-3
    rf = np.array([0.5, 2.0]) * spread
    f64 = eng.graph.forward
    x64 = torch.as_tensor(x, dtype=torch.float64)
    radii = {}
    for method in ["lipschitz", "local_lipschitz", "ibp", "crown_ibp", "crown", "auto"]:
        res = eng.image_radius(x, rf, norm=norm, method=method)
        r = radii[method] = res.image_radius
        assert np.all(r >= 0) and np.all(np.isfinite(r))
        # PGD at the certified radius (clip on, as certified)
        acfg = AttackConfig(steps=100, restarts=5)
        worst = pgd_feature_shift(f64, x64, torch.as_tensor(r), norm, True, acfg)
        assert np.all(worst.numpy() < rf), (method, worst, rf)
        for i in range(2):
            pts = _sphere(x64[i : i + 1], float(r[i]), 10_000, norm, seed=i).clamp(0, 1)
            shift = (f64(pts) - f64(x64[i : i + 1])).norm(dim=1)
            assert float(shift.max()) < rf[i], method
    assert np.all(radii["auto"] >= radii["lipschitz"])
    assert set(res.method_used) <= {"lipschitz", "ibp", "crown_ibp", "crown"}  # the wire's Method enum
    assert np.all(radii["auto"] >= radii["crown_ibp"] / (1 + 2e-3))
    assert np.all(radii["local_lipschitz"] >= radii["lipschitz"] / (1 + 2e-3))


@pytest.mark.parametrize("kind", KINDS)
def test_bounds_contain_sampled_points_and_are_monotone(kind, tmp_path):
    eng, _ = engine_for(kind, 4, tmp_path)
    x64 = torch.as_tensor(images(1, 7), dtype=torch.float64).repeat(3, 1, 1, 1)
    radii = torch.tensor([0.05, 0.2, 0.6], dtype=torch.float64)
    for norm in ["l2", "linf"]:
        rr = radii if norm == "l2" else radii / 8

        def points(i: int, r: float, norm: str = norm) -> torch.Tensor:
            pts = _sphere(x64[i : i + 1], r, 4000, norm, seed=10 + i).clamp(0, 1)
            gen = torch.Generator().manual_seed(i)
            inside = torch.rand(pts.shape[0], 1, 1, 1, generator=gen).double()
            return x64[i : i + 1] + (pts - x64[i : i + 1]) * torch.where(inside < 0.5, 1.0, inside)

        assert_bounds_hold(eng, x64, rr, norm, points)
    result = eng.curve(images(2, 8), np.array([0.0, 0.01, 0.1, 0.3, 1.0, 3.0]))
    curve = result.bounds
    assert result.completed and curve.shape == (2, 6)
    assert np.all(np.diff(curve, axis=1) >= 0)
    assert np.all(curve[:, 0] >= 0)


def test_curve_bounds_attacks_and_matches_search(tmp_path):
    eng, _ = engine_for("residual", 6, tmp_path)
    x = images(2, 9)
    radii = np.array([0.02, 0.1, 0.5])
    curve = eng.curve(x, radii, method="crown_ibp").bounds
    x64 = torch.as_tensor(x, dtype=torch.float64)
    for k, r in enumerate(radii):
        worst = pgd_feature_shift(
            eng.graph.forward,
            x64,
            torch.full((2,), r, dtype=torch.float64),
            cfg=AttackConfig(steps=40, restarts=2),
        )
        assert np.all(worst.numpy() <= curve[:, k])
    # the search's radius is certified, so the curve evaluated there must stay below R_F
    rf = curve[:, 1].copy()
    res = eng.image_radius(x, rf, method="crown_ibp")
    at = eng.curve(x, res.image_radius[:, None], method="crown_ibp").bounds
    assert np.all(at[:, 0] < rf) or np.all(res.image_radius == 0)
