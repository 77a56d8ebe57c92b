"""Classical baseline networks for enhancement: RED-CNN (Chen et al. 2017, IEEE TMI 36(12):2524).

Console usage::

    >>> from QHQGANLib.nn.baselines import REDCNN
    >>> net = REDCNN(width=96)                         # the paper's width
    >>> net(torch.zeros(1, 1, 64, 64) - 1000).shape    # HU in, HU out
    torch.Size([1, 1, 64, 64])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import hu_to_net, net_to_hu


class REDCNN(nn.Module):
    """RED-CNN (Chen et al. 2017): 5 conv + 5 deconv layers (5x5, no padding), residual shortcuts.

    Input (B, 1, H, W) HU (``context`` must be 0), output the denoised slice in HU.
    """

    def __init__(self, width: int = 96, context: int = 0):
        super().__init__()
        if context != 0:
            raise ValueError("RED-CNN works on single slices (context=0)")
        self.config = {"arch": "redcnn", "width": width, "context": 0}
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else width, width, 5) for i in range(5)])
        self.deconvs = nn.ModuleList([nn.ConvTranspose2d(width, 1 if i == 4 else width, 5) for i in range(5)])

    in_slices = 1
    scale = 1
    multiple = 1

    def forward(self, stack_hu: torch.Tensor) -> torch.Tensor:
        x = hu_to_net(stack_hu)
        residual_1 = x
        out = F.relu(self.convs[0](x))
        out = F.relu(self.convs[1](out))
        residual_2 = out
        out = F.relu(self.convs[2](out))
        out = F.relu(self.convs[3](out))
        residual_3 = out
        out = F.relu(self.convs[4](out))
        out = F.relu(self.deconvs[0](out) + residual_3)
        out = F.relu(self.deconvs[1](out))
        out = F.relu(self.deconvs[2](out) + residual_2)
        out = F.relu(self.deconvs[3](out))
        out = self.deconvs[4](out) + residual_1
        return net_to_hu(out)
