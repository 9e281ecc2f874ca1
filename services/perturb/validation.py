"""Every F2IPerturb request check in one place: small pure functions that return the domain value or
raise ``InvalidArgument`` naming the offending field (INVALID_ARGUMENT on the wire).

Zeros select the documented defaults (proto3 cannot tell an unset number from 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reaas.methods import METHOD_NAMES, NORM_NAMES
from reaas.tensors import TensorError, decode_images
from reaas.v1 import common_pb2, perturb_pb2
from services.common.status import InvalidArgument, require_finite_range

DEFAULT_RELATIVE_TOLERANCE = 1e-3
DEFAULT_NUM_RADII, DEFAULT_MIN_RADIUS, DEFAULT_MAX_RADIUS = 64, 1e-3, 4.0
MAX_NUM_RADII = 1024
DEFAULT_CONTRAST_PER_BRIGHTNESS = 1.0

# SemanticPerturbation value -> the certifier's perturbation kind
SEMANTIC_KINDS: dict[int, str] = {
    perturb_pb2.BRIGHTNESS: "brightness",
    perturb_pb2.CONTRAST: "contrast",
    perturb_pb2.BRIGHTNESS_CONTRAST: "brightness_contrast",
}
_NO_SEMANTIC_VARIANT = ("local_lipschitz",)


def images(
    tensor: common_pb2.Tensor, *, input_shape: Sequence[int], max_batch_size: int, field: str = "images"
) -> np.ndarray:
    """Images [B, *input_shape] float32 in [0, 1], 1 <= B <= max_batch_size (UINT8 scaled by 1/255)."""
    try:
        return decode_images(tensor, field=field, input_shape=input_shape, max_batch_size=max_batch_size)
    except TensorError as error:
        raise InvalidArgument(error.field, str(error).removeprefix(f"{error.field}: ")) from None


def feature_radii(values: Sequence[float], batch: int, field: str = "feature_radius") -> np.ndarray:
    """R_F [B] float64: exactly one finite, non-negative entry per image."""
    radii = np.asarray(values, dtype=np.float64)
    if radii.shape != (batch,):
        raise InvalidArgument(field, f"expected {batch} entries (one per image), got {radii.size}")
    bad = np.flatnonzero(~np.isfinite(radii) | (radii < 0))
    if bad.size:
        raise InvalidArgument(field, f"entry {bad[0]} is {radii[bad[0]]!r}; must be finite and >= 0")
    return radii


def _named(table: dict[int, str], value: int, field: str, enum: str) -> str:
    """The domain name of an enum value, or InvalidArgument naming the field and the valid values."""
    if value not in table:
        raise InvalidArgument(field, f"unknown {enum} {value}; expected one of {sorted(table)}")
    return table[value]


def norm(value: int, field: str = "norm") -> str:
    """The engine's name ("l2", "linf") of a Norm value."""
    return _named(NORM_NAMES, value, field, "Norm")


def method(value: int, field: str = "method") -> str:
    """The engine's name ("auto", "lipschitz", ...) of a Method value."""
    return _named(METHOD_NAMES, value, field, "Method")


def semantic_method(value: int, field: str = "method") -> str:
    """A Method value the semantic certifier runs (every one but LOCAL_LIPSCHITZ)."""
    name = method(value, field)
    if name in _NO_SEMANTIC_VARIANT:
        raise InvalidArgument(field, f"{name.upper()} has no semantic variant")
    return name


def semantic_perturbation(value: int, field: str = "perturbation") -> str:
    """The certifier's kind ("brightness", "contrast", "brightness_contrast") of a SemanticPerturbation."""
    return _named(SEMANTIC_KINDS, value, field, "SemanticPerturbation")


def contrast_per_brightness(value: float, field: str = "contrast_per_brightness") -> float:
    """C/B of a joint brightness-contrast box: 0 means 1.0; otherwise finite in [1e-6, 1e6]."""
    if value == 0:
        return DEFAULT_CONTRAST_PER_BRIGHTNESS
    return require_finite_range(field, value, 1e-6, 1e6)


def relative_tolerance(value: float, field: str = "relative_tolerance") -> float:
    """The radius search's relative tolerance: 0 means 1e-3; otherwise finite in [1e-6, 0.5]."""
    if value == 0:
        return DEFAULT_RELATIVE_TOLERANCE
    return require_finite_range(field, value, 1e-6, 0.5)


def radius_ladder(num_radii: int, min_radius: float, max_radius: float) -> np.ndarray:
    """Geometric ladder r_k [K] float64; zeros select the defaults (64 radii, 1e-3 .. 4.0)."""
    num = DEFAULT_NUM_RADII if num_radii == 0 else num_radii
    if not 2 <= num <= MAX_NUM_RADII:
        raise InvalidArgument("num_radii", f"must be 0 or in [2, {MAX_NUM_RADII}], got {num_radii}")
    low = DEFAULT_MIN_RADIUS if min_radius == 0 else min_radius
    high = DEFAULT_MAX_RADIUS if max_radius == 0 else max_radius
    if not (math.isfinite(low) and low > 0):
        raise InvalidArgument("min_radius", f"must be 0 (default) or finite and > 0, got {min_radius!r}")
    if not (math.isfinite(high) and high > low):
        raise InvalidArgument("max_radius", f"must be finite and > min_radius ({low!r}), got {high!r}")
    return np.geomspace(low, high, num)
