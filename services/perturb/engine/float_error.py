"""A-priori bound on the rounding error of the *served* encoder: ‖f̂(x) − f(x)‖₂ over an input set.

The engine bounds the exact network f in float64; the Feature-API serves f̂, the same ONNX graph
evaluated in a floating-point format with unit roundoff u (float32: u = 2⁻²⁴). The client certifies
around the served feature f̂(x), so a certificate needs

    ‖f̂(x′) − f̂(x)‖₂ ≤ ‖f(x′) − f(x)‖₂ + E(ball) + E(x)   for every x′ in the ball,

where E bounds ‖f̂ − f‖₂ at every point of a set. This module computes E; the engine adds
``E(ball) + E(x)`` to every feature-shift bound (the "floating-point margin").

Error model (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1, Lemma 3.1): a dot
product of length k plus a bias, summed in ANY order (blocked, pairwise, FMA, split-K), satisfies

    |fl(w·x + b) − (w·x + b)| ≤ γ_{k+1} (|w|·|x| + |b|),   γ_n = n·u / (1 − n·u).

Each served op of the *unfolded* graph (one node per ONNX op: normalization, conv, BN, pooling,
Gemm, constant Add/Mul) gets that local error, with |x| the magnitude of its computed input: the
exact interval bound over the set (IBP on the unfolded graph, intersected with the folded graph's
tighter bounds where the engine has them) plus the error already accumulated. Errors are carried
downstream two ways, both sound, and the smaller is kept at every node: elementwise through |W|,
and in ℓ2 through the layer's certified operator norm (ReLU is 1-Lipschitz per element). Residual
Adds round once more. The input itself is rounded to the format (the client may send float64).

MaxMin (Slice / Max / Min / Concat) is served without rounding: the runtime's output is exactly
MaxMin(x̂) of its computed input x̂. The bound graph lowers it to swap(x) + split(relu(diff(x))), whose
nodes the runtime never computes; the lowered "add" (``lipschitz_source`` s) therefore gets MaxMin's
own error instead of the lowered nodes' charged rounding: elementwise |max(â, b̂) − max(a, b)| ≤
max(|â − a|, |b̂ − b|) (same for min), and in ℓ2 the pair sort is 1-Lipschitz, so ‖error‖ ≤ ‖error(s)‖.
The lowered nodes still get an error bound (never read downstream: their only consumer is that add).

Slack for what the runtime may do to the graph: ONNX Runtime folds BatchNorm / Mul / Add into a
conv's weights in the serving format, which perturbs each weight by a few u; every dot product is
charged ``FUSION_SLACK`` extra terms (γ_{k+1+8} instead of γ_{k+1}), which dominates such folding.
A BatchNormalization's bias B − s·mean is itself precomputed in the serving format, so its rounding
scales with |B| + |s·mean| however much they cancel: the node charges that (``Node.bias_terms``)
instead of |bias|.
Underflow: each term may flush to zero, an absolute error of at most the smallest normal number
per term, and so may each input pixel rounded to the format. Overflow: a magnitude bound above the
format's largest finite value gives E = ∞.

What the model does NOT cover: convolutions computed by Winograd or FFT algorithms (their error is
not of the dot-product form). The CPU runtime (MLAS) computes convolutions as GEMMs; the
Feature-API pins cuDNN to implicit-GEMM (``cudnn_conv_algo_search = DEFAULT``) and serves with
TensorRT only in the reduced-precision mode, whose format here is the coarser one below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.perturb.engine.ball import InputBall
from services.perturb.engine.ibp import Bounds, interval_bounds
from services.perturb.engine.linear_maps import Conv2dMap, DenseMap, LinearMap, PairMap, ReshapeMap, ScaleMap
from services.perturb.engine.lipschitz import LipschitzInfo, lipschitz_info, pair_max
from services.perturb.engine.onnx_graph import BoundGraph
from services.perturb.engine.operator_norms import certified_norm

FUSION_SLACK = 8  # extra rounding terms per dot product: the runtime's weight folding (see above)


@dataclass(frozen=True)
class FloatFormat:
    """The arithmetic the served model runs in: unit roundoff, smallest normal, largest finite value."""

    name: str
    unit_roundoff: float
    smallest_normal: float
    largest_finite: float


FLOAT32 = FloatFormat("float32", 2.0**-24, 2.0**-126, 3.4028234663852886e38)
# TF32 tensor cores (10-bit mantissa, float32 range) and TensorRT FP16 engines (10-bit mantissa,
# fp16 range): one format that is coarser than both, used when reduced precision is allowed
REDUCED = FloatFormat("reduced", 2.0**-11, 2.0**-14, 65504.0)
FORMATS = {f.name: f for f in (FLOAT32, REDUCED)}


def gamma(n: int, u: float) -> float:
    """γ_n = n·u / (1 − n·u) (Higham's constant); ∞ when n·u ≥ 1."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 1.0 else float("inf")


def dot_length(lmap: LinearMap) -> int:
    """The largest number of nonzero terms in one output of the map (0 for a pure reshape)."""
    if isinstance(lmap, ReshapeMap):
        return 0
    if isinstance(lmap, PairMap):  # lowered MaxMin parts (not served; charged as if they were)
        return 2 if lmap.mode == "diff" else 1
    if isinstance(lmap, ScaleMap):
        return 1
    if isinstance(lmap, Conv2dMap):
        return int((lmap.weight != 0).flatten(1).sum(1).max()) if lmap.weight.numel() else 0
    if isinstance(lmap, DenseMap):
        return int((lmap.weight != 0).sum(1).max()) if lmap.weight.numel() else 0
    raise TypeError(f"no error model for {type(lmap).__name__}")


@dataclass
class _NodeModel:
    """Per unfolded node: dot length k (terms incl. bias), operator norm, whether it rounds at all, and
    (affine nodes) the magnitude of the bias terms its rounding is charged at (``Node.bias_terms``, else
    |bias|)."""

    terms: int
    op_norm: float
    rounds: bool
    bias_magnitude: torch.Tensor | None = None


def same_value_pairs(unfolded: BoundGraph, folded: BoundGraph) -> dict[int, int]:
    """{unfolded node index: folded node index} for the nodes whose exact values are the same function of
    the input, so that the folded graph's (tighter) intervals may replace the unfolded one's.

    Pairs come from each folded node's ``value_of`` (set by ``fold_affine``), plus the input and the output
    (same model, same function); a folded graph without provenance pairs only those two. Pairing two nodes
    that compute different values would let the folded intervals exclude the true value (an unsound
    margin), so every pair is also checked on random inputs in [0, 1]: a pair whose values differ by more
    than float64 folding can explain is dropped (the unfolded graph's own, looser intervals stay), and a
    provenance that names a node of another kind or shape raises ``ValueError``.
    """
    pairs: dict[int, int] = {0: 0}
    if tuple(unfolded.nodes[unfolded.output].shape) == tuple(folded.nodes[folded.output].shape):
        pairs[unfolded.output] = folded.output
    for j, fn in enumerate(folded.nodes):
        i = fn.value_of
        if i is None:
            continue
        if not 0 <= i < len(unfolded.nodes):
            raise ValueError(f"folded node {j} ({fn.name!r}) names unfolded node {i}, which does not exist")
        un = unfolded.nodes[i]
        if un.kind != fn.kind or tuple(un.shape) != tuple(fn.shape):
            raise ValueError(f"folded node {j} ({fn.name!r}, {fn.kind} {tuple(fn.shape)}) cannot compute the "
                             f"value of unfolded node {i} ({un.name!r}, {un.kind} {tuple(un.shape)})")
        pairs[i] = j
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, *unfolded.input_shape, generator=gen, dtype=torch.float64)
    vu, vf = unfolded.forward_all(x), folded.to(torch.float64).forward_all(x)
    scale = 1.0 + max(float(v.abs().max()) for v in vu)  # the largest intermediate bounds folding's error
    return {i: j for i, j in pairs.items() if float((vu[i] - vf[j]).abs().max()) <= 1e-9 * scale}


class FloatErrorModel:
    """E(set) for the served graph; built once per model from the unfolded bound graph."""

    def __init__(self, unfolded: BoundGraph, folded: BoundGraph, fmt: FloatFormat = FLOAT32) -> None:
        self.graph, self.format = unfolded, fmt
        self.lipschitz: LipschitzInfo = lipschitz_info(unfolded)
        self._nodes: list[_NodeModel] = []
        for n in unfolded.nodes:
            if n.kind == "affine":
                k = dot_length(n.lmap)  # 0 only for a pure reshape: exact unless it adds a bias
                bias = n.bias.abs() if n.bias_terms is None else n.bias_terms
                rounds = k > 0 or bool(torch.count_nonzero(bias))
                terms = max(k, 1) + 1 + FUSION_SLACK if rounds else 0
                self._nodes.append(_NodeModel(terms, certified_norm(n.lmap.to(torch.float64)), rounds, bias))
            else:
                self._nodes.append(_NodeModel(1, 1.0, n.kind == "add"))
        self._same_value = same_value_pairs(unfolded, folded)

    def centers(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """Exact values of every unfolded node at x0 [N, *input_shape] (float64)."""
        return self.graph.forward_all(x0.to(torch.float64))

    def bound(
        self,
        ball: InputBall,
        centers: list[torch.Tensor],
        folded_bounds: Bounds | None = None,
    ) -> torch.Tensor:
        """[N] upper bound of ‖f̂(x′) − f(x′)‖₂ over every x′ in ``ball`` (``centers``: at ball.x0)."""
        overrides = None
        if folded_bounds is not None:
            overrides = {i: folded_bounds[j] for i, j in self._same_value.items()}
        bounds = interval_bounds(self.graph, ball, centers, self.lipschitz, overrides)
        return self.from_intervals(bounds)

    def at_points(self, centers: list[torch.Tensor]) -> torch.Tensor:
        """[N] upper bound of ‖f̂(x) − f(x)‖₂ at the points whose exact node values are ``centers``."""
        return self.from_intervals([(c, c) for c in centers])

    def from_intervals(self, bounds: Bounds) -> torch.Tensor:
        """[N] error bound given exact-value intervals of every unfolded node over the input set."""
        u, tiny, big = self.format.unit_roundoff, self.format.smallest_normal, self.format.largest_finite
        elem: list[torch.Tensor] = []  # per-element bound of |computed − exact|
        l2: list[torch.Tensor] = []  # [N] bound of ‖computed − exact‖₂
        mag: list[torch.Tensor] = []  # per-element bound of |computed value|
        for i, n in enumerate(self.graph.nodes):
            lo, hi = bounds[i]
            exact = torch.maximum(lo.abs(), hi.abs())
            nm = self._nodes[i]
            if n.kind == "input":  # the served input is the image rounded to the format (or flushed to 0)
                e = u * exact + tiny
                el, e2 = e, e.flatten(1).norm(dim=1)
            elif n.kind == "relu":
                el, e2 = elem[n.inputs[0]], l2[n.inputs[0]]
            elif n.kind == "add" and n.lipschitz_source is not None:  # MaxMin: exact on computed values
                src = n.lipschitz_source
                pair = pair_max(elem[src], 1)
                el, e2 = torch.cat([pair, pair], dim=1), l2[src]
            elif n.kind == "add":
                a, b = n.inputs
                local = u * (mag[a] + mag[b]) + tiny
                el = elem[a] + elem[b] + local
                e2 = l2[a] + l2[b] + local.flatten(1).norm(dim=1)
            else:
                src = n.inputs[0]
                carried_el = n.lmap.apply_abs(elem[src])
                carried_l2 = nm.op_norm * l2[src] * (1 + 1e-6)
                if nm.rounds:
                    g = gamma(nm.terms, u)
                    local = g * (n.lmap.apply_abs(mag[src]) + nm.bias_magnitude) + nm.terms * tiny
                else:
                    local = torch.zeros_like(exact)
                el = carried_el + local
                e2 = carried_l2 + local.flatten(1).norm(dim=1)
            el = torch.minimum(el, e2.reshape(-1, *([1] * (el.dim() - 1))))
            e2 = torch.minimum(e2, el.flatten(1).norm(dim=1))
            m = exact + el
            overflow = (m.flatten(1).amax(dim=1) > big) | ~torch.isfinite(m.flatten(1)).all(dim=1)
            e2 = torch.where(overflow, torch.full_like(e2, float("inf")), e2)
            elem.append(el)
            l2.append(e2)
            mag.append(m)
        return l2[self.graph.output]
