"""The encoder composed with an SP layer, as a bound graph on the parameter θ, and its bounds over θ-boxes.

The SP layer ``x0 + A θ`` is folded into every affine consumer of the image (``W(x0 + Aθ) + b =
(W A) θ + (W x0 + b)``), so the first layer is exact in θ and the engine's IBP / CROWN-IBP run on a
k-dimensional input (k ≤ 2). ``crown`` here means forward linear intermediate bounds
(``forward.py``) with CROWN at the output. The parameter box is split into ``pieces`` sub-boxes per
axis and the feature-shift bound is the maximum over them (a union of sound bounds is sound).
"""

from __future__ import annotations

import numpy as np
import torch

from services.perturb.engine.ball import InputBall
from services.perturb.engine.crown import CrownConfig, output_shift_bounds
from services.perturb.engine.ibp import interval_bounds
from services.perturb.engine.linear_maps import DenseMap
from services.perturb.engine.lipschitz import LipschitzInfo
from services.perturb.engine.onnx_graph import BoundGraph, Node, prune
from services.perturb.engine.operator_norms import NormMargin
from services.perturb.semantic.forward import forward_bounds

# no per-neuron Lipschitz tightening on θ-graphs (finite, so 0·L stays 0 for degenerate boxes)
_NO_LIPSCHITZ = 1e30


def compose(graph: BoundGraph, x0: np.ndarray, a: np.ndarray) -> BoundGraph:
    """Bound graph of θ [k] ↦ f(x0 + A θ) for one image x0 [*in_shape] and basis A [k, *in_shape]."""
    k = a.shape[0]
    at = torch.as_tensor(a, dtype=torch.float64)
    # standard strides, as in BoundEngine._prepare: torch picks its conv kernels by them
    x = torch.as_tensor(x0, dtype=torch.float64).clone(memory_format=torch.contiguous_format)
    in_shape = tuple(graph.input_shape)
    pixel = Node("affine", (0,), in_shape, "sp_layer", DenseMap(at.reshape(k, -1).T, (k,), in_shape), x)
    nodes = [Node("input", (), (k,), "theta"), pixel]
    for n in graph.nodes[1:]:
        ins = tuple(i + 1 for i in n.inputs)
        if n.kind == "affine" and ins == (1,):
            # fold the SP layer into this consumer of the image
            w = n.lmap.apply(at.reshape(k, *in_shape)).reshape(k, -1).T  # [out_flat, k]
            bias = n.lmap.apply(x[None])[0] + n.bias
            nodes.append(Node("affine", (0,), n.shape, n.name + "+sp", DenseMap(w, (k,), n.shape), bias))
        else:
            source = None if n.lipschitz_source is None else n.lipschitz_source + 1  # node 0 -> the SP layer
            nodes.append(Node(n.kind, ins, n.shape, n.name, n.lmap, n.bias, source))
    return prune(BoundGraph(nodes, graph.output + 1))


def _no_lipschitz(graph: BoundGraph) -> LipschitzInfo:
    per = [torch.full(n.shape, _NO_LIPSCHITZ, dtype=torch.float64) for n in graph.nodes]
    return LipschitzInfo([_NO_LIPSCHITZ] * len(graph.nodes), per, graph.output)


class ComposedBounds:
    """Sound upper bounds of ‖f(x0 + Aθ) − f(x0)‖₂ over |θ_j| ≤ t, for one image."""

    def __init__(
        self,
        graph: BoundGraph,
        x0: np.ndarray,
        a: np.ndarray,
        *,
        pieces: int = 4,
        crown: CrownConfig | None = None,
        margin: NormMargin | None = None,
    ) -> None:
        self.graph = compose(graph, x0, a)
        self.k, self.pieces = a.shape[0], pieces
        self._crown = CrownConfig() if crown is None else crown
        self._margin = NormMargin() if margin is None else margin
        self._lip = _no_lipschitz(self.graph)
        with torch.no_grad():
            self.f0 = self.graph.forward(torch.zeros(1, self.k, dtype=torch.float64))[0]  # f(x0) [D]

    def _boxes(self, t: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        offsets = (2 * np.arange(self.pieces) + 1) / self.pieces - 1.0
        grid = np.array(np.meshgrid(*([offsets] * self.k), indexing="ij")).reshape(self.k, -1).T  # [P, k]
        owner = np.repeat(np.arange(t.size), len(grid))
        centers = (grid[None] * t[:, None, None]).reshape(-1, self.k)
        half = np.repeat(t / self.pieces, len(grid))
        return owner, torch.as_tensor(centers), torch.as_tensor(half)

    @torch.no_grad()
    def shift_bound(self, t: np.ndarray, method: str = "crown_ibp") -> np.ndarray:
        """[T] upper bounds of the feature shift over |θ_j| ≤ t_i; method: ibp | crown_ibp | crown."""
        if method not in ("ibp", "crown_ibp", "crown"):
            raise ValueError(f"method must be 'ibp', 'crown_ibp' or 'crown', got {method!r}")
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        owner, centers, half = self._boxes(t)
        ball = InputBall(centers, half, "linf", False)
        vals = self.graph.forward_all(centers)
        bounds = interval_bounds(self.graph, ball, vals, self._lip)
        if method == "crown":  # forward linear intermediate bounds, then CROWN at the output
            bounds = forward_bounds(self.graph, centers, half, bounds)
        f0 = self.f0.expand(len(centers), -1)
        lo, hi = (v.reshape(f0.shape) for v in bounds[self.graph.output])
        u = torch.maximum(hi - f0, f0 - lo).clamp(min=0).norm(dim=1)
        if method != "ibp":
            shift = output_shift_bounds(self.graph, ball, f0, bounds, self._margin, self._crown)
            u = torch.minimum(u, torch.minimum(shift.per_feature, shift.linear_part))
        out = np.zeros(t.size)
        np.maximum.at(out, owner, u.numpy())
        return out
