"""Global and per-neuron ℓ2 Lipschitz bounds of every node of a bound graph (computed once at load).

``global_l2[k]`` bounds ``‖v_k(x) - v_k(y)‖₂ / ‖x - y‖₂`` (product of certified operator norms, sums
at residual Adds); ``per_neuron_l2[k]`` bounds each coordinate's Lipschitz constant separately:
``min(‖A_i‖₂ · global(input), (|A| · per_neuron(input))_i)``.
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


def lipschitz_info(graph: BoundGraph, margin: NormMargin | None = None) -> LipschitzInfo:
    """Propagate certified operator norms and per-row norms through the graph."""
    margin = NormMargin() if margin is None else margin
    glob: list[float] = []
    per: list[torch.Tensor] = []
    for n in graph.nodes:
        if n.kind == "input":
            glob.append(1.0)
            per.append(torch.ones(n.shape, dtype=torch.float64))
        elif n.kind == "relu":
            glob.append(glob[n.inputs[0]])
            per.append(per[n.inputs[0]])
        elif n.kind == "add":
            a, b = n.inputs
            glob.append(with_margin(glob[a] + glob[b], margin))
            per.append((per[a] + per[b]) * (1 + margin.relative))
        else:
            src = n.inputs[0]
            lm = n.lmap.to(torch.float64)
            glob.append(with_margin(certified_norm(lm, margin) * glob[src], margin))
            row = torch.sqrt(lm.apply_sq(torch.ones((1, *lm.in_shape), dtype=torch.float64))[0])
            via_rows = row * glob[src]
            via_abs = lm.apply_abs(per[src][None])[0]
            per.append(torch.minimum(via_rows, via_abs) * (1 + margin.relative) + margin.absolute)
    return LipschitzInfo(glob, per, graph.output)
