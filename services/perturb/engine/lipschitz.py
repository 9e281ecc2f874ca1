"""Global and per-neuron ℓ2 Lipschitz bounds of every node of a bound graph (computed once at load).

``global_l2[k]`` bounds ``‖v_k(x) - v_k(y)‖₂ / ‖x - y‖₂`` (product of certified operator norms, sums
at residual Adds, or the root of the sum of squares where the two summands can change on disjoint
coordinates: a concatenation written as the sum of zero-padded branches); ``per_neuron_l2[k]``
bounds each coordinate's Lipschitz constant separately:
``min(‖A_i‖₂ · global(input), (|A| · per_neuron(input))_i)``.

A lowered MaxMin (the "add" with ``lipschitz_source`` = s, value MaxMin(v_s)) also gets MaxMin's own
constants, and keeps the smaller: the pair sort is 1-Lipschitz in ℓ2 (each pair's sorted vector moves
at most as far as the pair), so ``global ≤ global(s)``; and max / min of two functions with constants
L_a, L_b is max(L_a, L_b)-Lipschitz, so coordinate i of either half gets ``max(per(s)_a, per(s)_b)`` of
its pair. Without this the sum rule would charge 1 + √2·√2 = 3 per MaxMin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.perturb.engine.onnx_graph import BoundGraph
from services.perturb.engine.operator_norms import NormMargin, certified_norm, with_margin


@dataclass
class LipschitzInfo:
    """Certified Lipschitz constants (ℓ2 in, ℓ2 / per coordinate out) of every node."""

    global_l2: list[float]
    per_neuron_l2: list[torch.Tensor]  # float64, shape = node shape
    output: int

    @property
    def output_l2(self) -> float:
        return self.global_l2[self.output]


def pair_max(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """max(t[:h], t[h:]) along ``dim`` (h = half its size): one value per MaxMin pair."""
    a, b = t.chunk(2, dim=dim)
    return torch.maximum(a, b)


def pair_min(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """min(t[:h], t[h:]) along ``dim``."""
    a, b = t.chunk(2, dim=dim)
    return torch.minimum(a, b)


def sum_lipschitz(l_a, l_b, disjoint, margin: NormMargin):
    """Lipschitz bound (float or [N] tensor) of v_a + v_b given bounds ``l_a``, ``l_b`` of the two summands.

    In general L_a + L_b. Where ``disjoint`` (bool, or a bool tensor like ``l_a``) says the coordinates on
    which v_a can change never meet those on which v_b can, Δ(v_a + v_b) = Δv_a + Δv_b has orthogonal parts,
    so ‖Δ‖² = ‖Δv_a‖² + ‖Δv_b‖² ≤ (L_a² + L_b²)‖Δx‖²: a concatenation of branches of constants L_a and L_b
    costs √(L_a² + L_b²), not their sum.
    """
    if isinstance(l_a, torch.Tensor):
        value = torch.where(disjoint, torch.sqrt(l_a * l_a + l_b * l_b), l_a + l_b)
        return value * (1 + margin.relative) + margin.absolute
    return with_margin((l_a * l_a + l_b * l_b) ** 0.5 if disjoint else l_a + l_b, margin)


def abs_reach(lmap, varying_in: torch.Tensor) -> torch.Tensor:
    """|A|·m [N, *out] (float64) of an affine map for a 0/1 mask m [N, *in] of its varying inputs.

    Positive exactly where an output reads some varying input: an output whose row is zero on every varying
    input is a constant (bias plus constants), and its absolute row sum is an exact zero.
    """
    return lmap.to(torch.float64).apply_abs(varying_in.to(torch.float64))


def _checked_source(graph: BoundGraph, k: int) -> int:
    """Node k's ``lipschitz_source``, checked to be an earlier node of its shape with an even dim 0."""
    n = graph.nodes[k]
    s = n.lipschitz_source
    if s is None or not 0 <= s < k or tuple(graph.nodes[s].shape) != tuple(n.shape) or n.shape[0] % 2:
        raise ValueError(f"node {k} ('{n.name}') has an invalid lipschitz_source {s}")
    return s


def lipschitz_info(graph: BoundGraph, margin: NormMargin | None = None) -> LipschitzInfo:
    """Propagate certified operator norms and per-row norms through the graph."""
    margin = NormMargin() if margin is None else margin
    glob: list[float] = []
    per: list[torch.Tensor] = []
    varying: list[torch.Tensor] = []  # [1, *shape] bool: coordinates that depend on the input at all
    for k, n in enumerate(graph.nodes):
        if n.kind == "input":
            glob.append(1.0)
            per.append(torch.ones(n.shape, dtype=torch.float64))
            varying.append(torch.ones((1, *n.shape), dtype=torch.bool))
        elif n.kind == "relu":
            glob.append(glob[n.inputs[0]])
            per.append(per[n.inputs[0]])
            varying.append(varying[n.inputs[0]])
        elif n.kind == "add":
            a, b = n.inputs
            varying.append(varying[a] | varying[b])
            g = sum_lipschitz(glob[a], glob[b], not bool((varying[a] & varying[b]).any()), margin)
            p = (per[a] + per[b]) * (1 + margin.relative)
            if n.lipschitz_source is not None:
                s = _checked_source(graph, k)
                g = min(g, glob[s])
                p = torch.minimum(p, pair_max(per[s]).repeat(2, *([1] * (p.dim() - 1))))
            glob.append(g)
            per.append(p)
        else:
            src = n.inputs[0]
            lm = n.lmap.to(torch.float64)
            varying.append(abs_reach(lm, varying[src]) > 0)
            glob.append(with_margin(certified_norm(lm, margin) * glob[src], margin))
            row = torch.sqrt(lm.apply_sq(torch.ones((1, *lm.in_shape), dtype=torch.float64))[0])
            via_rows = row * glob[src]
            via_abs = lm.apply_abs(per[src][None])[0]
            per.append(torch.minimum(via_rows, via_abs) * (1 + margin.relative) + margin.absolute)
    return LipschitzInfo(glob, per, graph.output)
