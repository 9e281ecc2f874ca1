"""Per-image local Lipschitz bound: the product of operator norms with provably dead neurons removed.

Over the ball, a ReLU whose input's upper bound is ≤ 0 outputs 0 everywhere, so its coordinate of
``v(x+δ) - v(x)`` vanishes: the next layer's columns (and the producing layer's rows) for it can
be dropped. Dense maps use the exact norm of the masked submatrix; convs use the smaller of the
certified circular-conv norm and the Hölder bound ``sqrt(‖A‖₁ ‖A‖∞)`` of the masked map. A lowered
MaxMin (an "add" with ``lipschitz_source`` s) is 1-Lipschitz in node s, so its local constant is at
most node s's, and a pair can change only where one of its two inputs can. An affine output whose row
reads no coordinate that can change is constant over the ball; an Add of summands that can change only on
disjoint coordinates (a concatenation of branches) gets √(L_a² + L_b²) (``lipschitz.sum_lipschitz``).
"""

from __future__ import annotations

import torch

from services.perturb.engine.ibp import Bounds
from services.perturb.engine.linear_maps import Conv2dMap, DenseMap, PairMap, ReshapeMap, ScaleMap
from services.perturb.engine.lipschitz import LipschitzInfo, abs_reach, pair_max, sum_lipschitz
from services.perturb.engine.onnx_graph import BoundGraph
from services.perturb.engine.operator_norms import NormMargin, with_margin


def _masked_norm(
    lmap, w_in: torch.Tensor, reach: torch.Tensor, w_out: torch.Tensor, full: float, margin: NormMargin
) -> torch.Tensor:
    """[N] upper bounds of ‖diag(w_out) A diag(w_in)‖₂ for 0/1 masks w_in [N, *in], w_out [N, *out];
    ``reach`` = |A|·w_in (``abs_reach``), computed once per node."""
    n = w_in.shape[0]
    out = torch.full((n,), full, dtype=torch.float64)
    if isinstance(lmap, DenseMap):
        w = lmap.weight.to(torch.float64)
        for i in range(n):
            rows = w_out[i].reshape(-1) > 0
            cols = w_in[i].reshape(-1) > 0
            if rows.all() and cols.all():
                continue
            sub = w[rows][:, cols]
            val = _spectral_norm(sub) if sub.numel() else 0.0
            out[i] = min(full, with_margin(val, margin))
        return out
    lm = lmap.to(torch.float64)
    # ‖M‖₁ = max column abs-sum = max of |M|ᵀ·1, ‖M‖∞ = max row abs-sum = max of |M|·1
    row_sums = (w_out * reach).reshape(n, -1).max(dim=1).values
    col_sums = (w_in * _abs_t(lm, w_out)).reshape(n, -1).max(dim=1).values
    holder = torch.sqrt(row_sums * col_sums) * (1 + margin.relative) + margin.absolute
    return torch.minimum(out, holder)


def _spectral_norm(m: torch.Tensor) -> float:
    """σ_max of a float64 matrix via the eigenvalues of its smaller Gram matrix (cheaper than an SVD)."""
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0.0).sqrt())


def _abs_t(lm, y: torch.Tensor) -> torch.Tensor:
    """|A|ᵀ y for conv, scale and reshape maps (the transpose of the abs-weight map)."""
    if isinstance(lm, Conv2dMap):
        return Conv2dMap(lm.weight.abs(), lm.stride, lm.pads, lm.in_shape).apply_t(y)
    if isinstance(lm, ScaleMap):
        return ScaleMap(lm.scale.abs()).apply_t(y)
    if isinstance(lm, ReshapeMap):
        return lm.apply_t(y)
    if isinstance(lm, PairMap):
        return lm.apply_abs_t(y)
    raise TypeError(type(lm).__name__)


def local_lipschitz(
    graph: BoundGraph, bounds: Bounds, lip: LipschitzInfo, margin: NormMargin | None = None
) -> torch.Tensor:
    """[N] ℓ2 Lipschitz bound of f on each ball whose node bounds are ``bounds``."""
    margin = NormMargin() if margin is None else margin
    n = bounds[0][0].shape[0]
    consumers = graph.consumers
    alive: list[torch.Tensor] = []  # 1 where the node's coordinate can change over the ball
    local: list[torch.Tensor] = []
    reach: dict[int, torch.Tensor] = {}  # affine node -> |A|·alive(input)
    for k, nd in enumerate(graph.nodes):
        if nd.kind == "input":
            alive.append(torch.ones(n, *nd.shape, dtype=torch.float64))
            local.append(torch.ones(n, dtype=torch.float64))
        elif nd.kind == "relu":
            src = nd.inputs[0]
            live = (bounds[src][1] > 0).to(torch.float64)
            alive.append(live)
            pre = graph.nodes[src]
            if pre.kind == "affine" and consumers[src] == [k]:
                w_in = alive[pre.inputs[0]]
                norm = _masked_norm(
                    pre.lmap,
                    w_in,
                    reach[src],
                    live,
                    lip.global_l2[src] / max(lip.global_l2[pre.inputs[0]], 1e-300),
                    margin,
                )
                local.append(
                    torch.minimum(local[src], with_margin(1.0, margin) * norm * local[pre.inputs[0]])
                )
            else:
                local.append(local[src])
        elif nd.kind == "add":
            a, b = nd.inputs
            live = torch.maximum(alive[a], alive[b])
            disjoint = (alive[a] * alive[b]).flatten(1).sum(dim=1) == 0
            lip_k = sum_lipschitz(local[a], local[b], disjoint, margin)
            s = nd.lipschitz_source
            if s is not None:
                pair = pair_max(alive[s], 1)
                live = torch.minimum(live, torch.cat([pair, pair], dim=1))
                lip_k = torch.minimum(lip_k, local[s])
            alive.append(live)
            local.append(lip_k)
        else:
            src = nd.inputs[0]
            ones = torch.ones(n, *nd.shape, dtype=torch.float64)
            full = lip.global_l2[k] / max(lip.global_l2[src], 1e-300)
            reach[k] = abs_reach(nd.lmap, alive[src])
            norm = _masked_norm(nd.lmap, alive[src], reach[k], ones, full, margin)
            alive.append((reach[k] > 0).to(torch.float64))
            local.append(
                torch.minimum(
                    torch.full((n,), lip.global_l2[k], dtype=torch.float64),
                    with_margin(1.0, margin) * norm * local[src],
                )
            )
    return local[graph.output]
