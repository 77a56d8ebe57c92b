"""Losses of the GANs: SSIM on the CT range, and the WGAN-GP gradient penalty.

Console usage::

    >>> from QHQGANLib.training.losses import ssim_loss, gradient_penalty
    >>> ssim_loss(output_hu, target_hu)                 # 1 - SSIM, a differentiable scalar
    >>> gradient_penalty(critic, real, fake)            # on the device of ``real``
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.constants import HU_MAX, HU_MIN


#: SSIM's window: a Gaussian of sigma 1.5 on 11 taps, and its constants (Wang et al. 2004; torchmetrics' defaults).
SSIM_SIGMA, SSIM_TAPS, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    d = torch.arange(SSIM_TAPS, dtype=torch.float64) - (SSIM_TAPS - 1) / 2
    g = torch.exp(-0.5 * (d / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of two (B, C, H, W) batches: a Gaussian window, reflect padding, the map averaged over
    the whole image, variances clamped at 0; the definition of torchmetrics' SSIM (its defaults).

    The window is applied as two 1-D convolutions (the Gaussian is separable) instead of one 11x11
    2-D convolution: equal to torchmetrics within float32 rounding (Testing/test_training_loop.py),
    and about 25x faster forward + backward on a CPU, where torchmetrics' SSIM took ~40 % of an
    enhancement training update (issue #16). H and W must exceed 5 (the reflect padding).
    """
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    n = a.shape[1]
    pad = (SSIM_TAPS - 1) // 2
    stack = F.pad(torch.cat([a, b, a * a, b * b, a * b], 1), (pad, pad, pad, pad), mode="reflect")
    taps = _gaussian_taps(stack.dtype, stack.device)
    stack = F.conv2d(stack, taps.view(1, 1, 1, -1).expand(5 * n, 1, 1, SSIM_TAPS), groups=5 * n)
    stack = F.conv2d(stack, taps.view(1, 1, -1, 1).expand(5 * n, 1, SSIM_TAPS, 1), groups=5 * n)
    mu_a, mu_b, e_aa, e_bb, e_ab = stack.split(n, 1)
    var_a, var_b = (e_aa - mu_a * mu_a).clamp(min=0.0), (e_bb - mu_b * mu_b).clamp(min=0.0)
    cov = e_ab - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return index.mean()


def ssim_loss(a_hu: torch.Tensor, b_hu: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (:func:`ssim`, Gaussian window) on [-1024, 3071] HU scaled to [0, 1]."""
    a = (a_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    b = (b_hu.clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    return 1.0 - ssim(a, b, data_range=1.0)


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
