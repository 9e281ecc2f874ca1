"""Training objectives: InfoNCE, RoCL-style adversarial views (ℓ2 PGD), RRM representation matching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.trainer.pgd import AttackConfig, pgd_ascent


def info_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE = cross-entropy over [positive, negatives]; logits [B, 1+K] already divided by temperature."""
    return F.cross_entropy(logits, labels)


@dataclass(frozen=True)
class PgdConfig:
    """ℓ2 PGD in raw [0, 1] pixel units: radius ``eps``, ``steps`` steps of size ``step_size``."""

    eps: float = 0.5
    steps: int = 3
    step_size: float = 0.25


def rocl_adversarial_views(
    query_loss: Callable[[torch.Tensor], torch.Tensor],
    view: torch.Tensor,
    cfg: PgdConfig,
    gen: torch.Generator,
) -> torch.Tensor:
    """RoCL instance-wise attack: perturb ``view`` [B, C, H, W] in [0, 1] to maximize its contrastive loss
    ``query_loss`` (one scalar per batch) against its own key within ‖δ‖₂ ≤ eps; returns the adversarial
    views in [0, 1]. The loss sees clamp(view + δ, 0, 1), so δ itself is kept in the ball only."""
    fraction = cfg.step_size / cfg.eps if cfg.eps > 0 else 0.0  # a constant step, in units of the radius
    attack = AttackConfig(cfg.steps, 1, fraction, fraction, start="ball", keep_best=False)
    radius = torch.full((view.shape[0],), cfg.eps, dtype=torch.float64)
    delta = pgd_ascent(lambda x: query_loss(x.clamp(0, 1)), view, radius, attack, gen, box=False).delta
    return (view + delta).clamp(0, 1)


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
