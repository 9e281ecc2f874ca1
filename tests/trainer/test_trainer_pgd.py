"""The one PGD (services/trainer/pgd.py) against closed forms, and RoCL's views against a direct ℓ2 PGD."""

from __future__ import annotations

import pytest
import torch

from services.trainer.objectives import PgdConfig, rocl_adversarial_views
from services.trainer.pgd import AttackConfig, pgd_ascent, project


def _linear(w: torch.Tensor):
    return lambda x: (x.flatten(1) * w).sum(dim=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_objective_reaches_its_closed_form_maximum(norm):
    """max over ‖δ‖ ≤ r of w·(x + δ) is w·x + r‖w‖₂ (ℓ2) or w·x + r‖w‖₁ (ℓ∞)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    x = torch.rand(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    radius = torch.tensor([0.1, 0.7], dtype=torch.float64)
    result = pgd_ascent(_linear(w), x, radius, AttackConfig(steps=50, restarts=2), gen, norm=norm, box=False)
    dual = w.norm(dim=1) if norm == "l2" else w.abs().sum(dim=1)
    best = (x.flatten(1) * w).sum(dim=1) + radius * dual
    assert torch.all(result.value <= best + 1e-9)
    assert torch.all(result.value >= best - 1e-3 * radius * dual)
    size = result.delta.flatten(1).norm(dim=1) if norm == "l2" else result.delta.flatten(1).abs().amax(dim=1)
    assert torch.all(size <= radius * (1 + 1e-12))


def test_box_is_kept_per_row_and_projection_stays_in_the_ball():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    radius = torch.full((3,), 2.0, dtype=torch.float64)
    box = torch.tensor([True, False, True])
    delta = pgd_ascent(_linear(torch.ones(16, dtype=torch.float64)), x, radius, AttackConfig(steps=10), gen,
                       box=box).delta
    moved = x + delta
    assert torch.all((moved[box] >= 0) & (moved[box] <= 1)) and moved[~box].max() > 1
    wild = 5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    projected = project(wild, x, radius, "l2", box)
    assert torch.all(projected.flatten(1).norm(dim=1) <= radius * (1 + 1e-12))


def _direct_l2_pgd(loss_fn, images, cfg: PgdConfig, gen):
    """RoCL's attack written out: uniform-radius random start, normalized ℓ2 steps, the loss on the clamped
    point, δ projected onto the ball only; the last iterate."""

    def norm(t):
        return t.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]

    delta = torch.randn(images.shape, generator=gen).to(images)
    scale = torch.rand(images.shape[0], generator=gen).to(images)[:, None, None, None]
    delta = delta / norm(delta) * cfg.eps * scale
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn((images + delta).clamp(0, 1)), delta)
        with torch.no_grad():
            delta = delta + cfg.step_size * grad / norm(grad)
            delta = delta * (cfg.eps / norm(delta)).clamp(max=1.0)
    return (images + delta.detach()).clamp(0, 1)


@pytest.mark.parametrize("cfg", [PgdConfig(), PgdConfig(eps=0.3, steps=4, step_size=0.1)])
def test_rocl_views_are_bit_identical_to_the_direct_attack(cfg):
    """Training results do not move: the generic ascent reproduces the trainer's attack to the bit."""
    images = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    w = torch.randn(64, generator=torch.Generator().manual_seed(3))

    def loss(x):
        return torch.logsumexp(torch.stack([x.flatten(1) @ w, (x.flatten(1) ** 2).sum(dim=1)]), dim=0).mean()

    ours = rocl_adversarial_views(loss, images, cfg, torch.Generator().manual_seed(4))
    direct = _direct_l2_pgd(loss, images, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(ours, direct)
