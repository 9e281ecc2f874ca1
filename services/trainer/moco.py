"""MoCo v2 builder: query encoder + MLP head, momentum key encoder, queue of negatives -> (logits, labels)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MocoConfig:
    """MoCo hyper-parameters: projection width, queue length K, key momentum m, temperature T."""

    proj_dim: int = 64
    queue_size: int = 4096
    momentum: float = 0.99
    temperature: float = 0.2


class MocoOutput(NamedTuple):
    """logits [nB, 1+K] (column 0 = positive), labels [nB] (all zero), features [nB, D] of the queries."""

    logits: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor


def projection_head(in_dim: int, out_dim: int) -> nn.Module:
    """MLP head (training only, never exported): Linear -> BN -> ReLU -> Linear.

    The BN (as in MoCo v3) removes the common component that a BN-free ReLU encoder's features share;
    without it the projections start nearly collinear and contrastive learning stalls.
    """
    return nn.Sequential(
        nn.Linear(in_dim, in_dim), nn.BatchNorm1d(in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim)
    )


@torch.no_grad()
def _gather_all(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class MoCo(nn.Module):
    """Momentum contrast around an encoder; owns no loss and no optimizer."""

    def __init__(self, encoder: nn.Module, feature_dim: int, config: MocoConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.encoder_q = encoder
        self.head_q = projection_head(feature_dim, config.proj_dim)
        self.encoder_k = copy.deepcopy(encoder)
        self.head_k = copy.deepcopy(self.head_q)
        for p in [*self.encoder_k.parameters(), *self.head_k.parameters()]:
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        queue = F.normalize(torch.randn(config.queue_size, config.proj_dim, generator=gen), dim=1)
        self.register_buffer("queue", queue)  # [K, proj_dim], unit rows
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key ← m·key + (1 − m)·query for encoder and head parameters."""
        m = self.config.momentum
        pairs = [(self.encoder_q, self.encoder_k), (self.head_q, self.head_k)]
        for q_mod, k_mod in pairs:
            for pq, pk in zip(q_mod.parameters(), k_mod.parameters(), strict=False):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)
            for bq, bk in zip(q_mod.buffers(), k_mod.buffers(), strict=False):
                bk.copy_(bq)

    @torch.no_grad()
    def encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Unit-norm key projections [B, proj_dim] from the momentum encoder (no update)."""
        return F.normalize(self.head_k(self.encoder_k(im_k)), dim=1)

    def query_logits(self, im_q: torch.Tensor, keys: torch.Tensor) -> MocoOutput:
        """Logits of queries [nB, ...] against their keys [B, P] (query i ↔ key i mod B) and the queue."""
        features = self.encoder_q(im_q)
        q = F.normalize(self.head_q(features), dim=1)
        k = keys.repeat(q.shape[0] // keys.shape[0], 1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach().T
        logits = torch.cat([l_pos, l_neg], dim=1) / self.config.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return MocoOutput(logits, labels, features)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        k_size = self.queue.shape[0]
        keys = _gather_all(keys)[-k_size:]
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(keys.shape[0], device=keys.device)) % k_size
        self.queue[idx] = keys
        self.queue_ptr.fill_((ptr + keys.shape[0]) % k_size)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> MocoOutput:
        """Queries [nB, C, H, W] (n views per key), keys [B, C, H, W] -> MocoOutput; updates keys, queue."""
        self.momentum_update()
        keys = self.encode_keys(im_k)
        out = self.query_logits(im_q, keys)
        self._enqueue(keys)
        return out
