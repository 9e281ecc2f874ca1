"""IBP / CROWN bounds and BC radii: sampling, closed forms, a torch CROWN, the server engine, PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_client.base_certify import BCConfig, certify_feature_radius
from edge_client.bound_propagation import crown_bounds, ibp_bounds, margin_lower_bound, margin_spec
from edge_client.mlp import MLP, init_mlp


def _mlp(seed: int, d: int = 10, widths=(20, 20), classes: int = 4) -> MLP:
    rng = np.random.default_rng(seed)
    model = init_mlp(d, widths, classes, rng.standard_normal(d), 3.0, rng)
    biases = tuple((b + 0.1 * rng.standard_normal(b.shape)).astype(np.float32) for b in model.biases)
    return MLP(model.weights, biases, model.center, model.input_scale, model.spread)


def _ball_samples(rng, center, radius, norm, num):
    d = center.shape[-1]
    if norm == "l2":
        direction = rng.standard_normal((num, d))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        scale = radius * rng.random((num, 1)) ** (1 / d)
        scale[: num // 4] = radius  # plenty on the sphere
        return center + direction * scale
    signs = rng.choice([-1.0, 1.0], size=(num, d))
    points = center + radius * rng.uniform(-1, 1, (num, d))
    points[: num // 4] = center + radius * signs[: num // 4]  # corners
    return points


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_contain_sampled_outputs(norm, seed):
    model = _mlp(seed)
    layers = model.folded_layers()
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 10)) * 3
    radius = 0.5 if norm == "l2" else 0.15
    bounds = {"ibp": ibp_bounds(layers, centers, radius, norm),
              "crown": crown_bounds(layers, centers, radius, norm),
              "crown-parallel": crown_bounds(layers, centers, radius, norm, relaxation="parallel"),
              "crown+ibp": crown_bounds(layers, centers, radius, norm, intersect_ibp=True)}
    for b in range(3):
        outputs = model.logits(_ball_samples(rng, centers[b], radius, norm, 4000))
        for name, (lower, upper) in bounds.items():
            assert np.all(outputs >= lower[b] - 1e-9), name
            assert np.all(outputs <= upper[b] + 1e-9), name
    lo_i, up_i = bounds["crown+ibp"]
    assert np.all(lo_i >= bounds["crown"][0] - 1e-12) and np.all(lo_i >= bounds["ibp"][0] - 1e-12)
    assert np.all(up_i <= bounds["crown"][1] + 1e-12) and np.all(up_i <= bounds["ibp"][1] + 1e-12)


def test_linear_model_bounds_are_exact():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 5)), rng.standard_normal(3)
    center = rng.standard_normal((2, 5))
    for norm, dual in [("l2", np.linalg.norm(w, axis=1)), ("linf", np.abs(w).sum(axis=1))]:
        for fn in (ibp_bounds, crown_bounds):
            lower, upper = fn([(w, b)], center, 0.3, norm)
            np.testing.assert_allclose(lower, center @ w.T + b - 0.3 * dual, atol=1e-12)
            np.testing.assert_allclose(upper, center @ w.T + b + 0.3 * dual, atol=1e-12)


def _torch_crown(layers, center, radius, norm):
    """Independent reference: per-ball loop, explicit diagonal relaxation matrices, torch float64."""
    ws = [torch.tensor(w, dtype=torch.float64) for w, _ in layers]
    bs = [torch.tensor(b, dtype=torch.float64) for _, b in layers]
    q = 2 if norm == "l2" else 1
    lowers, uppers = [], []
    for x0 in torch.tensor(center, dtype=torch.float64):
        pre = []

        def bound(k, x0=x0, pre=pre):
            # linear bounds of layer k's pre-activation as functions of the input: Lambda x + const
            lam_l, lam_u = ws[k].clone(), ws[k].clone()
            con_l, con_u = bs[k].clone(), bs[k].clone()
            for j in range(k - 1, -1, -1):
                lo, hi = pre[j]
                unstable = (lo < 0) & (hi > 0)
                su = torch.where(lo >= 0, 1.0, torch.where(unstable, hi / (hi - lo), 0.0)).double()
                tu = torch.where(unstable, -hi * lo / (hi - lo), 0.0).double()
                sl = torch.where(lo >= 0, 1.0, torch.where(unstable & (hi > -lo), 1.0, 0.0)).double()
                d_u, d_l = torch.diag(su), torch.diag(sl)
                lp, ln = lam_l.clamp(min=0), lam_l.clamp(max=0)
                up, un = lam_u.clamp(min=0), lam_u.clamp(max=0)
                con_l = con_l + ln @ tu
                con_u = con_u + up @ tu
                lam_l = lp @ d_l + ln @ d_u
                lam_u = up @ d_u + un @ d_l
                con_l, con_u = con_l + lam_l @ bs[j], con_u + lam_u @ bs[j]
                lam_l, lam_u = lam_l @ ws[j], lam_u @ ws[j]
            lo = lam_l @ x0 + con_l - radius * torch.linalg.vector_norm(lam_l, ord=q, dim=1)
            hi = lam_u @ x0 + con_u + radius * torch.linalg.vector_norm(lam_u, ord=q, dim=1)
            return lo, hi

        for k in range(len(layers) - 1):
            pre.append(bound(k))
        lo, hi = bound(len(layers) - 1)
        lowers.append(lo.numpy())
        uppers.append(hi.numpy())
    return np.stack(lowers), np.stack(uppers)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_crown_matches_independent_torch_reference(norm):
    model = _mlp(3, d=8, widths=(16, 12, 16), classes=5)
    layers = model.folded_layers()
    centers = np.random.default_rng(3).standard_normal((4, 8)) * 3
    radius = 0.4 if norm == "l2" else 0.1
    expected = _torch_crown(layers, centers, radius, norm)
    got = crown_bounds(layers, centers, radius, norm)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("relaxation", ["adaptive", "parallel"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_crown_matches_the_server_bound_engine(norm, relaxation):
    """Same MLP through the server's BoundEngine (ONNX graph, torch): per-output CROWN bounds agree."""
    engine_mod = pytest.importorskip("services.perturb.engine")
    import dataclasses

    from services.perturb.engine import crown as server_crown
    from services.perturb.engine.ball import InputBall

    names = {f.name for f in dataclasses.fields(server_crown.CrownConfig)}
    if relaxation == "parallel" and "intermediate_relaxation" not in names:
        pytest.skip("this engine has no parallel relaxation")
    crown_config = server_crown.CrownConfig(**({"intermediate_relaxation": relaxation}
                                               if "intermediate_relaxation" in names else {}))
    model = _mlp(4, d=8, widths=(16, 16), classes=5)
    modules: list[torch.nn.Module] = [torch.nn.Flatten()]
    for i, (w, b) in enumerate(model.folded_layers()):
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        linear.weight.data = torch.tensor(w, dtype=torch.float32)
        linear.bias.data = torch.tensor(b, dtype=torch.float32)
        modules += [linear] + ([torch.nn.ReLU()] if i < len(model.weights) - 1 else [])
    torch_model = torch.nn.Sequential(*modules)
    # compare on the float32 weights both sides actually use
    layers = [(lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy())
              for lin in torch_model if isinstance(lin, torch.nn.Linear)]
    from reaas.onnx_export import torch_to_onnx

    engine = engine_mod.BoundEngine.from_onnx(torch_to_onnx(torch_model, (1, 1, 8)))
    centers = np.random.default_rng(4).random((3, 8))
    radius = 0.3 if norm == "l2" else 0.05
    x64 = torch.tensor(centers, dtype=torch.float64).reshape(3, 1, 1, 8)
    node_values = engine.graph.forward_all(x64)
    ball = InputBall(x64, torch.full((3,), radius, dtype=torch.float64), norm, False)
    bounds = server_crown.crown_intermediate_bounds(engine.graph, ball, node_values, engine.lipschitz,
                                                    crown_config)
    out = engine.graph.output
    eye = torch.eye(5, dtype=torch.float64)
    if relaxation == "parallel":
        a_in, c_lo, c_hi = server_crown.backward_parallel_bounds(
            engine.graph, out, eye.reshape(1, 5, 5).expand(3, -1, -1), bounds)
        crown_upper = ball.concretize_upper(a_in, c_hi)
        crown_lower = -ball.concretize_upper(-a_in, -c_lo)
    else:
        a = torch.cat([eye, -eye]).reshape(1, 10, 5).expand(3, -1, -1)
        a_in, c = server_crown.backward_linear_bounds(engine.graph, out, a, bounds)
        both = ball.concretize_upper(a_in, c)
        crown_upper, crown_lower = both[:, :5], -both[:, 5:]
    ibp_lo, ibp_hi = (t.reshape(3, 5) for t in bounds[out])
    server_upper = torch.minimum(crown_upper, ibp_hi).numpy()
    server_lower = torch.maximum(crown_lower, ibp_lo).numpy()
    lower, upper = crown_bounds(layers, centers, radius, norm, intersect_ibp=True, relaxation=relaxation)
    np.testing.assert_allclose(lower, server_lower, atol=1e-5, rtol=0)
    np.testing.assert_allclose(upper, server_upper, atol=1e-5, rtol=0)


def _pgd_min_margin(model: MLP, z0: np.ndarray, label: int, radius: float, norm: str, steps: int = 60,
                    restarts: int = 4, seed: int = 0) -> float:
    """Smallest margin g_y - max_{j!=y} g_j found by PGD within the feature ball."""
    layers = [(torch.tensor(w), torch.tensor(b)) for w, b in model.folded_layers()]
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.tensor(z0, dtype=torch.float64)
    best = np.inf
    for _ in range(restarts):
        delta = (torch.rand(x0.shape, generator=gen, dtype=torch.float64) * 2 - 1) * radius / np.sqrt(len(z0))
        for _ in range(steps):
            delta.requires_grad_(True)
            h = x0 + delta
            for i, (w, b) in enumerate(layers):
                h = h @ w.T + b
                if i < len(layers) - 1:
                    h = torch.relu(h)
            others = torch.cat([h[:label], h[label + 1:]])
            margin = h[label] - others.max()
            best = min(best, float(margin.detach()))
            (grad,) = torch.autograd.grad(margin, delta)
            with torch.no_grad():
                if norm == "l2":
                    delta = delta - 0.25 * radius * grad / (grad.norm() + 1e-12)
                    delta = delta * min(1.0, radius / (float(delta.norm()) + 1e-12))
                else:
                    delta = (delta - 0.25 * radius * grad.sign()).clamp(-radius, radius)
        with torch.no_grad():
            h = x0 + delta
            for i, (w, b) in enumerate(layers):
                h = h @ w.T + b
                if i < len(layers) - 1:
                    h = torch.relu(h)
            best = min(best, float(h[label] - torch.cat([h[:label], h[label + 1:]]).max()))
    return best


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bc_radius_is_sound_under_pgd(method, norm):
    model = _mlp(5)
    rng = np.random.default_rng(5)
    features = rng.standard_normal((6, 10)) * 3
    predictions, radii = certify_feature_radius(model, features, BCConfig(method=method, norm=norm))
    assert np.all(radii >= 0) and np.any(radii > 0)
    # the attack is strong enough to matter: it flips every input at 4x its (larger) CROWN radius
    _, crown_radii = certify_feature_radius(model, features, BCConfig(method="crown", norm=norm))
    assert all(_pgd_min_margin(model, z, int(y), 4 * float(r), norm) < 0
               for z, y, r in zip(features, predictions, crown_radii, strict=True) if r > 0)
    for z, y, r in zip(features, predictions, radii, strict=True):
        if r > 0:
            assert _pgd_min_margin(model, z, int(y), float(r), norm) > 0
            # the bound at R_F itself is verified (lower end of the bisection)
            assert margin_lower_bound(model.folded_layers(), z[None], np.array([r]), np.array([y]),
                                      norm, method)[0] > 0


def test_bc_radius_on_a_linear_classifier_is_the_exact_distance_from_below():
    rng = np.random.default_rng(6)
    w, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    model = MLP((w.astype(np.float32),), (b.astype(np.float32),), np.zeros(6, np.float32), 1.0, 2.0)
    features = rng.standard_normal((5, 6))
    predictions, radii = certify_feature_radius(model, features, BCConfig(method="crown"))
    w64, b64 = model.folded_layers()[0]
    for z, y, r in zip(features, predictions, radii, strict=True):
        logits = w64 @ z + b64
        exact = min((logits[y] - logits[j]) / np.linalg.norm(w64[y] - w64[j]) for j in range(4) if j != y)
        assert r <= exact and r >= exact * (1 - 2e-3)


def test_bc_gives_zero_on_a_tie_and_margin_spec_rows():
    spec = margin_spec(np.array([2]), 4)
    np.testing.assert_array_equal(spec[0], [[-1, 0, 1, 0], [0, -1, 1, 0], [0, 0, 1, -1]])
    w = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    model = MLP((w,), (np.zeros(2, np.float32),), np.zeros(2, np.float32), 1.0, 1.0)
    _, radii = certify_feature_radius(model, np.array([[1.0, 1.0]]))
    assert radii[0] == 0.0
