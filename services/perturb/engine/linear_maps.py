"""Linear maps of one sample's tensor (conv, dense, per-element scale, reshape, channel pairing) and their
transposes.

Every map acts on batched tensors ``[N, *in_shape] -> [N, *out_shape]``; ``apply_t`` is the exact
transpose (used by CROWN's backward pass), ``apply_abs`` multiplies by ``|A|`` elementwise (interval
arithmetic) and ``apply_sq`` by ``A∘A`` (row ℓ2 norms: ``sqrt(apply_sq(1))``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Conv2dMap:
    """Zero-padded 2-D convolution without bias; weight [O, I, kh, kw]; pads (top, left, bottom, right)."""

    weight: torch.Tensor
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_shape: Shape

    @property
    def out_shape(self) -> Shape:
        _, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        ho = (h + self.pads[0] + self.pads[2] - kh) // self.stride[0] + 1
        wo = (w + self.pads[1] + self.pads[3] - kw) // self.stride[1] + 1
        return (int(self.weight.shape[0]), ho, wo)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        t, left, b, r = self.pads
        return F.pad(x, (left, r, t, b)) if any(self.pads) else x

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._pad(x), weight.to(x.dtype), stride=self.stride)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight.abs())

    def apply_sq(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight * self.weight)

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        _, h, w = self.in_shape
        t, left, b, r = self.pads
        hp, wp = h + t + b, w + left + r
        kh, kw = self.weight.shape[2:]
        ho, wo = y.shape[-2:]
        out_pad = (hp - ((ho - 1) * self.stride[0] + kh), wp - ((wo - 1) * self.stride[1] + kw))
        x = F.conv_transpose2d(y, self.weight.to(y.dtype), stride=self.stride, output_padding=out_pad)
        return x[..., t : t + h, left : left + w]

    def to(self, dtype: torch.dtype) -> Conv2dMap:
        return Conv2dMap(self.weight.to(dtype), self.stride, self.pads, self.in_shape)


@dataclass(frozen=True)
class DenseMap:
    """Dense matrix ``W [out_flat, in_flat]`` acting on flattened samples."""

    weight: torch.Tensor
    in_shape: Shape
    out_shape: Shape

    def _mm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ weight.to(x.dtype).T).reshape(x.shape[0], *self.out_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._mm(x, self.weight)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return self._mm(x, self.weight.abs())

    def apply_sq(self, x: torch.Tensor) -> torch.Tensor:
        return self._mm(x, self.weight * self.weight)

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        return (y.flatten(1) @ self.weight.to(y.dtype)).reshape(y.shape[0], *self.in_shape)

    def to(self, dtype: torch.dtype) -> DenseMap:
        return DenseMap(self.weight.to(dtype), self.in_shape, self.out_shape)


@dataclass(frozen=True)
class ScaleMap:
    """Elementwise multiplication by ``scale`` (shape = in_shape = out_shape)."""

    scale: torch.Tensor

    @property
    def in_shape(self) -> Shape:
        return tuple(self.scale.shape)

    @property
    def out_shape(self) -> Shape:
        return tuple(self.scale.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.abs().to(x.dtype)

    def apply_sq(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.scale * self.scale).to(x.dtype)

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale.to(y.dtype)

    def per_channel(self) -> torch.Tensor | None:
        """The per-channel scale [C] if the scale is constant over H, W of a [C, H, W] tensor, else None."""
        if self.scale.dim() != 3:
            return None
        first = self.scale[:, :1, :1]
        return self.scale[:, 0, 0].clone() if torch.equal(self.scale, first.expand_as(self.scale)) else None

    def to(self, dtype: torch.dtype) -> ScaleMap:
        return ScaleMap(self.scale.to(dtype))


@dataclass(frozen=True)
class ReshapeMap:
    """Reshape (e.g. Flatten) of one sample; an isometry."""

    in_shape: Shape
    out_shape: Shape

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    apply_abs = apply
    apply_sq = apply

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], *self.in_shape)

    def to(self, dtype: torch.dtype) -> ReshapeMap:
        return self


PAIR_MODES = ("diff", "swap", "split")


@dataclass(frozen=True)
class PairMap:
    """The ±1 maps that lower MaxMin (pairs ``(i, i + h)`` along dim 0 of the per-sample shape, h = C/2).

    With a = x[:h], b = x[h:]: ``diff`` [C, ...] -> [h, ...] is a − b; ``swap`` [C, ...] -> [C, ...] is
    [b; a]; ``split`` [h, ...] -> [C, ...] is r ↦ [r; −r]. MaxMin(x) = swap(x) + split(relu(diff(x))):
    first half b + relu(a − b) = max(a, b), second half a − relu(a − b) = min(a, b). ``shape`` is the
    per-sample shape of the paired (C-channel) side. Exact transposes: diffᵀ = split, swapᵀ = swap.
    """

    mode: str
    shape: Shape  # the C-channel side: [C, ...] with C even

    def __post_init__(self) -> None:
        if self.mode not in PAIR_MODES:
            raise ValueError(f"mode must be one of {PAIR_MODES}, got {self.mode!r}")
        if len(self.shape) < 1 or self.shape[0] % 2:
            raise ValueError(f"PairMap needs an even dim 0, got shape {self.shape}")

    @property
    def half(self) -> int:
        return self.shape[0] // 2

    @property
    def _half_shape(self) -> Shape:
        return (self.half, *self.shape[1:])

    @property
    def in_shape(self) -> Shape:
        return self._half_shape if self.mode == "split" else tuple(self.shape)

    @property
    def out_shape(self) -> Shape:
        return self._half_shape if self.mode == "diff" else tuple(self.shape)

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.half
        return x[:, :h], x[:, h:]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "diff":
            a, b = self._halves(x)
            return a - b
        if self.mode == "swap":
            a, b = self._halves(x)
            return torch.cat([b, a], dim=1)
        return torch.cat([x, -x], dim=1)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "diff":
            a, b = self._halves(x)
            return a + b
        if self.mode == "swap":
            return self.apply(x)
        return torch.cat([x, x], dim=1)

    apply_sq = apply_abs  # every entry is 0 or ±1

    def apply_t(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "diff":
            return torch.cat([y, -y], dim=1)
        if self.mode == "swap":
            return self.apply(y)  # a swap is its own transpose (and inverse)
        a, b = self._halves(y)
        return a - b

    def apply_abs_t(self, y: torch.Tensor) -> torch.Tensor:
        """|A|ᵀ y."""
        if self.mode == "diff":
            return torch.cat([y, y], dim=1)
        if self.mode == "swap":
            return self.apply(y)
        a, b = self._halves(y)
        return a + b

    def to(self, dtype: torch.dtype) -> PairMap:
        return self


LinearMap = Conv2dMap | DenseMap | ScaleMap | ReshapeMap | PairMap


def _diff_rows(w: torch.Tensor) -> torch.Tensor:
    """w[:h] − w[h:] along dim 0 (the output channels / rows paired by a ``diff`` PairMap)."""
    h = w.shape[0] // 2
    return w[:h] - w[h:]


def compose(first: LinearMap, second: LinearMap) -> LinearMap | None:
    """The map ``second ∘ first`` as a single map of a supported kind, or None if not representable."""
    if isinstance(first, ReshapeMap) and first.in_shape == first.out_shape:
        return second
    if isinstance(second, ReshapeMap) and second.in_shape == second.out_shape:
        return first
    if isinstance(second, PairMap) or isinstance(first, PairMap):
        # only diff ∘ (conv | dense) folds (a conv with the paired output channels subtracted: half the
        # channels); a swap or split is left as its own node (MaxMin's Lipschitz rule names its input)
        if isinstance(second, PairMap) and second.mode == "diff" and second.in_shape == first.out_shape:
            if isinstance(first, Conv2dMap):
                return Conv2dMap(_diff_rows(first.weight), first.stride, first.pads, first.in_shape)
            if isinstance(first, DenseMap):
                w = first.weight.reshape(*first.out_shape, -1)
                w = _diff_rows(w).reshape(-1, first.weight.shape[1])
                return DenseMap(w, first.in_shape, second.out_shape)
        return None
    if isinstance(first, ReshapeMap) and isinstance(second, ReshapeMap):
        return ReshapeMap(first.in_shape, second.out_shape)
    if isinstance(first, ReshapeMap) and isinstance(second, DenseMap):
        return DenseMap(second.weight, first.in_shape, second.out_shape)
    if isinstance(second, ReshapeMap) and isinstance(first, DenseMap):
        return DenseMap(first.weight, first.in_shape, second.out_shape)
    if isinstance(first, ScaleMap) and isinstance(second, ScaleMap):
        return ScaleMap(first.scale * second.scale)
    if isinstance(first, ScaleMap) and isinstance(second, DenseMap):
        return DenseMap(second.weight * first.scale.reshape(1, -1), second.in_shape, second.out_shape)
    if isinstance(first, DenseMap) and isinstance(second, ScaleMap):
        return DenseMap(first.weight * second.scale.reshape(-1, 1), first.in_shape, first.out_shape)
    if isinstance(first, DenseMap) and isinstance(second, DenseMap):
        return DenseMap(second.weight @ first.weight, first.in_shape, second.out_shape)
    if isinstance(first, ScaleMap) and isinstance(second, Conv2dMap):
        c = first.per_channel()
        if c is not None:
            w = second.weight * c.reshape(1, -1, 1, 1)
            return Conv2dMap(w, second.stride, second.pads, second.in_shape)
    if isinstance(first, Conv2dMap) and isinstance(second, ScaleMap):
        c = second.per_channel()
        if c is not None:
            return Conv2dMap(first.weight * c.reshape(-1, 1, 1, 1), first.stride, first.pads, first.in_shape)
    return None
