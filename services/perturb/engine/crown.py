"""CROWN: backward propagation of linear bounds through the bound graph, and their ℓ2 combination.

``backward_linear_bounds`` turns ``A · v_start`` into a linear upper bound ``A_in · x + c`` valid on
the ball, given interval bounds of every ReLU's input (CROWN-IBP: from IBP; full CROWN: from CROWN
itself, see ``crown_intermediate_bounds``). Lower bounds are upper bounds of ``-A``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from services.perturb.engine.ball import InputBall
from services.perturb.engine.errors import DeadlineExceeded
from services.perturb.engine.ibp import Bounds, interval_bounds
from services.perturb.engine.lipschitz import LipschitzInfo
from services.perturb.engine.onnx_graph import BoundGraph
from services.perturb.engine.operator_norms import NormMargin, with_margin


@dataclass(frozen=True)
class CrownConfig:
    """Memory budget of one backward pass: rows x neurons x elements of the largest node, in floats."""

    max_floats_per_pass: int = 12_000_000
    only_unstable: bool = True  # tighten only neurons IBP leaves unstable (others keep exact relaxations)
    # output bounds: "parallel" (lower line parallel to the upper one: one backward pass for both
    # directions, half the cost) or "adaptive" (CROWN's 0/1 lower slope: two passes)
    output_relaxation: str = "parallel"
    intermediate_relaxation: str = "parallel"  # same choice for full CROWN's intermediate bounds (4x faster)


def relu_relaxation(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """CROWN relaxation ``sl·z ≤ relu(z) ≤ su·z + bu`` on [lo, hi]: returns (sl, su, bu)."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    su = torch.where(active, torch.ones_like(hi), torch.where(unstable, hi / width, torch.zeros_like(hi)))
    bu = torch.where(unstable, -su * lo, torch.zeros_like(hi))
    sl = torch.where(active, torch.ones_like(hi), (unstable & (hi > -lo)).to(hi.dtype))
    return sl, su, bu


def _backward(graph: BoundGraph, start: int, a_start: torch.Tensor, bounds: Bounds, parallel: bool):
    """Shared backward pass; returns (A_in, c_lo, c_hi) with c_lo meaningful only when ``parallel``."""
    n, k = a_start.shape[:2]
    acc: dict[int, torch.Tensor] = {start: a_start}
    c_lo = torch.zeros(n, k, dtype=a_start.dtype)
    c_hi = torch.zeros(n, k, dtype=a_start.dtype)
    for j in range(start, 0, -1):
        a = acc.pop(j, None)
        if a is None:
            continue
        node = graph.nodes[j]
        if node.kind == "affine":
            cb = torch.einsum("nk...,...->nk", a, node.bias.to(a.dtype))
            c_lo, c_hi = c_lo + cb, c_hi + cb
            src = graph.nodes[node.inputs[0]]
            new = node.lmap.apply_t(a.reshape(n * k, *node.shape)).reshape(n, k, *src.shape)
            targets = [(node.inputs[0], new)]
        elif node.kind == "relu":
            lo, hi = bounds[node.inputs[0]]
            sl, su, bu = (t[:, None] for t in relu_relaxation(lo, hi))
            if parallel:  # su·z ≤ relu(z) ≤ su·z + bu: one pass bounds both directions
                ab = a * bu
                c_hi = c_hi + ab.clamp(min=0).reshape(n, k, -1).sum(-1)
                c_lo = c_lo + ab.clamp(max=0).reshape(n, k, -1).sum(-1)
                new = a * su
            else:  # upper line where the coefficient is positive, CROWN's lower line where negative
                pos, neg = a.clamp(min=0), a.clamp(max=0)
                c_hi = c_hi + (pos * bu).reshape(n, k, -1).sum(-1)
                new = pos * su + neg * sl
            targets = [(node.inputs[0], new)]
        else:
            targets = [(node.inputs[0], a), (node.inputs[1], a)]
        for t, val in targets:
            acc[t] = acc[t] + val if t in acc else val
    return acc[0], c_lo, c_hi


def backward_linear_bounds(
    graph: BoundGraph, start: int, a_start: torch.Tensor, bounds: Bounds
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear upper bound of ``a_start [N, K, *shape(start)] · v_start``: (A_in [N, K, *in], c [N, K])."""
    a_in, _, c = _backward(graph, start, a_start, bounds, parallel=False)
    return a_in, c


def backward_parallel_bounds(
    graph: BoundGraph, start: int, a_start: torch.Tensor, bounds: Bounds
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A_in x + c_lo ≤ a_start · v_start ≤ A_in x + c_hi`` by parallel relaxations: (A_in, c_lo, c_hi)."""
    return _backward(graph, start, a_start, bounds, parallel=True)


def _chunk(graph: BoundGraph, n: int, cfg: CrownConfig) -> int:
    biggest = max(int(torch.tensor(nd.shape).prod()) for nd in graph.nodes)
    return max(1, cfg.max_floats_per_pass // max(1, n * biggest))


def _has_relu_ancestor(graph: BoundGraph) -> list[bool]:
    flag: list[bool] = []
    for nd in graph.nodes:
        flag.append(nd.kind == "relu" or any(flag[i] for i in nd.inputs))
    return flag


def crown_intermediate_bounds(
    graph: BoundGraph,
    ball: InputBall,
    centers: list[torch.Tensor],
    lip: LipschitzInfo,
    cfg: CrownConfig = CrownConfig(),
    deadline: float | None = None,
) -> Bounds:
    """Bounds of every node where each ReLU input is bounded by CROWN (only IBP-unstable neurons)."""
    overrides: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    bounds = interval_bounds(graph, ball, centers, lip)
    deep = _has_relu_ancestor(graph)
    pre = sorted({nd.inputs[0] for nd in graph.nodes if nd.kind == "relu"})
    n = ball.x0.shape[0]
    for j in pre:
        if not deep[j] and graph.nodes[j].kind == "affine" and graph.nodes[j].inputs == (0,):
            continue  # an affine map of the input: IBP's bound is already exact per neuron
        # (affine in the input through shared affine nodes, e.g. a MaxMin difference of a multi-consumer
        # node: IBP is interval arithmetic there, CROWN's backward pass is exact)
        lo, hi = bounds[j]
        shape = graph.nodes[j].shape
        flat_lo, flat_hi = lo.reshape(n, -1).clone(), hi.reshape(n, -1).clone()
        pick = ((flat_lo < 0) & (flat_hi > 0)).any(0)
        if not cfg.only_unstable:
            pick = torch.ones_like(pick)
        idx = torch.nonzero(pick).flatten()
        step = max(1, _chunk(graph, n, cfg) // 2)
        for s in range(0, idx.numel(), step):
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("CROWN intermediate bounds ran past the deadline")
            sel = idx[s : s + step]
            m = sel.numel()
            eye = torch.zeros(m, flat_lo.shape[1], dtype=lo.dtype)
            eye[torch.arange(m), sel] = 1.0
            if cfg.intermediate_relaxation == "parallel":
                a = eye.reshape(1, m, *shape).expand(n, -1, *shape)
                a_in, c_lo, c_hi = backward_parallel_bounds(graph, j, a, bounds)
                ub = ball.concretize_upper(a_in, c_hi)
                lb = -ball.concretize_upper(-a_in, -c_lo)
            else:
                a = torch.cat([eye, -eye]).reshape(1, 2 * m, *shape).expand(n, -1, *shape)
                a_in, c = backward_linear_bounds(graph, j, a, bounds)
                both = ball.concretize_upper(a_in, c)
                ub, lb = both[:, :m], -both[:, m:]
            flat_hi[:, sel] = torch.minimum(flat_hi[:, sel], ub)
            flat_lo[:, sel] = torch.maximum(flat_lo[:, sel], lb)
        overrides[j] = (flat_lo.reshape(lo.shape), flat_hi.reshape(hi.shape))
        bounds = interval_bounds(graph, ball, centers, lip, overrides)
    return bounds


_DEFAULT_MARGIN = NormMargin()


@dataclass
class FeatureShiftBounds:
    """[N] upper bounds of ``‖f(x) - f(x0)‖₂`` over the ball by the two combinations."""

    per_feature: torch.Tensor
    linear_part: torch.Tensor


def output_shift_bounds(
    graph: BoundGraph,
    ball: InputBall,
    f0: torch.Tensor,
    bounds: Bounds,
    margin: NormMargin = _DEFAULT_MARGIN,
    cfg: CrownConfig = CrownConfig(),
) -> FeatureShiftBounds:
    """CROWN on the output node, combined per feature and by the linear-part decomposition."""
    n, d = f0.shape
    out = graph.output
    eye = torch.eye(d, dtype=f0.dtype)
    parallel = cfg.output_relaxation == "parallel"
    rows = d if parallel else 2 * d
    a = eye if parallel else torch.cat([eye, -eye])
    a = a.reshape(1, rows, *graph.nodes[out].shape).expand(n, -1, -1)
    step = max(1, _chunk(graph, rows, cfg))
    parts = []
    for s in range(0, n, step):
        sub = [(lo[s : s + step], hi[s : s + step]) for lo, hi in bounds]
        if parallel:
            parts.append(backward_parallel_bounds(graph, out, a[s : s + step], sub))
        else:
            ai, ci = backward_linear_bounds(graph, out, a[s : s + step], sub)
            # rows d.. bound -f from above: f ≥ -(a_in x + c)
            parts.append((ai, ci))
    x0 = ball.x0.reshape(n, -1)
    if parallel:
        a_in = torch.cat([p[0] for p in parts])
        c_lo, c_hi = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        a_u = a_l = a_in.reshape(n, d, -1)
        c_u_x, c_l_x = c_hi, c_lo  # f ≤ A_U x + c_u_x,  f ≥ A_L x + c_l_x
    else:
        a_in, c = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        a_u, a_l = a_in[:, :d].reshape(n, d, -1), -a_in[:, d:].reshape(n, d, -1)
        c_u_x, c_l_x = c[:, :d], -c[:, d:]
    ub = ball.concretize_upper(a_u, c_u_x)
    lb = -ball.concretize_upper(-a_l, -c_l_x)
    ibp_lo, ibp_hi = bounds[out]
    ub = torch.minimum(ub, ibp_hi.reshape(n, d))
    lb = torch.maximum(lb, ibp_lo.reshape(n, d))
    per_feature = torch.maximum(ub - f0, f0 - lb).clamp(min=0).norm(dim=1)

    c_u = torch.einsum("ndi,ni->nd", a_u, x0) + c_u_x - f0  # f - f0 ≤ A_U δ + c_u
    c_l = torch.einsum("ndi,ni->nd", a_l, x0) + c_l_x - f0  # f - f0 ≥ A_L δ + c_l
    mid, half = (a_u + a_l) / 2, (a_u - a_l) / 2
    mid_c, half_c = (c_u + c_l) / 2, (c_u - c_l) / 2
    if parallel:
        half_max = half_c.clamp(min=0)
    else:
        half_max = ball.concretize_upper(half, half_c - torch.einsum("ndi,ni->nd", half, x0)).clamp(min=0)
    e = (mid_c.abs() + half_max).norm(dim=1)
    sigma = torch.linalg.matrix_norm(mid, ord=2)
    if ball.norm == "l2":
        op = sigma
    else:
        op = torch.minimum(sigma * float(x0.shape[1]) ** 0.5, mid.abs().sum(-1).norm(dim=1))
    op = op * (1 + margin.relative) + margin.absolute
    linear_part = op * ball.radius + e
    return FeatureShiftBounds(per_feature, linear_part)


def lipschitz_fallback(lip: LipschitzInfo, ball: InputBall) -> torch.Tensor:
    """[N] global Lipschitz bound ``L · r₂``."""
    return with_margin(lip.output_l2) * ball.l2_radius
