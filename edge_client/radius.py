"""Turning a certified feature radius R_F into an image radius R (the F2IPerturb step)."""

from __future__ import annotations

import numpy as np


def radius_from_curve(image_radius: np.ndarray, feature_shift_bound: np.ndarray,
                      feature_radius: float) -> float:
    """Largest ladder radius r_k with U(r_k) < R_F, or 0.0 if none (image units of the curve's norm).

    Every r_k with U(r_k) < R_F is certified on its own (U(r_k) bounds the shift over the r_k ball), so the
    largest such r_k is sound even if a server sent a non-monotone curve.
    """
    radii = np.asarray(image_radius, dtype=np.float64)
    bounds = np.asarray(feature_shift_bound, dtype=np.float64)
    if radii.shape != bounds.shape or radii.ndim != 1:
        raise ValueError(f"curve arrays must be 1-D, equal length; got {radii.shape} and {bounds.shape}")
    if not (np.isfinite(feature_radius) and feature_radius >= 0):
        raise ValueError(f"feature radius must be finite and >= 0, got {feature_radius}")
    ok = (bounds < feature_radius) & np.isfinite(bounds) & np.isfinite(radii) & (radii >= 0)
    return float(radii[ok].max()) if ok.any() else 0.0


def radii_from_curves(curves: list[tuple[np.ndarray, np.ndarray]], feature_radii: np.ndarray) -> np.ndarray:
    """Image radii [B] for B curves ``(image_radius [K], feature_shift_bound [K])`` and feature radii [B]."""
    feature_radii = np.asarray(feature_radii, dtype=np.float64)
    if len(curves) != feature_radii.shape[0]:
        raise ValueError(f"{len(curves)} curves for {feature_radii.shape[0]} feature radii")
    pairs = zip(curves, feature_radii, strict=True)
    return np.array([radius_from_curve(r, u, float(rf)) for (r, u), rf in pairs], dtype=np.float64)


def image_radii_by_query(perturb_client, images: np.ndarray, feature_radii: np.ndarray, **options
                         ) -> tuple[np.ndarray, list[str]]:
    """Image radii [B] from one F2IPerturb query per image with R_F > 0; R_F = 0 gives 0 without a query."""
    feature_radii = np.asarray(feature_radii, dtype=np.float64)
    radii = np.zeros(feature_radii.shape[0])
    methods = ["none"] * feature_radii.shape[0]
    positive = np.flatnonzero(feature_radii > 0)
    if positive.size:
        answered, used = perturb_client.f2i(np.asarray(images)[positive], feature_radii[positive], **options)
        radii[positive] = answered
        for i, method in zip(positive, used, strict=True):
            methods[int(i)] = method
    return radii, methods
