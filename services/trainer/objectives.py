"""Training objectives: InfoNCE, RoCL-style adversarial views (ℓ2 PGD), RRM representation matching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def info_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE = cross-entropy over [positive, negatives]; logits [B, 1+K] already divided by temperature."""
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class PgdConfig:
    """ℓ2 PGD in raw [0, 1] pixel units: radius ``eps``, ``steps`` steps of size ``step_size``."""

    eps: float = 0.5
    steps: int = 3
    step_size: float = 0.25


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]


def pgd_l2(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    cfg: PgdConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """Images [B, C, H, W] in [0, 1] that approximately maximize ``loss_fn`` within ‖δ‖₂ ≤ eps."""
    delta = torch.randn(images.shape, generator=gen).to(images)
    delta = (
        delta
        / _per_sample_norm(delta)
        * cfg.eps
        * torch.rand(images.shape[0], generator=gen).to(images)[:, None, None, None]
    )
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        x_adv = (images + delta).clamp(0, 1)
        (grad,) = torch.autograd.grad(loss_fn(x_adv), delta)
        with torch.no_grad():
            delta = delta + cfg.step_size * grad / _per_sample_norm(grad)
            delta = delta * (cfg.eps / _per_sample_norm(delta)).clamp(max=1.0)
    return (images + delta.detach()).clamp(0, 1)


def rocl_adversarial_views(
    query_loss: Callable[[torch.Tensor], torch.Tensor],
    view: torch.Tensor,
    cfg: PgdConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """RoCL instance-wise attack: perturb ``view`` to maximize its contrastive loss against its own key."""
    return pgd_l2(query_loss, view, cfg, gen)


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 − cos(student_i, teacher_i) over a batch of features [B, D]."""
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def rrm_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    class_logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """Robust Representation Matching: cosine distance to the teacher's features + ce_weight · CE."""
    loss = cosine_distance(student, teacher)
    if ce_weight > 0:
        if class_logits is None or labels is None:
            raise ValueError("ce_weight > 0 needs class_logits and labels")
        loss = loss + ce_weight * F.cross_entropy(class_logits, labels)
    return loss
