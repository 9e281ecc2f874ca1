"""A second, naive implementation (explicit matrices, per-neuron loops in numpy) agrees with the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_nets import engine_for, images

from services.perturb.engine.ball import InputBall
from services.perturb.engine.crown import CrownConfig, crown_intermediate_bounds, output_shift_bounds
from services.perturb.engine.ibp import interval_bounds
from services.perturb.engine.lipschitz import LipschitzInfo
from services.perturb.engine.operator_norms import explicit_matrix


def _layers(graph):
    """Sequential graph -> [(W [out, in], b [out])] with a ReLU between consecutive entries."""
    out, pending = [], None
    for n in graph.nodes[1:]:
        if n.kind == "affine":
            w, b = explicit_matrix(n.lmap).numpy(), n.bias.reshape(-1).numpy()
            if pending is not None:  # affine after affine (no ReLU between): compose
                w, b = w @ pending[0], w @ pending[1] + b
            pending = (w, b)
        elif n.kind == "relu":
            out.append(pending)
            pending = None
        else:
            raise AssertionError("sequential nets only")
    out.append(pending)
    return out


def _relax(lo, hi):
    sl, su, bu = np.zeros_like(lo), np.zeros_like(lo), np.zeros_like(lo)
    for t in range(lo.size):
        if lo[t] >= 0:
            sl[t] = su[t] = 1.0
        elif hi[t] > 0:
            su[t] = hi[t] / (hi[t] - lo[t])
            bu[t] = -su[t] * lo[t]
            sl[t] = 1.0 if hi[t] > -lo[t] else 0.0
    return sl, su, bu


def _backward(layers, k, lam, const, bounds, parallel=False):
    """Upper bound of ``lam · a_{k-1} + const`` as (Λ over x, const), back through layers k-1 .. 0."""
    for j in range(k - 1, -1, -1):
        sl, su, bu = _relax(*bounds[j])
        sl = su if parallel else sl
        const = const + np.sum(np.maximum(lam, 0) * bu)
        lam = np.maximum(lam, 0) * su + np.minimum(lam, 0) * sl
        w, b = layers[j]
        const = const + lam @ b
        lam = lam @ w
    return lam, const


def _concretize(lam, const, x0, r):
    ball = lam @ x0 + const + r * np.linalg.norm(lam)
    box = lam @ x0 + const + r * np.abs(lam).sum()
    return min(ball, box)


def naive_crown(layers, x0, r, full: bool, parallel: bool):
    """Bounds of every pre-activation; full=True bounds intermediate layers by CROWN as well."""
    bounds = []
    for k, (w, b) in enumerate(layers):
        if k == 0:
            c = w @ x0 + b
            d = np.minimum(r * np.linalg.norm(w, axis=1), r * np.abs(w).sum(1))
            bounds.append((c - d, c + d))
            continue
        lo_a, hi_a = np.maximum(bounds[-1][0], 0), np.maximum(bounds[-1][1], 0)
        mid, rad = (lo_a + hi_a) / 2, (hi_a - lo_a) / 2
        lo, hi = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        if full or k == len(layers) - 1:
            par = parallel
            for i in range(w.shape[0]):
                lam_u, c_u = _backward(layers, k, w[i].copy(), b[i], bounds, par)
                lam_l, c_l = _backward(layers, k, -w[i], -b[i], bounds, par)
                hi[i] = min(hi[i], _concretize(lam_u, c_u, x0, r))
                lo[i] = max(lo[i], -_concretize(lam_l, c_l, x0, r))
        bounds.append((lo, hi))
    return bounds


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("relaxation", ["parallel", "adaptive"])
@pytest.mark.parametrize("seed", [0, 1])
def test_engine_crown_matches_naive(full, relaxation, seed, tmp_path):
    eng, _ = engine_for("plain", seed, tmp_path)
    layers = _layers(eng.graph)
    x = images(1, seed)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    r = 0.15
    ball = InputBall(x64, torch.tensor([r], dtype=torch.float64), "l2", clip_to_pixel_box=False)
    no_lip = LipschitzInfo(
        [float("inf")] * len(eng.graph.nodes),
        [torch.full(n.shape, float("inf"), dtype=torch.float64) for n in eng.graph.nodes],
        eng.graph.output,
    )
    centers = eng.graph.forward_all(x64)
    if full:
        cfg = CrownConfig(only_unstable=False, intermediate_relaxation=relaxation)
        bounds = crown_intermediate_bounds(eng.graph, ball, centers, no_lip, cfg)
    else:
        bounds = interval_bounds(eng.graph, ball, centers, no_lip)
    f0 = centers[eng.graph.output].reshape(1, -1)
    shift = output_shift_bounds(eng.graph, ball, f0, bounds, cfg=CrownConfig(output_relaxation=relaxation))

    ref = naive_crown(layers, x.reshape(-1).astype(np.float64), r, full, relaxation == "parallel")
    pre = [j for j, n in enumerate(eng.graph.nodes) if n.kind == "relu"]
    for j, (lo, hi) in zip(pre, ref[:-1], strict=True):
        src = eng.graph.nodes[j].inputs[0]
        np.testing.assert_allclose(bounds[src][0].reshape(-1).numpy(), lo, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(bounds[src][1].reshape(-1).numpy(), hi, rtol=1e-9, atol=1e-9)
    f0n = f0[0].numpy()
    lo, hi = ref[-1]
    per_feature = np.linalg.norm(np.maximum(np.maximum(hi - f0n, f0n - lo), 0))
    assert float(shift.per_feature[0]) == pytest.approx(per_feature, rel=1e-9)
    assert float(shift.per_feature[0]) > 0
