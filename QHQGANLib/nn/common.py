"""What every network shares: HU <-> network units, and counting parameters and FLOPs.

All networks take and return HU; internally they work on ``HU / 1000`` (water 0, air -1),
after clipping the input to the CT range [-1024, 3071] HU.

Console usage::

    >>> from QHQGANLib.nn.common import count_parameters, count_flops
    >>> count_parameters(model), count_flops(model, 512, 512) / 1e9   # parameters, GFLOPs per slice
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.constants import HU_MAX, HU_MIN

HU_SCALE = 1000.0


def hu_to_net(x: torch.Tensor) -> torch.Tensor:
    """HU -> the networks' internal units (clipped to the CT range)."""
    return x.clamp(HU_MIN, HU_MAX) / HU_SCALE


def net_to_hu(x: torch.Tensor) -> torch.Tensor:
    return x * HU_SCALE


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_flops(model: nn.Module, height: int = 512, width: int = 512) -> float:
    """Multiply-accumulate count x2 (FLOPs) of one forward pass on an (H, W) slice stack,
    from the convolution layers (hooks); the quantum layer's simulation is not counted."""
    flops = [0.0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            flops[0] += 2.0 * k * output.numel()
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            flops[0] += 2.0 * k * inputs[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, getattr(model, "in_slices", 1), height, width) - 1000)
    finally:
        for h in handles:
            h.remove()
    return flops[0]
