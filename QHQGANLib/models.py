"""Networks for low-dose CT enhancement and x2 super-resolution.

* :class:`HQGANGenerator`: the hybrid generator. A small classical U-Net-style
  encoder brings a 2.5D stack of slices (the slice and its neighbours) to 1/4
  resolution; there a :class:`~QHQGANLib.quantum.QuantumLayer` runs at every
  spatial position on a learned projection of the features (``n_qubits``
  angles), and its outputs are mixed back into the features by a learned 1x1
  convolution on a residual path; a decoder with skip connections predicts a
  residual that is added to the input slice (HU in, HU out). With
  ``task="super-resolve"`` the decoder ends in a x2 pixel-shuffle stage and the
  residual is added to the bicubic-upsampled input.
* ``mixer="classical"`` gives the parameter-matched classical ablation: the
  quantum layer is replaced by :class:`ClassicalMixer`, a tiny MLP with about as
  many parameters as the circuit (same input and output sizes, bounded output).
* :class:`REDCNN`: the residual encoder-decoder CNN of Chen et al. 2017
  (IEEE TMI 36(12):2524), 5 convolutions and 5 deconvolutions of 5x5 with
  residual shortcuts; ``width`` is 96 in the paper.
* :class:`PatchCritic`: a classical patch critic for the WGAN-GP adversarial term.

All networks take and return HU; internally they work on ``HU / 1000`` (water 0,
air -1), after clipping the input to [-1024, 3071] HU.

Console usage::

    >>> import torch
    >>> from QHQGANLib.models import HQGANGenerator
    >>> g = HQGANGenerator(task="enhance", context=1, n_qubits=8, n_layers=2)
    >>> stack = torch.zeros(1, 3, 64, 64) - 1000       # (batch, 2*context+1 slices, H, W) in HU
    >>> g(stack).shape                                  # the enhanced centre slice, HU
    torch.Size([1, 1, 64, 64])
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .quantum import QuantumLayer

HU_MIN, HU_MAX = -1024.0, 3071.0
HU_SCALE = 1000.0


def hu_to_net(x: torch.Tensor) -> torch.Tensor:
    """HU -> the networks' internal units (clipped to the CT range)."""
    return x.clamp(HU_MIN, HU_MAX) / HU_SCALE


def net_to_hu(x: torch.Tensor) -> torch.Tensor:
    return x * HU_SCALE


# ---------------------------------------------------------------------------
# the bottleneck mixers: quantum, and its parameter-matched classical ablation
# ---------------------------------------------------------------------------
class ClassicalMixer(nn.Module):
    """n -> hidden -> n MLP with tanh, sized to about ``target_params`` parameters.

    Stands in for a ``QuantumLayer`` with ``target_params`` trainable angles in the
    ablation: same input (angles) and output (values in [-1, 1]) as the circuit.
    """

    def __init__(self, n_features: int, target_params: int):
        super().__init__()
        # params = n*h + h + h*n + n  ->  h = (target - n) / (2n + 1), at least 1
        hidden = max(1, int(round((target_params - n_features) / (2 * n_features + 1))))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(),
                                 nn.Linear(hidden, n_features), nn.Tanh())
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelwiseMixer(nn.Module):
    """Applies a feature-vector mixer (quantum or classical) at every position of a feature map.

    features (B, C, H, W) -> angles = pi * tanh(1x1 conv) (B, n, H, W) -> mixer per position
    -> 1x1 conv back to C channels, added to the features (residual path).
    """

    def __init__(self, channels: int, n_qubits: int, n_layers: int, mixer: str = "quantum",
                 reupload: bool = True, quantum_backend: str = "torch",
                 quantum_device: str = "default.qubit"):
        super().__init__()
        self.to_angles = nn.Conv2d(channels, n_qubits, 1)
        if mixer == "quantum":
            self.mixer = QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=reupload,
                                      backend=quantum_backend, device_name=quantum_device)
        elif mixer == "classical":
            self.mixer = ClassicalMixer(n_qubits, target_params=n_layers * n_qubits * 2)
        else:
            raise ValueError(f"mixer must be 'quantum' or 'classical', got {mixer!r}")
        self.from_outputs = nn.Conv2d(n_qubits, channels, 1)
        nn.init.zeros_(self.from_outputs.weight)  # starts as identity: the residual path alone
        nn.init.zeros_(self.from_outputs.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        angles = math.pi * torch.tanh(self.to_angles(features))
        b, n, h, w = angles.shape
        flat = angles.permute(0, 2, 3, 1).reshape(-1, n)
        out = self.mixer(flat).to(features.dtype)
        out = out.reshape(b, h, w, n).permute(0, 3, 1, 2)
        return features + self.from_outputs(out)


# ---------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------
@dataclass
class GeneratorConfig:
    """Everything needed to rebuild an :class:`HQGANGenerator` (stored in model cards)."""

    task: str = "enhance"            # "enhance" or "super-resolve"
    context: int = 1                 # neighbouring slices on each side (input has 2*context+1)
    width: int = 16                  # channels at full resolution (x2 at 1/2, x4 at 1/4)
    n_qubits: int = 8
    n_layers: int = 2
    reupload: bool = True
    mixer: str = "quantum"           # "quantum" (HQGAN) or "classical" (ablation)
    scale: int = 2                   # super-resolution factor (task "super-resolve")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1))


class HQGANGenerator(nn.Module):
    """Hybrid quantum-classical generator; see the module docstring. Input (B, 2c+1, H, W) HU."""

    def __init__(self, task: str = "enhance", context: int = 1, width: int = 16, n_qubits: int = 8,
                 n_layers: int = 2, reupload: bool = True, mixer: str = "quantum", scale: int = 2,
                 quantum_backend: str = "torch", quantum_device: str = "default.qubit"):
        super().__init__()
        if task not in ("enhance", "super-resolve"):
            raise ValueError(f"task must be 'enhance' or 'super-resolve', got {task!r}")
        if context < 0:
            raise ValueError("context must be >= 0")
        if task == "super-resolve" and scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {scale}")
        self.config = GeneratorConfig(task, context, width, n_qubits, n_layers, reupload, mixer, scale)
        w = width
        self.enc1 = _conv(2 * context + 1, w)
        self.enc2 = _conv(w, 2 * w, stride=2)
        self.enc3 = _conv(2 * w, 4 * w, stride=2)
        self.mix = PixelwiseMixer(4 * w, n_qubits, n_layers, mixer, reupload, quantum_backend, quantum_device)
        self.bottleneck = _conv(4 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _conv(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _conv(2 * w, w)
        if task == "super-resolve":
            stages = []
            for _ in range(int(round(math.log2(scale)))):
                stages += [nn.Conv2d(w, 4 * w, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(0.1)]
            self.upscale = nn.Sequential(*stages)
        else:
            self.upscale = nn.Identity()
        self.head = nn.Conv2d(w, 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # starts as the identity map (or plain bicubic for SR)
        nn.init.zeros_(self.head.bias)

    @property
    def in_slices(self) -> int:
        return 2 * self.config.context + 1

    @property
    def scale(self) -> int:
        return self.config.scale if self.config.task == "super-resolve" else 1

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (inference pads to it)."""
        return 4

    def quantum_layer(self) -> Optional[QuantumLayer]:
        return self.mix.mixer if isinstance(self.mix.mixer, QuantumLayer) else None

    def forward(self, stack_hu: torch.Tensor) -> torch.Tensor:
        if stack_hu.dim() != 4 or stack_hu.shape[1] != self.in_slices:
            raise ValueError(f"expected (batch, {self.in_slices}, H, W) HU, got {tuple(stack_hu.shape)}")
        if stack_hu.shape[-1] % 4 or stack_hu.shape[-2] % 4:
            raise ValueError(f"H and W must be multiples of 4, got {tuple(stack_hu.shape[-2:])}")
        x = hu_to_net(stack_hu)
        centre = x[:, self.config.context:self.config.context + 1]
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.bottleneck(self.mix(self.enc3(e2)))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        residual = self.head(self.upscale(d1))
        if self.scale > 1:
            centre = F.interpolate(centre, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return net_to_hu(centre + residual)


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------
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
