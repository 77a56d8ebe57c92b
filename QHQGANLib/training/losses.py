"""Losses of the GANs: SSIM on the CT range, and the WGAN-GP gradient penalty.

Console usage::

    >>> from QHQGANLib.training.losses import ssim_loss, gradient_penalty
    >>> ssim_loss(output_hu, target_hu)                 # 1 - SSIM, a differentiable scalar
    >>> gradient_penalty(critic, real, fake)            # on the device of ``real``
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..core.constants import HU_MAX, HU_MIN


def ssim_loss(a_hu: torch.Tensor, b_hu: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (torchmetrics, Gaussian window) on [-1024, 3071] HU scaled to [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    a = (a_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    b = (b_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    return 1.0 - ssim_fn(a, b, data_range=1.0)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: Optional[torch.Generator] = None, unit: float = 1000.0) -> torch.Tensor:
    """WGAN-GP penalty ``(|| d critic / d x || * unit - 1)^2`` at random mixes of ``real`` and ``fake``.

    Computed in float32 outside any autocast (second derivatives in float16 underflow); the mixing
    weights are drawn on ``real``'s device, from ``generator`` (which must live there) or the global
    stream. ``unit``: the enhancement critic works on HU / 1000, so its gradient is measured in
    those units (1000); the synthesis critic on [-1, 1] images (1).
    """
    real, fake = real.float(), fake.float()
    with torch.autocast(device_type=real.device.type, enabled=False):
        alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype, device=real.device, generator=generator)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        score = critic(mixed)
        grad, = torch.autograd.grad(score.sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) * unit - 1.0) ** 2).mean()
