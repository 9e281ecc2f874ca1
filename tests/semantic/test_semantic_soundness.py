"""Semantic certificates are sound: a dense grid and an attack over the parameter never reach R_F."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from semantic_nets import SIDE, conv_net, engine, images, linear_net

from services.perturb.semantic import SemanticCertifier
from services.perturb.semantic.composed import ComposedBounds, compose
from services.perturb.semantic.forward import forward_bounds
from services.perturb.semantic.sp_layer import basis, l2_per_unit, perturb

D = SIDE * SIDE


def _shift(net, x0: np.ndarray, a: np.ndarray, thetas: np.ndarray) -> np.ndarray:
    """‖f(x0 + Aθ) − f(x0)‖₂ [M] for θ [M, k] through the torch net (float64)."""
    net64 = net.double()
    with torch.no_grad():
        f0 = net64(torch.as_tensor(x0[None], dtype=torch.float64))
        fx = net64(torch.as_tensor(perturb(x0, a, thetas)))
    return (fx - f0).norm(dim=1).numpy()


def _attack_1d(net, x0, a, t: float) -> float:
    """Largest shift found over |θ| ≤ t: a 801-point grid, then bounded scalar refinement around its best."""
    grid = np.linspace(-t, t, 801)
    shifts = _shift(net, x0, a, grid[:, None])
    best = grid[np.argmax(shifts)]
    step = 2 * t / 800
    res = minimize_scalar(
        lambda th: -_shift(net, x0, a, np.array([[th]]))[0],
        bounds=(max(-t, best - step), min(t, best + step)), method="bounded",
    )
    return float(max(shifts.max(), -res.fun))


def _attack_2d(net, x0, a, t: float, steps: int = 60) -> float:
    """Largest shift over the box |θ_j| ≤ t: a 41x41 grid, then PGD (sign steps) from the 8 best points."""
    g = np.linspace(-t, t, 41)
    grid = np.array(np.meshgrid(g, g, indexing="ij")).reshape(2, -1).T
    shifts = _shift(net, x0, a, grid)
    theta = torch.tensor(grid[np.argsort(shifts)[-8:]], requires_grad=True)
    net64, at = net.double(), torch.as_tensor(a)
    f0 = net64(torch.as_tensor(x0[None], dtype=torch.float64)).detach()
    best = shifts.max()
    for _ in range(steps):
        x = torch.as_tensor(x0, dtype=torch.float64)[None] + torch.tensordot(theta, at, dims=1)
        loss = (net64(x) - f0).norm(dim=1)
        best = max(best, float(loss.detach().max()))
        (grad,) = torch.autograd.grad(loss.sum(), theta)
        with torch.no_grad():
            theta += 0.02 * t * grad.sign()
            theta.clamp_(-t, t)
    return best


@pytest.mark.parametrize("method", ["ibp", "crown_ibp", "crown"])
@pytest.mark.parametrize("kind", ["brightness", "contrast"])
def test_one_parameter_certificates_are_sound(kind, method):
    net = conv_net(0)
    x = images(3, 1)
    eng = engine(net)
    rf = np.array([0.05, 0.2, 0.6])
    res = SemanticCertifier(eng).certify(x, rf, kind, method=method)
    for i in range(len(x)):
        a = basis(x[i], kind)
        t = res.parameter_radius[i]
        assert t > 0
        assert _attack_1d(net, x[i], a, t) < rf[i]
        assert t >= res.l2_equivalent[i]
    values = res.brightness if kind == "brightness" else res.contrast
    np.testing.assert_array_equal(values, res.parameter_radius)


def test_combined_certificate_is_sound():
    net = conv_net(1)
    x = images(2, 2)
    rf = np.array([0.1, 0.4])
    res = SemanticCertifier(engine(net)).certify(x, rf, "brightness_contrast", contrast_per_brightness=2.0)
    np.testing.assert_allclose(res.contrast, 2.0 * res.brightness)
    for i in range(len(x)):
        a = basis(x[i], "brightness_contrast", 2.0)
        assert res.parameter_radius[i] > 0
        assert _attack_2d(net, x[i], a, res.parameter_radius[i]) < rf[i]


def test_never_worse_than_the_l2_conversion():
    """B ≥ R/√d and C ≥ R/‖x‖₂ for the ℓ2 radius R the engine certifies (CROWN-IBP, unclipped)."""
    net = conv_net(2)
    x = images(3, 3)
    eng = engine(net)
    rf = np.array([0.1, 0.3, 1.0])
    radius = eng.image_radius(x, rf, method="crown_ibp", clip_to_pixel_box=False).image_radius
    cert = SemanticCertifier(eng)
    b = cert.certify(x, rf, "brightness").brightness
    c = cert.certify(x, rf, "contrast").contrast
    assert np.all(b >= radius / np.sqrt(D))
    assert np.all(c >= radius / np.linalg.norm(x.reshape(3, -1), axis=1))
    assert np.all(b > 2 * radius / np.sqrt(D))  # and far larger than it on this net


def test_linear_encoder_matches_the_closed_form():
    """f linear: f(x + b·1) − f(x) = b·g, so the exact B is R_F/‖g‖₂; the certificate is ≤ and within 0.5%."""
    net = linear_net(0)
    x = images(2, 4)
    rf = np.array([0.3, 1.5])
    b = SemanticCertifier(engine(net)).certify(x, rf, "brightness", method="crown").brightness
    g = _shift(net, x[0], basis(x[0], "brightness"), np.array([[1.0]]))[0]
    exact = rf / g
    assert np.all(b <= exact)
    assert np.all(b >= exact * 0.995)


def test_zero_feature_radius_certifies_nothing():
    res = SemanticCertifier(engine(conv_net(0))).certify(images(2, 0), np.array([0.0, 0.1]), "contrast")
    assert res.parameter_radius[0] == 0 and res.parameter_radius[1] > 0


def test_composed_graph_matches_the_encoder():
    net = conv_net(3)
    eng = engine(net)
    x0 = images(1, 5)[0]
    a = basis(x0, "brightness_contrast", 0.5)
    graph = compose(eng.graph, x0, a)
    thetas = np.random.default_rng(0).uniform(-0.3, 0.3, size=(7, 2))
    got = graph.forward(torch.as_tensor(thetas)).numpy()
    want = eng.graph.forward(torch.as_tensor(perturb(x0, a, thetas))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_forward_bounds_contain_sampled_node_values():
    net = conv_net(4)
    eng = engine(net)
    x0 = images(1, 6)[0]
    cb = ComposedBounds(eng.graph, x0, basis(x0, "brightness_contrast"), pieces=1)
    center, half = torch.tensor([[0.05, -0.1]], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64)
    inf = [(torch.full((1, *n.shape), -np.inf), torch.full((1, *n.shape), np.inf)) for n in cb.graph.nodes]
    bounds = forward_bounds(cb.graph, center, half, inf)
    thetas = center + half * (2 * torch.rand(500, 2, generator=torch.Generator().manual_seed(0)) - 1)
    for (lo, hi), value in zip(bounds, cb.graph.forward_all(thetas), strict=True):
        assert torch.all(value >= lo - 1e-9) and torch.all(value <= hi + 1e-9)


def test_l2_scale_of_the_perturbation_sets():
    x0 = images(1, 7)[0]
    assert l2_per_unit(basis(x0, "brightness")) == pytest.approx(np.sqrt(D))
    assert l2_per_unit(basis(x0, "contrast")) == pytest.approx(np.linalg.norm(x0))
    both = np.sqrt(D + np.sum(x0**2) + 2 * np.sum(x0))
    assert l2_per_unit(basis(x0, "brightness_contrast")) == pytest.approx(both)


def test_bad_arguments_are_rejected():
    cert = SemanticCertifier(engine(conv_net(0)))
    with pytest.raises(ValueError):
        cert.certify(images(1, 0), np.array([0.1]), "hue")
    with pytest.raises(ValueError):
        cert.certify(images(1, 0), np.array([0.1]), "brightness", method="local_lipschitz")
    with pytest.raises(ValueError):
        cert.certify(images(2, 0), np.array([0.1]), "brightness")


@pytest.mark.parametrize("kind", ["brightness", "contrast", "brightness_contrast"])
def test_shift_bounds_dominate_the_attack_at_every_range(kind):
    """U(t) ≥ the largest shift a grid + attack finds, from tiny to large ranges, for every method."""
    net = conv_net(5)
    eng = engine(net)
    x0 = images(1, 8)[0]
    a = basis(x0, kind)
    ts = np.array([0.01, 0.1, 0.4, 1.5])
    attack = _attack_2d if a.shape[0] == 2 else _attack_1d
    found = np.array([attack(net, x0, a, t) for t in ts])
    for pieces in (1, 3):
        cb = ComposedBounds(eng.graph, x0, a, pieces=pieces)
        for method in ("ibp", "crown_ibp", "crown"):
            assert np.all(cb.shift_bound(ts, method) >= found * (1 - 1e-9)), (method, pieces)


def test_black_image_contrast_is_unbounded_but_finite():
    """c·0 = 0: every contrast is certified; the answer is the search ceiling, not inf."""
    res = SemanticCertifier(engine(conv_net(0))).certify(np.zeros((1, 1, SIDE, SIDE), np.float32),
                                                         np.array([0.1]), "contrast")
    assert np.isfinite(res.contrast[0]) and res.contrast[0] >= 1e5
