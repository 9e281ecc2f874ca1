"""Sound output bounds of a ReLU MLP over an l2 or l-inf ball of raw features, in numpy (IBP and CROWN).

Layers are ``[(W [out, in], b [out]), ...]`` with ReLU between them (see ``MLP.folded_layers``). Every
function is batched over B balls ``{z : ||z - center_b||_p <= radius_b}``. An optional ``spec`` [B, K, C]
multiplies the network output (folded into the last layer), e.g. the margin rows ``e_y - e_j``.
CROWN here is full CROWN: intermediate pre-activation bounds come from CROWN itself, the lower ReLU slope
is the adaptive choice ``1[u > -l]`` (as auto_LiRPA's default), the upper slope the chord ``u / (u - l)``.
"""

from __future__ import annotations

import numpy as np

Layers = list[tuple[np.ndarray, np.ndarray]]
NORMS = ("l2", "linf")
METHODS = ("ibp", "crown")


def _dual_norm_rows(matrix: np.ndarray, norm: str) -> np.ndarray:
    """Dual norm of each row along the last axis: l2 -> l2, l-inf -> l1."""
    if norm == "l2":
        return np.sqrt(np.sum(matrix * matrix, axis=-1))
    if norm == "linf":
        return np.sum(np.abs(matrix), axis=-1)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _last_layer(layers: Layers, spec: np.ndarray | None, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The last affine layer batched as W [B, K, in], b [B, K], with the spec folded in."""
    w, b = layers[-1]
    if spec is None:
        return np.broadcast_to(w, (batch, *w.shape)), np.broadcast_to(b, (batch, b.shape[0]))
    spec = np.asarray(spec, dtype=np.float64)
    return np.einsum("bkc,ci->bki", spec, w), np.einsum("bkc,c->bk", spec, b)


def _check(center: np.ndarray, radius: np.ndarray, norm: str) -> tuple[np.ndarray, np.ndarray]:
    center = np.atleast_2d(np.asarray(center, dtype=np.float64))
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (center.shape[0],))
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if np.any(radius < 0) or not np.all(np.isfinite(radius)):
        raise ValueError("radius must be finite and >= 0")
    return center, radius


def ibp_bounds(layers: Layers, center: np.ndarray, radius: np.ndarray, norm: str = "l2",
               spec: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds (lower, upper) [B, K] of spec @ g(z) over the balls; the first layer is exact."""
    center, radius = _check(center, radius, norm)
    batch = center.shape[0]
    if len(layers) == 1:
        w, b = _last_layer(layers, spec, batch)
        mid = np.einsum("bki,bi->bk", w, center) + b
        rad = radius[:, None] * _dual_norm_rows(w, norm)
        return mid - rad, mid + rad
    w0, b0 = layers[0]
    mid = center @ w0.T + b0
    rad = radius[:, None] * _dual_norm_rows(w0, norm)[None, :]
    lower, upper = mid - rad, mid + rad
    for w, b in layers[1:-1]:
        lower, upper = np.maximum(lower, 0.0), np.maximum(upper, 0.0)
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        mid, rad = mid @ w.T + b, rad @ np.abs(w).T
        lower, upper = mid - rad, mid + rad
    lower, upper = np.maximum(lower, 0.0), np.maximum(upper, 0.0)
    w, b = _last_layer(layers, spec, batch)
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    mid = np.einsum("bki,bi->bk", w, mid) + b
    rad = np.einsum("bki,bi->bk", np.abs(w), rad)
    return mid - rad, mid + rad


def _relu_relaxation(lower: np.ndarray, upper: np.ndarray, relaxation: str = "adaptive"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ReLU relaxation (lower_slope, upper_slope, upper_intercept), each [B, n].

    The upper line is the chord; the lower line through 0 has slope ``1[u > -l]`` ("adaptive", CROWN) or
    the chord's slope ("parallel", as Fast-Lin; the server engine's default).
    """
    active = lower >= 0
    unstable = (lower < 0) & (upper > 0)
    denom = np.where(unstable, upper - lower, 1.0)
    upper_slope = np.where(active, 1.0, np.where(unstable, upper / denom, 0.0))
    upper_intercept = np.where(unstable, -upper * lower / denom, 0.0)
    if relaxation == "parallel":
        return upper_slope, upper_slope, upper_intercept
    if relaxation != "adaptive":
        raise ValueError(f"relaxation must be 'adaptive' or 'parallel', got {relaxation!r}")
    lower_slope = np.where(active, 1.0, np.where(unstable & (upper > -lower), 1.0, 0.0))
    return lower_slope, upper_slope, upper_intercept


def _crown_backward(layers: Layers, w_out: np.ndarray, b_out: np.ndarray, k: int,
                    pre_bounds: list[tuple[np.ndarray, np.ndarray]], center: np.ndarray,
                    radius: np.ndarray, norm: str, relaxation: str = "adaptive"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``w_out @ relu(h_{k-1}) + b_out`` ([B, K, n], [B, K]) by backward linear propagation."""
    a_lo, a_up = w_out, w_out
    c_lo, c_up = b_out.copy(), b_out.copy()
    for j in range(k - 1, -1, -1):
        s_lo, s_up, t_up = _relu_relaxation(*pre_bounds[j], relaxation)
        lo_pos, lo_neg = np.maximum(a_lo, 0.0), np.minimum(a_lo, 0.0)
        up_pos, up_neg = np.maximum(a_up, 0.0), np.minimum(a_up, 0.0)
        c_lo = c_lo + np.einsum("bkn,bn->bk", lo_neg, t_up)
        c_up = c_up + np.einsum("bkn,bn->bk", up_pos, t_up)
        a_lo = lo_pos * s_lo[:, None, :] + lo_neg * s_up[:, None, :]
        a_up = up_pos * s_up[:, None, :] + up_neg * s_lo[:, None, :]
        w, b = layers[j]
        c_lo = c_lo + a_lo @ b
        c_up = c_up + a_up @ b
        a_lo = a_lo @ w
        a_up = a_up @ w
    lower = np.einsum("bki,bi->bk", a_lo, center) + c_lo - radius[:, None] * _dual_norm_rows(a_lo, norm)
    upper = np.einsum("bki,bi->bk", a_up, center) + c_up + radius[:, None] * _dual_norm_rows(a_up, norm)
    return lower, upper


def _ibp_step(lower: np.ndarray, upper: np.ndarray, w: np.ndarray, b: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``w @ relu(h) + b`` from bounds of h; ``w`` is [out, in] or batched [B, out, in]."""
    lower, upper = np.maximum(lower, 0.0), np.maximum(upper, 0.0)
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    if w.ndim == 2:
        return mid @ w.T + b - rad @ np.abs(w).T, mid @ w.T + b + rad @ np.abs(w).T
    centre = np.einsum("bki,bi->bk", w, mid) + b
    spread = np.einsum("bki,bi->bk", np.abs(w), rad)
    return centre - spread, centre + spread


def crown_bounds(layers: Layers, center: np.ndarray, radius: np.ndarray, norm: str = "l2",
                 spec: np.ndarray | None = None, intersect_ibp: bool = False, relaxation: str = "adaptive"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """CROWN bounds (lower, upper) [B, K] of spec @ g(z) over the balls, CROWN intermediate bounds.

    With ``intersect_ibp`` every layer's bounds are also intersected with interval bounds computed from the
    previous (already tightened) layer: sound, never looser, and the server engine's convention.
    """
    center, radius = _check(center, radius, norm)
    batch = center.shape[0]
    if len(layers) == 1:
        return ibp_bounds(layers, center, radius, norm, spec)
    w0, b0 = layers[0]
    mid = center @ w0.T + b0
    rad = radius[:, None] * _dual_norm_rows(w0, norm)[None, :]
    pre_bounds = [(mid - rad, mid + rad)]
    for k in range(1, len(layers) - 1):
        w, b = layers[k]
        w_b = np.broadcast_to(w, (batch, *w.shape))
        b_b = np.broadcast_to(b, (batch, b.shape[0]))
        lower, upper = _crown_backward(layers, w_b, b_b, k, pre_bounds, center, radius, norm, relaxation)
        if intersect_ibp:
            ibp_lo, ibp_up = _ibp_step(*pre_bounds[-1], w, b)
            lower, upper = np.maximum(lower, ibp_lo), np.minimum(upper, ibp_up)
        pre_bounds.append((lower, upper))
    w_out, b_out = _last_layer(layers, spec, batch)
    lower, upper = _crown_backward(layers, w_out, np.array(b_out), len(layers) - 1, pre_bounds, center,
                                   radius, norm, relaxation)
    if intersect_ibp:
        ibp_lo, ibp_up = _ibp_step(*pre_bounds[-1], np.asarray(w_out), np.asarray(b_out))
        lower, upper = np.maximum(lower, ibp_lo), np.minimum(upper, ibp_up)
    return lower, upper


def margin_spec(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows ``e_y - e_j`` for every j != y: [B, C-1, C] float64."""
    labels = np.asarray(labels, dtype=np.int64)
    batch = labels.shape[0]
    others = np.array([[j for j in range(num_classes) if j != y] for y in labels], dtype=np.int64)
    spec = np.zeros((batch, num_classes - 1, num_classes))
    rows = np.arange(num_classes - 1)
    spec[np.arange(batch)[:, None], rows[None, :], labels[:, None]] = 1.0
    spec[np.arange(batch)[:, None], rows[None, :], others] -= 1.0
    return spec


def margin_lower_bound(layers: Layers, center: np.ndarray, radius: np.ndarray, labels: np.ndarray,
                       norm: str = "l2", method: str = "crown") -> np.ndarray:
    """Sound lower bound [B] of min_{j != y} (g_y(z) - g_j(z)) over each ball; > 0 certifies class y."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    spec = margin_spec(labels, layers[-1][0].shape[0])
    if method == "crown":
        lower, _ = crown_bounds(layers, center, radius, norm, spec, intersect_ibp=True)
    else:
        lower, _ = ibp_bounds(layers, center, radius, norm, spec)
    return lower.min(axis=1)
