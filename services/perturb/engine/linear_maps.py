"""Linear maps of one sample's tensor (conv, dense, per-element scale, reshape) and their transposes.

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


LinearMap = Conv2dMap | DenseMap | ScaleMap | ReshapeMap


def compose(first: LinearMap, second: LinearMap) -> LinearMap | None:
    """The map ``second ∘ first`` as a single map of a supported kind, or None if not representable."""
    if isinstance(first, ReshapeMap) and first.in_shape == first.out_shape:
        return second
    if isinstance(second, ReshapeMap) and second.in_shape == second.out_shape:
        return first
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
