"""Batched, generator-seeded augmentations for small grayscale images (torch on tensors)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the random view; scales are area fractions, jitters are absolute in [0, 1] units."""

    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    noise_std: float = 0.05
    noise_p: float = 0.5


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_resized_crop(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Crop a random box of each image and resize it back to full size (bilinear); images [B, C, H, W]."""
    b = images.shape[0]
    area = _uniform(b, *cfg.crop_scale, gen)
    log_r = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen)
    ratio = torch.exp(log_r)
    # Box half-sizes in normalized [-1, 1] coordinates, clipped to fit inside the image.
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * (2 * torch.rand(b, generator=gen) - 1)
    ty = (1 - sy) * (2 * torch.rand(b, generator=gen) - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(images: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    mask = (torch.rand(images.shape[0], generator=gen) < p).to(images.device)
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def color_jitter(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random brightness shift and contrast scaling about each image's mean, applied with ``jitter_p``."""
    b = images.shape[0]
    apply = (torch.rand(b, generator=gen) < cfg.jitter_p).float()
    shift = _uniform(b, -cfg.brightness, cfg.brightness, gen) * apply
    scale = 1 + _uniform(b, -cfg.contrast, cfg.contrast, gen) * apply
    shift, scale = shift.to(images)[:, None, None, None], scale.to(images)[:, None, None, None]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * scale + mean + shift


def gaussian_noise(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Add N(0, noise_std^2) pixel noise to each image with probability ``noise_p``."""
    b = images.shape[0]
    apply = (torch.rand(b, generator=gen) < cfg.noise_p).float().to(images)[:, None, None, None]
    noise = torch.randn(images.shape, generator=gen).to(images)
    return images + cfg.noise_std * apply * noise


def random_view(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """One random view of a batch: images [B, C, H, W] in [0, 1] -> same shape, clipped to [0, 1]."""
    x = random_resized_crop(images, cfg, gen)
    x = random_flip(x, cfg.flip_p, gen)
    x = color_jitter(x, cfg, gen)
    x = gaussian_noise(x, cfg, gen)
    return x.clamp(0.0, 1.0)
