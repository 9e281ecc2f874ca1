"""The input set: an ℓ2 or ℓ∞ ball of radius r around x0 in raw pixel units, optionally ∩ [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InputBall:
    """Rows pair a center ``x0 [N, *in_shape]`` with a radius ``radius [N]`` (float64)."""

    x0: torch.Tensor
    radius: torch.Tensor
    norm: str  # "l2" | "linf"
    clip_to_pixel_box: bool

    def __post_init__(self) -> None:
        if self.norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {self.norm!r}")

    def _r(self) -> torch.Tensor:
        return self.radius.reshape(-1, *([1] * (self.x0.dim() - 1)))

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Coordinate-wise bounds containing the set (each |δ_i| ≤ r for both norms)."""
        lo, hi = self.x0 - self._r(), self.x0 + self._r()
        if self.clip_to_pixel_box:
            lo, hi = lo.clamp(min=0.0), hi.clamp(max=1.0)
        return lo, hi

    @property
    def l2_radius(self) -> torch.Tensor:
        """[N] radius of an ℓ2 ball containing the set."""
        if self.norm == "l2":
            return self.radius
        return self.radius * float(self.x0[0].numel()) ** 0.5

    def dual_norm(self, a: torch.Tensor) -> torch.Tensor:
        """Row dual norms of ``a [N, K, n]`` -> [N, K]."""
        return a.norm(dim=-1) if self.norm == "l2" else a.abs().sum(dim=-1)

    def concretize_upper(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Sound upper bound [N, K] of ``max_x a·x + c`` over the set; ``a [N, K, *in]``, ``c [N, K]``."""
        n, k = a.shape[:2]
        af = a.reshape(n, k, -1)
        center = torch.einsum("nki,ni->nk", af, self.x0.reshape(n, -1))
        ball = center + self.radius[:, None] * self.dual_norm(af) + c
        lo, hi = self.box()
        mid, rad = ((lo + hi) / 2).reshape(n, -1), ((hi - lo) / 2).reshape(n, -1)
        box = torch.einsum("nki,ni->nk", af, mid) + torch.einsum("nki,ni->nk", af.abs(), rad) + c
        return torch.minimum(ball, box)
