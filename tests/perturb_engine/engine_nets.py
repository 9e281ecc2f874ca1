"""Tiny random encoders of the shapes the trainer exports (normalization, conv, BN, residual, pooling)."""

from __future__ import annotations

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
