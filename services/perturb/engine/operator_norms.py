"""Certified upper bounds on the ℓ2 operator norm of linear maps, and power-iteration lower estimates.

A zero-padded conv equals (rows of) a circular conv on a torus big enough that nothing wraps
around; the circular conv's norm is the largest singular value of the kernel's 2-D DFT over all
frequencies (Sedghi, Gupta & Long 2019); a strided circular conv is a stride-1 one on phase-split
inputs (polyphase), so striding is bounded exactly, not by the stride-1 norm. Dense maps use an
exact SVD. MaxMin's pairing maps have closed forms: ‖diff‖ = ‖split‖ = √2 (each is a direct sum of the
1 x 2 blocks [1, −1] or their transposes), ‖swap‖ = 1 (a permutation). Every certified value carries a
floating-point safety margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from services.perturb.engine.linear_maps import Conv2dMap, DenseMap, LinearMap, PairMap, ReshapeMap, ScaleMap


@dataclass(frozen=True)
class NormMargin:
    """Safety margin applied to every certified norm: ``value * (1 + relative) + absolute``."""

    relative: float = 1e-5
    absolute: float = 1e-9


def with_margin(value: float, margin: NormMargin = NormMargin()) -> float:
    """Inflate a float64-computed norm by the floating-point safety margin."""
    return float(value) * (1.0 + margin.relative) + margin.absolute


def conv_circular_norm(weight: torch.Tensor, torus: tuple[int, int]) -> float:
    """Exact ℓ2 norm (no margin) of the circular conv with ``weight [O, I, kh, kw]`` on an n1 x n2 torus."""
    w = weight.to(torch.float64)
    spectrum = torch.fft.fft2(w, s=torus)  # [O, I, n1, n2]
    mats = spectrum.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1])
    return float(torch.linalg.svdvals(mats).max())


def polyphase_kernel(weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Kernel [O, I·sh·sw, ⌈kh/sh⌉, ⌈kw/sw⌉] of the stride-1 conv equal to a strided one (phase-split input).

    On a torus whose sides are multiples of the stride, ``x[c, u·sh + p, v·sw + q]`` regrouped as channel
    (c, p, q) of an (N/sh) x (N/sw) torus turns the strided circular conv into a stride-1 circular conv.
    """
    o, i, kh, kw = weight.shape
    sh, sw = stride
    kh2, kw2 = -(-kh // sh) * sh, -(-kw // sw) * sw
    w = torch.nn.functional.pad(weight, (0, kw2 - kw, 0, kh2 - kh))
    w = w.reshape(o, i, kh2 // sh, sh, kw2 // sw, sw).permute(0, 1, 3, 5, 2, 4)
    return w.reshape(o, i * sh * sw, kh2 // sh, kw2 // sw)


def conv_norm_upper(lmap: Conv2dMap) -> float:
    """Certified upper bound of a zero-padded, strided conv's ℓ2 norm (no margin).

    The zero-padded conv is a restriction of the strided circular conv on a torus large enough that
    nothing wraps around (sides rounded up to multiples of the stride); that operator's norm is exact
    via the polyphase kernel's DFT.
    """
    _, h, w = lmap.in_shape
    kh, kw = lmap.weight.shape[2:]
    t, left, b, r = lmap.pads
    sh, sw = lmap.stride
    n1 = -(-max(h + t + b, kh) // sh) * sh
    n2 = -(-max(w + left + r, kw) // sw) * sw
    kernel = polyphase_kernel(lmap.weight.to(torch.float64), (sh, sw))
    return conv_circular_norm(kernel, (n1 // sh, n2 // sw))


def certified_norm(lmap: LinearMap, margin: NormMargin = NormMargin()) -> float:
    """Certified upper bound (with margin) of ``‖lmap‖₂``."""
    if isinstance(lmap, ReshapeMap):
        return 1.0
    if isinstance(lmap, ScaleMap):
        return with_margin(float(lmap.scale.abs().max()), margin)
    if isinstance(lmap, DenseMap):
        return with_margin(float(torch.linalg.matrix_norm(lmap.weight.to(torch.float64), ord=2)), margin)
    if isinstance(lmap, Conv2dMap):
        return with_margin(conv_norm_upper(lmap), margin)
    if isinstance(lmap, PairMap):
        return 1.0 if lmap.mode == "swap" else with_margin(math.sqrt(2.0), margin)
    raise TypeError(f"no norm for {type(lmap).__name__}")


def power_iteration_norm(lmap: LinearMap, iterations: int = 100, seed: int = 0) -> float:
    """Lower estimate of ``‖lmap‖₂`` by power iteration on ``AᵀA`` (a true lower bound: ‖Av‖/‖v‖)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn((1, *lmap.in_shape), generator=gen, dtype=torch.float64)
    lm = lmap.to(torch.float64)
    v = v / v.norm()
    est = 0.0
    for _ in range(iterations):
        u = lm.apply(v)
        est = float(u.norm())
        if est == 0.0:
            return 0.0
        v = lm.apply_t(u)
        v = v / v.norm()
    return float(lm.apply(v).norm())


def explicit_matrix(lmap: LinearMap) -> torch.Tensor:
    """The map as a dense float64 matrix [out_flat, in_flat] (tests and tiny layers only)."""
    lm = lmap.to(torch.float64)
    n = 1
    for d in lm.in_shape:
        n *= d
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *lm.in_shape)
    return lm.apply(eye).reshape(n, -1).T.contiguous()
