"""Classical critics: the patch critic of the enhancement GAN, the critic of synthesis, and the conditional
patch critic of label-conditioned synthesis.

Console usage::

    >>> from QHQGANLib.nn.critics import PatchCritic, Critic
    >>> PatchCritic()(torch.zeros(4, 1, 64, 64)).shape      # one score per HU patch
    torch.Size([4])
    >>> Critic(size=64)(torch.zeros(4, 1, 64, 64)).shape    # images in [-1, 1]
    torch.Size([4])
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import hu_to_net


class PatchCritic(nn.Module):
    """Classical patch critic (WGAN-GP, so no batch norm): HU patch -> one score per patch."""

    def __init__(self, width: int = 32, in_channels: int = 1):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 1, 3, 1, 1),
        )

    def forward(self, patch_hu: torch.Tensor) -> torch.Tensor:
        return self.net(hu_to_net(patch_hu)).mean(dim=(1, 2, 3))


class Critic(nn.Module):
    """Strided-convolution critic / discriminator: image (B, 1, s, s) in [-1, 1] -> (B,) score."""

    def __init__(self, size: int = 64, width: int = 16, batch_norm: bool = False):
        super().__init__()
        n_down = int(math.log2(size // 4))
        layers, cin = [], 1
        for i in range(n_down):
            cout = width * 2**i
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1))
            if batch_norm and i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, 1, 0))  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class LabelPatchCritic(nn.Module):
    """Conditional patch critic of the label-conditioned generators (:mod:`QHQGANLib.nn.label_synthesis`).

    Image (B, 1, s, s) in [-1, 1] and its label channels (B, C, s, s) in [0, 1], concatenated ->
    three stride-2 4x4 convolutions (LeakyReLU 0.2) -> a 3x3 convolution to one score per patch.
    Each score sees a 38x38-pixel patch (receptive field 4 -> 10 -> 22 through the strided layers, + 2 x 8
    by the 3x3 one; at any s), the scores 8 pixels apart: a 16x16 grid of overlapping patches at s = 128
    (a body crop of about 400 mm has about 3 mm pixels there: patches of about 12 cm). Smaller than
    PatchGAN's 70x70, which has two more 4x4 layers. Returns ``(scores (B,), features)``: the mean patch
    score and the activations of the three strided layers (for feature matching).
    ``spectral``: spectral normalisation of every convolution (hinge loss); off for WGAN-GP.
    """

    def __init__(self, label_channels: int, width: int = 32, spectral: bool = True):
        super().__init__()
        norm = nn.utils.parametrizations.spectral_norm if spectral else (lambda layer: layer)
        w = width
        self.layers = nn.ModuleList([norm(nn.Conv2d(1 + label_channels, w, 4, 2, 1)),
                                     norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), norm(nn.Conv2d(2 * w, 4 * w, 4, 2, 1))])
        self.score = norm(nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, image: torch.Tensor, labels: torch.Tensor):
        x = torch.cat([image, labels.to(image.dtype)], dim=1)
        features = []
        for layer in self.layers:
            x = torch.nn.functional.leaky_relu(layer(x), 0.2)
            features.append(x)
        return self.score(x).mean(dim=(1, 2, 3)), features
