"""Almost-orthogonal (AOL) layers (Prach & Lampert, 2022): 1-Lipschitz (ℓ2) Conv2d / Linear by construction.

A free parameter P is rescaled column-wise by D = diag(Σ_j |PᵀP|_ij)^(-1/2), so that ‖P·D‖₂ ≤ 1 (Gershgorin
on (PD)ᵀ(PD)). For a convolution the sum runs over all channel pairs and all kernel shifts,
V = conv2d(Pᵀ, Pᵀ, padding = k - 1); a strided or zero-padded convolution is a restriction of the stride-1
convolution on the whole plane, so the bound holds for it too.

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

LAYER_KINDS = ("plain", "aol")


def aol_conv_scale(kernel: torch.Tensor) -> torch.Tensor:
    """AOL rescaling d [in] of a conv kernel [out, in, k, k]: d_c = (Σ_{c',u} |V_{c,c'}(u)|)^(-1/2),
    V = conv2d(Pᵀ, Pᵀ, padding = k - 1) (the kernel's Gram over all shifts)."""
    k = kernel.shape[-1]
    transposed = kernel.transpose(0, 1)  # [in, out, k, k]
    gram = F.conv2d(transposed, transposed, padding=k - 1)  # [in, in, 2k-1, 2k-1]
    return gram.abs().sum(dim=(1, 2, 3)).clamp_min(1e-12).rsqrt()


def aol_dense_scale(weight: torch.Tensor) -> torch.Tensor:
    """AOL rescaling d [in] of a dense weight [out, in]: d_i = (Σ_j |(PᵀP)_ij|)^(-1/2)."""
    return (weight.T @ weight).abs().sum(dim=1).clamp_min(1e-12).rsqrt()


class AOLRescaling(nn.Module):
    """Parametrization weight P -> P·D of a Conv2d ([out, in, k, k], square kernel) or Linear ([out, in])."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 4:
            if weight.shape[-1] != weight.shape[-2]:
                raise ValueError(f"AOL needs a square kernel, got {tuple(weight.shape[-2:])}")
            return weight * aol_conv_scale(weight)[None, :, None, None]
        if weight.ndim == 2:
            return weight * aol_dense_scale(weight)[None, :]
        raise ValueError(
            f"AOL rescales conv [out, in, k, k] or dense [out, in] weights, got {tuple(weight.shape)}")


def make_aol(module: nn.Module) -> nn.Module:
    """Parametrize every Conv2d (groups 1, dilation 1) and Linear inside ``module`` as an AOL layer, in place;
    the raw weights get an orthogonal initialization (AOL's D is then close to the identity)."""
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
        parametrize.register_parametrization(layer, "weight", AOLRescaling())
    return module


__all__ = ["LAYER_KINDS", "AOLRescaling", "aol_conv_scale", "aol_dense_scale", "make_aol"]
