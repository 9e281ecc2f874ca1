"""Training-time operator-norm estimates (power iteration) and the spectral-norm penalties of REaaS §4.

Power iteration estimates each layer's operator norm from *below*; it drives the penalty only.
Certified upper bounds are the bound engine's (``services/perturb/engine/lipschitz.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from services.trainer.encoders import ConvEncoder, Normalize

PENALTY_FORMS = ("none", "log", "scale_invariant")


def _normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm().clamp_min(eps)


def _conv_output_padding(in_hw: tuple[int, int], out_hw: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int]:
    """Output padding that makes ``conv_transpose2d`` return the conv's input size."""
    pads = []
    for i in range(2):
        full = (out_hw[i] - 1) * conv.stride[i] - 2 * conv.padding[i] + conv.kernel_size[i]
        pads.append(in_hw[i] - full)
    return pads[0], pads[1]


def conv_power_step(
    weight: torch.Tensor,
    u: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    output_padding: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step for the (bias-free) conv operator; u: [1, C_out, H', W'] -> (u, v)."""
    v = _normalize(
        F.conv_transpose2d(u, weight, stride=stride, padding=padding, output_padding=output_padding)
    )
    u = _normalize(F.conv2d(v, weight, stride=stride, padding=padding))
    return u, v


def conv_operator_norm(
    weight: torch.Tensor,
    in_shape: tuple[int, int, int],
    stride: int = 1,
    padding: int = 1,
    n_iter: int = 200,
    seed: int = 0,
) -> float:
    """Power-iteration estimate (from below) of a zero-padded conv's ℓ2 operator norm; in_shape (C, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    v = _normalize(torch.randn((1, *in_shape), generator=gen, dtype=weight.dtype))
    u = _normalize(F.conv2d(v, weight, stride=stride, padding=padding))
    conv = nn.Conv2d(in_shape[0], weight.shape[0], weight.shape[-1], stride=stride, padding=padding)
    op = _conv_output_padding(tuple(in_shape[1:]), tuple(u.shape[-2:]), conv)
    with torch.no_grad():
        for _ in range(n_iter):
            u, v = conv_power_step(weight, u, conv.stride, conv.padding, op)
        return float((u * F.conv2d(v, weight, stride=stride, padding=padding)).sum())


class SpectralEstimator(nn.Module):
    """Persistent power-iteration vectors for each layer of a ``ConvEncoder``; returns log-norms [n_layers].

    Batch-norm layers (if any) count as diagonal maps with norm max |γ| / sqrt(running_var + eps).
    The estimator owns only buffers; the encoder's weights stay where they are.
    """

    def __init__(self, encoder: ConvEncoder, n_iter: int = 1, warmup_iter: int = 30, seed: int = 0) -> None:
        super().__init__()
        self.n_iter = n_iter
        self._layers = encoder.linear_layers()  # plain list: not registered as submodules
        shapes = _trace_input_shapes(encoder, self._layers)
        gen = torch.Generator().manual_seed(seed)
        self._output_padding: dict[int, tuple[int, int]] = {}
        for i, layer in enumerate(self._layers):
            if isinstance(layer, nn.Conv2d):
                in_shape, out_shape = shapes[i]
                u = _normalize(torch.randn((1, *out_shape[1:]), generator=gen))
                self._output_padding[i] = _conv_output_padding(in_shape[-2:], out_shape[-2:], layer)
                self.register_buffer(f"u{i}", u.to(layer.weight))
            elif isinstance(layer, nn.Linear):
                u = _normalize(torch.randn(layer.out_features, generator=gen))
                self.register_buffer(f"u{i}", u.to(layer.weight))
        self.power_iterate(warmup_iter)

    @torch.no_grad()
    def power_iterate(self, n_iter: int) -> None:
        """Advance every layer's persistent vector by ``n_iter`` steps."""
        for i, layer in enumerate(self._layers):
            if not hasattr(self, f"u{i}"):
                continue
            u = getattr(self, f"u{i}")
            for _ in range(n_iter):
                if isinstance(layer, nn.Conv2d):
                    u, _ = conv_power_step(
                        layer.weight, u, layer.stride, layer.padding, self._output_padding[i]
                    )
                else:
                    u = _normalize(layer.weight @ _normalize(layer.weight.T @ u))
            getattr(self, f"u{i}").copy_(u)

    def log_norms(self) -> torch.Tensor:
        """Differentiable log operator-norm estimates [n_layers], after ``n_iter`` power steps."""
        if self.training:
            self.power_iterate(self.n_iter)
        out = []
        for i, layer in enumerate(self._layers):
            if isinstance(layer, Normalize):
                out.append(-torch.log(layer.std.abs()))
            elif isinstance(layer, nn.BatchNorm2d):
                scale = layer.weight.abs() / torch.sqrt(layer.running_var + layer.eps)
                out.append(torch.log(scale.max()))
            elif isinstance(layer, nn.Conv2d):
                u = getattr(self, f"u{i}")
                v = _normalize(
                    F.conv_transpose2d(
                        u,
                        layer.weight,
                        stride=layer.stride,
                        padding=layer.padding,
                        output_padding=self._output_padding[i],
                    )
                ).detach()
                sigma = (u * F.conv2d(v, layer.weight, stride=layer.stride, padding=layer.padding)).sum()
                out.append(torch.log(sigma.clamp_min(1e-12)))
            else:
                u = getattr(self, f"u{i}")
                v = _normalize(layer.weight.T @ u).detach()
                out.append(torch.log((u @ (layer.weight @ v)).clamp_min(1e-12)))
        return torch.stack([o.reshape(()) for o in out])


def _trace_input_shapes(encoder: nn.Module, layers: list[nn.Module]) -> list[tuple[tuple, tuple]]:
    """(input shape, output shape) of each layer for a single image."""
    shapes: dict[int, tuple[tuple, tuple]] = {}
    hooks = [
        layer.register_forward_hook(
            lambda m, a, o, i=i: shapes.__setitem__(i, (tuple(a[0].shape), tuple(o.shape)))
        )
        for i, layer in enumerate(layers)
    ]
    cfg = encoder.config
    p = next(encoder.parameters())
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        encoder(
            torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, dtype=p.dtype, device=p.device)
        )
    encoder.train(was_training)
    for h in hooks:
        h.remove()
    return [shapes[i] for i in range(len(layers))]


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """RMS ℓ2 distance of features [B, D] to their mean: sqrt(mean_i ‖f_i − mean f‖²).

    The torch twin of ``edge_client.mlp.feature_spread`` (numpy, float): the scale-invariant penalty
    differentiates through log S_batch, so this one stays a differentiable tensor on the features' device.
    """
    centered = features - features.mean(dim=0, keepdim=True)
    return centered.pow(2).sum(dim=1).mean().clamp_min(1e-12).sqrt()


def log_product_penalty(log_norms: torch.Tensor, lam: float) -> torch.Tensor:
    """Literal REaaS penalty in log space: λ · Σ_j log‖T^j‖ (= λ · log Π_j ‖T^j‖)."""
    return lam * log_norms.sum()


def scale_invariant_penalty(log_norms: torch.Tensor, features: torch.Tensor, lam: float) -> torch.Tensor:
    """λ · (Σ_j log‖T^j‖ − log S_batch), S_batch = RMS spread of the batch's features [B, D]."""
    return lam * (log_norms.sum() - torch.log(feature_spread(features)))


def spectral_penalty(form: str, log_norms: torch.Tensor, features: torch.Tensor, lam: float) -> torch.Tensor:
    """Dispatch on the penalty form: 'none', 'log' (literal) or 'scale_invariant'."""
    if form == "none" or lam == 0:
        return torch.zeros((), dtype=features.dtype, device=features.device)
    if form == "log":
        return log_product_penalty(log_norms, lam)
    if form == "scale_invariant":
        return scale_invariant_penalty(log_norms, features, lam)
    raise ValueError(f"unknown penalty form {form!r}; expected one of {PENALTY_FORMS}")


def log_lipschitz_estimate(log_norms: torch.Tensor) -> float:
    """Power-iteration estimate of log Π‖T^j‖ (a lower estimate of the product bound)."""
    return float(log_norms.sum().detach())


__all__ = [
    "PENALTY_FORMS",
    "SpectralEstimator",
    "conv_operator_norm",
    "feature_spread",
    "log_product_penalty",
    "scale_invariant_penalty",
    "spectral_penalty",
    "log_lipschitz_estimate",
]
