"""The semantic perturbation (SP) layer: an affine map θ ↦ x0 + A θ over a parameter box |θ_j| ≤ t.

Kinds (images are *not* clipped to [0, 1] after the perturbation *(our choice)*: the certificate
covers the affine image ``c·x0 + b·1`` itself, which is what the ONNX encoder receives):

* ``brightness``: ``x0 + b·1``, θ = (b,), |b| ≤ t.
* ``contrast``: ``c·x0 = x0 + (c − 1)·x0``, θ = (c − 1,), |c − 1| ≤ t.
* ``brightness_contrast``: ``c·x0 + b·1``, θ = (b, (c − 1)/k), the box |b| ≤ t, |c − 1| ≤ k·t with
  k = ``contrast_per_brightness`` (contrast first, then brightness, so the map stays affine in θ).
"""

from __future__ import annotations

import numpy as np

KINDS = ("brightness", "contrast", "brightness_contrast")


def check_kind(kind: str) -> str:
    """``kind`` if it is one of KINDS, else ValueError."""
    if kind not in KINDS:
        raise ValueError(f"perturbation must be one of {KINDS}, got {kind!r}")
    return kind


def basis(x0: np.ndarray, kind: str, contrast_per_brightness: float = 1.0) -> np.ndarray:
    """A [k, *shape] float64 for one image x0 [*shape]: the perturbed image is x0 + Σ_j θ_j A_j."""
    check_kind(kind)
    x = np.asarray(x0, dtype=np.float64)
    ones = np.ones_like(x)
    if kind == "brightness":
        return ones[None]
    if kind == "contrast":
        return x[None]
    return np.stack([ones, contrast_per_brightness * x])


def perturb(x0: np.ndarray, a: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Images [M, *shape] = x0 + θ A for parameters θ [M, k] (float64)."""
    return np.asarray(x0, np.float64)[None] + np.tensordot(np.asarray(theta, np.float64), a, axes=1)


def l2_per_unit(a: np.ndarray) -> float:
    """max over the unit box |θ_j| ≤ 1 of ‖A θ‖₂ (attained at a corner: ‖·‖₂ is convex)."""
    flat = a.reshape(a.shape[0], -1)
    k = flat.shape[0]
    corners = np.array(np.meshgrid(*([[-1.0, 1.0]] * k), indexing="ij")).reshape(k, -1).T
    return float(np.linalg.norm(corners @ flat, axis=1).max())


def l2_conversion(image_radius: float, a: np.ndarray) -> float:
    """Parameter radius t implied by an ℓ2 certificate R: the t-box stays in the R-ball (t·‖A‖ ≤ R)."""
    scale = l2_per_unit(a)
    return float(image_radius / scale) if scale > 0 else float("inf")
