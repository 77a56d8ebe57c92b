"""Classical baseline networks for enhancement: RED-CNN (Chen et al. 2017, IEEE TMI 36(12):2524).

As published RED-CNN sees one slice (``context=0``, width 96, trained with MSE:
``TrainConfig(arch="redcnn", loss="mse")``). With ``context=1`` it sees what HQGAN sees, the
slice and its two neighbours (a 2.5D stack): only its first convolution takes the 3 slices, and
its outer residual shortcut is the centre slice, so the comparison with HQGAN is input-fair.

Console usage::

    >>> from QHQGANLib.nn.baselines import REDCNN
    >>> net = REDCNN(width=96)                         # the paper's width
    >>> net(torch.zeros(1, 1, 64, 64) - 1000).shape    # HU in, HU out
    torch.Size([1, 1, 64, 64])
    >>> REDCNN(width=96, context=1)(torch.zeros(1, 3, 64, 64) - 1000).shape   # 2.5D, as HQGAN
    torch.Size([1, 1, 64, 64])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import hu_to_net, net_to_hu


class REDCNN(nn.Module):
    """RED-CNN (Chen et al. 2017): 5 conv + 5 deconv layers (5x5, no padding), residual shortcuts.

    Input (B, 2 * context + 1, H, W) HU: ``context=0`` the published single slice, ``context=1``
    the slice and its neighbours (the first convolution takes them all; the outer shortcut adds
    the centre slice). Output the denoised centre slice (B, 1, H, W) in HU.
    """

    def __init__(self, width: int = 96, context: int = 0):
        super().__init__()
        if context not in (0, 1):
            raise ValueError(f"RED-CNN's context must be 0 (one slice, published) or 1 (3 slices), got {context}")
        self.config = {"arch": "redcnn", "width": int(width), "context": int(context)}
        self.context = int(context)
        slices = 2 * self.context + 1
        self.convs = nn.ModuleList([nn.Conv2d(slices if i == 0 else width, width, 5) for i in range(5)])
        self.deconvs = nn.ModuleList([nn.ConvTranspose2d(width, 1 if i == 4 else width, 5) for i in range(5)])

    scale = 1
    multiple = 1

    @property
    def in_slices(self) -> int:
        return 2 * self.context + 1

    def forward(self, stack_hu: torch.Tensor) -> torch.Tensor:
        if stack_hu.dim() != 4 or stack_hu.shape[1] != self.in_slices:
            raise ValueError(f"expected (batch, {self.in_slices}, H, W) HU, got {tuple(stack_hu.shape)}")
        x = hu_to_net(stack_hu)
        residual_1 = x[:, self.context:self.context + 1]  # the centre slice
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
