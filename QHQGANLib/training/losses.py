"""Losses of the enhancement GAN: SSIM on the CT range, and the WGAN-GP gradient penalty.

Console usage::

    >>> from QHQGANLib.training.losses import ssim_loss, gradient_penalty
    >>> ssim_loss(output_hu, target_hu)                 # 1 - SSIM, a differentiable scalar
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.constants import HU_MAX, HU_MIN


def ssim_loss(a_hu: torch.Tensor, b_hu: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (torchmetrics, Gaussian window) on [-1024, 3071] HU scaled to [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    a = (a_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    b = (b_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    return 1.0 - ssim_fn(a, b, data_range=1.0)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mixed)
    grad, = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    # the critic works on HU / 1000: measure the gradient in those units
    return ((grad.flatten(1).norm(dim=1) * 1000.0 - 1.0) ** 2).mean()
