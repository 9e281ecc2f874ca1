"""Tiny encoders for the semantic tests: a conv net with a residual block, and a linear encoder."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reaas.onnx_export import torch_to_onnx
from services.perturb.engine import BoundEngine

SIDE = 8


class _Normalize(nn.Module):
    def forward(self, x):
        return (x - 0.3) / 0.4


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


def conv_net(seed: int) -> nn.Module:
    """images [B, 1, 8, 8] -> [B, 5]: normalize, conv, relu, residual, strided conv, two dense layers."""
    torch.manual_seed(seed)
    return nn.Sequential(
        _Normalize(), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), _Residual(4),
        nn.Conv2d(4, 6, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5),
    ).eval()


def linear_net(seed: int) -> nn.Module:
    """images [B, 1, 8, 8] -> [B, 4]: normalize then one dense layer (exact semantic radii in closed form)."""
    torch.manual_seed(seed)
    return nn.Sequential(_Normalize(), nn.Flatten(), nn.Linear(SIDE * SIDE, 4)).eval()


def engine(net: nn.Module) -> BoundEngine:
    """The bound engine of a torch net (exported to ONNX in memory)."""
    return BoundEngine.from_onnx(torch_to_onnx(net, (1, SIDE, SIDE)))


def images(n: int, seed: int) -> np.ndarray:
    """Random images [n, 1, 8, 8] float32 in [0.1, 0.9]."""
    return (0.1 + 0.8 * np.random.default_rng(seed).random((n, 1, SIDE, SIDE))).astype(np.float32)
