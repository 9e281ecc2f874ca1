"""Interval bounds of every node over an input ball (IBP), tightened by per-neuron Lipschitz bounds.

Affine nodes fed directly by the input are bounded exactly per neuron over the ball
(``a_i·x0 + b_i ± r‖a_i‖_dual``), intersected with the pixel-box interval; later nodes use interval
arithmetic. Every node's interval is intersected with ``v(x0) ± L_i · r₂`` (per-neuron Lipschitz). A
lowered MaxMin (an "add" with ``lipschitz_source`` s) is also intersected with the pair sort of node s's
interval: max(a, b) ∈ [max(lo_a, lo_b), max(hi_a, hi_b)], min(a, b) ∈ [min(lo_a, lo_b), min(hi_a, hi_b)].
"""

from __future__ import annotations

import torch

from services.perturb.engine.ball import InputBall
from services.perturb.engine.lipschitz import LipschitzInfo, pair_max, pair_min
from services.perturb.engine.onnx_graph import BoundGraph

Bounds = list[tuple[torch.Tensor, torch.Tensor]]


def _bcast(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return r.reshape(-1, *([1] * (like.dim() - 1)))


def interval_bounds(
    graph: BoundGraph,
    ball: InputBall,
    centers: list[torch.Tensor],
    lip: LipschitzInfo,
    overrides: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Bounds:
    """(lower, upper) [N, *shape] of every node over ``ball``; ``centers`` are node values at ``ball.x0``.

    ``overrides`` holds tighter sound bounds (e.g. from CROWN) to intersect at their nodes.
    """
    out: Bounds = []
    r2 = ball.l2_radius
    for k, n in enumerate(graph.nodes):
        if n.kind == "input":
            lo, hi = ball.box()
        elif n.kind == "relu":
            lo, hi = (t.clamp(min=0.0) for t in out[n.inputs[0]])
        elif n.kind == "add":
            (l0, h0), (l1, h1) = out[n.inputs[0]], out[n.inputs[1]]
            lo, hi = l0 + l1, h0 + h1
            if n.lipschitz_source is not None:
                ls, hs = out[n.lipschitz_source]
                lo = torch.maximum(lo, torch.cat([pair_max(ls, 1), pair_min(ls, 1)], dim=1))
                hi = torch.minimum(hi, torch.cat([pair_max(hs, 1), pair_min(hs, 1)], dim=1))
        else:
            pl, ph = out[n.inputs[0]]
            mid, rad = (pl + ph) / 2, (ph - pl) / 2
            c = n.lmap.apply(mid) + n.bias
            d = n.lmap.apply_abs(rad)
            lo, hi = c - d, c + d
            if n.inputs[0] == 0:  # exact per-neuron bound over the ball
                c0 = n.lmap.apply(ball.x0) + n.bias
                ones = torch.ones_like(ball.x0[:1])
                row = torch.sqrt(n.lmap.apply_sq(ones)) if ball.norm == "l2" else n.lmap.apply_abs(ones)
                d0 = _bcast(ball.radius, c0) * row
                lo, hi = torch.maximum(lo, c0 - d0), torch.minimum(hi, c0 + d0)
        ctr = centers[k]
        lr = _bcast(r2, ctr) * lip.per_neuron_l2[k].to(ctr.dtype)
        lo, hi = torch.maximum(lo, ctr - lr), torch.minimum(hi, ctr + lr)
        if overrides and k in overrides:
            lo, hi = torch.maximum(lo, overrides[k][0]), torch.minimum(hi, overrides[k][1])
        out.append((lo, hi))
    return out
