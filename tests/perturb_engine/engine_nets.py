"""Tiny random encoders of the shapes the trainer exports (normalization, conv, BN, residual, pooling)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from onnx_helpers import Residual
from torch import nn

from reaas.onnx_export import torch_to_onnx
from services.perturb.engine import BoundEngine


class Normalize(nn.Module):
    def __init__(self, mean: float = 0.3, std: float = 0.4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean) / self.std


def tiny_net(kind: str, seed: int, side: int = 8, feature_dim: int = 6) -> nn.Module:
    """Small encoder images [B, 1, side, side] -> [B, feature_dim]; kind: plain|bn|residual|pool|linear."""
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(side * side, feature_dim))
    layers: list[nn.Module] = [Normalize(), nn.Conv2d(1, 4, 3, stride=1, padding=1)]
    if kind == "bn":
        layers.append(nn.BatchNorm2d(4))
    layers.append(nn.ReLU())
    if kind == "residual":
        layers.append(Residual(4))
    layers += [nn.Conv2d(4, 6, 4, stride=2, padding=1), nn.ReLU()]
    s = side // 2
    if kind == "pool":
        layers += [nn.AvgPool2d(2), nn.Flatten()]
        s //= 2
    else:
        layers.append(nn.Flatten())
    layers += [nn.Linear(6 * s * s, 16), nn.ReLU(), nn.Linear(16, feature_dim)]
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def export(net: nn.Module, path: Path, side: int = 8) -> Path:
    """Export as the trainer does: input "images" [B, 1, side, side], output "features", dynamic batch."""
    path.write_bytes(torch_to_onnx(net, (1, side, side)))
    return path


def onnx_path(kind: str, seed: int, tmp_path: Path) -> Path:
    """Where ``engine_for`` writes the net's ONNX file (serve it with ``onnx_helpers.ort_features``)."""
    return tmp_path / f"{kind}-{seed}.onnx"


def engine_for(kind: str, seed: int, tmp_path: Path, side: int = 8) -> tuple[BoundEngine, nn.Module]:
    """Export a tiny net to ONNX under tmp_path and load it with the engine."""
    net = tiny_net(kind, seed, side)
    return BoundEngine.from_onnx(export(net, onnx_path(kind, seed, tmp_path), side)), net


def images(n: int, seed: int, side: int = 8) -> np.ndarray:
    """Random images [n, 1, side, side] float32 in [0, 1]."""
    return np.random.default_rng(seed).random((n, 1, side, side)).astype(np.float32)


def assert_bounds_hold(
    eng: BoundEngine,
    x64: torch.Tensor,
    radii: torch.Tensor,
    norm: str,
    points: Callable[[int, float], torch.Tensor],
) -> None:
    """IBP's and CROWN's node intervals over the ball of image i (x64 [B, ...], radii [B]) contain every
    node's value at ``points(i, r)`` [P, ...] (points of that ball), and both output-shift bounds cover
    the largest sampled feature shift."""
    from services.perturb.engine.ball import InputBall
    from services.perturb.engine.crown import crown_intermediate_bounds, output_shift_bounds
    from services.perturb.engine.ibp import interval_bounds

    centers = eng.graph.forward_all(x64)
    f0 = centers[eng.graph.output].reshape(len(x64), -1)
    ball = InputBall(x64, radii, norm, True)
    for name, intervals in (("ibp", interval_bounds), ("crown", crown_intermediate_bounds)):
        bounds = intervals(eng.graph, ball, centers, eng.lipschitz)
        shift = output_shift_bounds(eng.graph, ball, f0, bounds)
        for i in range(len(x64)):
            pts = points(i, float(radii[i]))
            vals = eng.graph.forward_all(pts)
            for k, (lo, hi) in enumerate(bounds):
                assert torch.all(vals[k] >= lo[i : i + 1] - 1e-9), (name, k, eng.graph.nodes[k].name)
                assert torch.all(vals[k] <= hi[i : i + 1] + 1e-9), (name, k, eng.graph.nodes[k].name)
            true_shift = (vals[eng.graph.output].reshape(len(pts), -1) - f0[i]).norm(dim=1).max()
            assert true_shift <= shift.per_feature[i] + 1e-9, name
            assert true_shift <= shift.linear_part[i] + 1e-9, name


def assert_semantic_bounds_hold(eng: BoundEngine, x: np.ndarray, t: np.ndarray, samples: int) -> None:
    """Every method's brightness-and-contrast shift bound at range t[k] covers the feature shift at the box's
    corners and at ``samples`` random parameters θ ∈ [−t_k, t_k]² (image x [C, H, W])."""
    from services.perturb.semantic.composed import ComposedBounds
    from services.perturb.semantic.sp_layer import basis, perturb

    a = basis(x, "brightness_contrast")
    cb = ComposedBounds(eng.graph, x, a)
    f0 = eng.graph.forward(torch.as_tensor(x[None], dtype=torch.float64))[0]
    for method in ("ibp", "crown_ibp", "crown"):
        u = cb.shift_bound(t, method)
        for k, tk in enumerate(t):
            theta = np.random.default_rng(k).uniform(-tk, tk, size=(samples, 2))
            theta[:4] = [[tk, tk], [tk, -tk], [-tk, tk], [-tk, -tk]]
            shift = (eng.graph.forward(torch.as_tensor(perturb(x, a, theta))) - f0).norm(dim=1).max()
            assert float(shift) <= u[k] + 1e-9, method
