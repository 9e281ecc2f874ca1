"""Almost-orthogonal (AOL) layers (Prach & Lampert, 2022): 1-Lipschitz (ℓ2) Conv2d / Linear by construction.

A free parameter P is rescaled column-wise by D = diag(Σ_j |PᵀP|_ij)^(-1/2), so that ‖P·D‖₂ ≤ 1 (Gershgorin
on (PD)ᵀ(PD)). For a convolution the sum runs over all channel pairs and all kernel shifts,
V = conv2d(Pᵀ, Pᵀ, padding = k - 1); a strided or zero-padded convolution is a restriction of the stride-1
convolution on the whole plane, so the bound holds for it too.

That column rule is the paper's; it is tight only when the columns can be near-orthogonal. A wide layer
(fewer outputs than inputs: the first dense layer of a conv encoder, 3,136 -> 256; a stride-2 conv doubling
the channels) has more columns than dimensions, and the rule shrinks it far below norm 1 (an orthonormal-row
[256, 3136] matrix gets d ≈ 0.26). The same bound on the other side, ‖D'·P‖₂ = ‖Pᵀ·D'‖₂ ≤ 1 with
D' = diag(Σ_j |PPᵀ|_ij)^(-1/2) over the outputs (for a convolution V' = conv2d(P, P, padding = k - 1): all
output-channel pairs and shifts; a stride or zero padding only restricts which outputs exist), keeps such a
layer near norm 1 and needs the smaller Gram. Layer kind "aol-narrow" rescales each layer on its narrower
side (the outputs when there are fewer of them: out·H'·W' < in·H·W); "aol" always rescales the columns.

The rescaling is a torch parametrization of an ordinary ``nn.Conv2d`` / ``nn.Linear``: ``layer.weight`` is the
rescaled weight, so the spectral estimator, BatchNorm folding and ONNX export see plain layers, and
``services.trainer.export.strip_parametrizations`` bakes it into the weights (exported as Conv / Gemm, which
the perturb service's bound engine checks independently).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

LAYER_KINDS = ("plain", "aol", "aol-narrow")  # "aol*": 1-Lipschitz by construction (the rescaling's side)
SIDES = ("columns", "rows")


def aol_conv_scale(kernel: torch.Tensor) -> torch.Tensor:
    """AOL rescaling d [in] of a conv kernel [out, in, k, k]: d_c = (Σ_{c',u} |V_{c,c'}(u)|)^(-1/2),
    V = conv2d(Pᵀ, Pᵀ, padding = k - 1) (the kernel's Gram over all shifts)."""
    k = kernel.shape[-1]
    transposed = kernel.transpose(0, 1)  # [in, out, k, k]
    gram = F.conv2d(transposed, transposed, padding=k - 1)  # [in, in, 2k-1, 2k-1]
    return gram.abs().sum(dim=(1, 2, 3)).clamp_min(1e-12).rsqrt()


def aol_conv_row_scale(kernel: torch.Tensor) -> torch.Tensor:
    """Row-side AOL rescaling d' [out] of a conv kernel [out, in, k, k]:
    d'_o = (Σ_{o',u} |V'_{o,o'}(u)|)^(-1/2), V' = conv2d(P, P, padding = k - 1) (the output channels' Gram
    over all shifts), so ‖D'·conv_P‖₂ ≤ 1."""
    return aol_conv_scale(kernel.transpose(0, 1))  # the column rule of the transposed convolution


def aol_dense_scale(weight: torch.Tensor) -> torch.Tensor:
    """AOL rescaling d [in] of a dense weight [out, in]: d_i = (Σ_j |(PᵀP)_ij|)^(-1/2)."""
    return (weight.T @ weight).abs().sum(dim=1).clamp_min(1e-12).rsqrt()


def aol_dense_row_scale(weight: torch.Tensor) -> torch.Tensor:
    """Row-side AOL rescaling d' [out] of a dense weight [out, in]: d'_i = (Σ_j |(PPᵀ)_ij|)^(-1/2)."""
    return aol_dense_scale(weight.T)


class AOLRescaling(nn.Module):
    """Parametrization of a Conv2d ([out, in, k, k], square kernel) or Linear ([out, in]) weight P: P·D
    (``side="columns"``, the paper's rule) or D'·P (``side="rows"``); operator norm ≤ 1 either way."""

    def __init__(self, side: str = "columns") -> None:
        super().__init__()
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self.side = side

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rows = self.side == "rows"
        if weight.ndim == 4:
            if weight.shape[-1] != weight.shape[-2]:
                raise ValueError(f"AOL needs a square kernel, got {tuple(weight.shape[-2:])}")
            if rows:
                return weight * aol_conv_row_scale(weight)[:, None, None, None]
            return weight * aol_conv_scale(weight)[None, :, None, None]
        if weight.ndim == 2:
            if rows:
                return weight * aol_dense_row_scale(weight)[:, None]
            return weight * aol_dense_scale(weight)[None, :]
        raise ValueError(
            f"AOL rescales conv [out, in, k, k] or dense [out, in] weights, got {tuple(weight.shape)}")


def narrower_side(layer: nn.Module) -> str:
    """"rows" when the layer has fewer outputs than inputs (a conv's per position: out / stride² < in), else
    "columns"."""
    if isinstance(layer, nn.Conv2d):
        stride_h, stride_w = layer.stride
        return "rows" if layer.out_channels < layer.in_channels * stride_h * stride_w else "columns"
    return "rows" if layer.out_features < layer.in_features else "columns"


def make_aol(module: nn.Module, kind: str = "aol") -> nn.Module:
    """Parametrize every Conv2d (groups 1, dilation 1) and Linear inside ``module`` as an AOL layer, in place;
    the raw weights get an orthogonal initialization (AOL's D is then close to the identity). ``kind``: "aol"
    rescales the columns of every layer, "aol-narrow" each layer's narrower side."""
    if kind not in ("aol", "aol-narrow"):
        raise ValueError(f"kind must be 'aol' or 'aol-narrow', got {kind!r}")
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or tuple(layer.dilation) != (1, 1):
                raise ValueError("AOL convolutions need groups 1 and dilation 1")
        elif not isinstance(layer, nn.Linear):
            continue
        if parametrize.is_parametrized(layer, "weight"):
            raise ValueError(f"{layer} is already parametrized")
        with torch.no_grad():
            nn.init.orthogonal_(layer.weight.view(layer.weight.shape[0], -1))
        side = narrower_side(layer) if kind == "aol-narrow" else "columns"
        parametrize.register_parametrization(layer, "weight", AOLRescaling(side))
    return module


__all__ = ["LAYER_KINDS", "SIDES", "AOLRescaling", "aol_conv_row_scale", "aol_conv_scale",
           "aol_dense_row_scale", "aol_dense_scale", "make_aol", "narrower_side"]
