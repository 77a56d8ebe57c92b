"""The hybrid generator for low-dose CT enhancement and x2 super-resolution.

* :class:`HQGANGenerator`: the hybrid generator. A small classical U-Net-style
  encoder brings a 2.5D stack of slices (the slice and its neighbours) to 1/4
  resolution; there a :class:`~QHQGANLib.quantum.layer.QuantumLayer` runs at every
  spatial position on a learned projection of the features (``n_qubits``
  angles), and its outputs are mixed back into the features by a learned 1x1
  convolution on a residual path; a decoder with skip connections predicts a
  residual that is added to the input slice (HU in, HU out). With
  ``task="super-resolve"`` the decoder ends in a x2 pixel-shuffle stage and the
  residual is added to the bicubic-upsampled input.
* The controls for the circuit (``mixer``, :mod:`QHQGANLib.nn.mixers`; the architecture
  names in ``ARCH_OF_MIXER``): ``"mlp"`` (arch ``mlp-control``) puts the fair classical MLP
  in the circuit's place (same widths in and out, hidden width >= ``n_qubits``, at least the
  circuit's parameters); ``"none"`` (arch ``no-circuit``) removes the whole block, leaving the
  residual path alone (the network has exactly the :class:`PixelwiseMixer`'s parameters fewer);
  ``"bottleneck"`` (arch ``bottleneck-ablation``) is the legacy 8 -> 1 -> 8 bottleneck, not a
  fair control, kept so weights trained with it (the earlier ``ablation-enhance``) still load.
* Where the slot sits (``placement``; issue #26: a circuit the network cannot route around):
  ``"residual"`` (the archs above) adds its outputs to the deepest features, beside a path that
  carries the same features without it, so a network can learn to ignore it (and the shipped one
  did: freezing it costs nothing). ``"film"`` (archs ``hqgan-film`` and its control
  ``mlp-control-film``) gives the slot no path of its own back into the features: its outputs are
  the only source of a per-position scale and shift (feature-wise linear modulation) of the deepest
  features and of every decoder stage (``features * (1 + gamma) + beta``, the 1/4-resolution map
  upsampled bilinearly), so what varies from position to position in the modulation comes from the
  slot alone; frozen to its mean, the modulation is one constant per channel.
* RED-CNN is :mod:`QHQGANLib.nn.baselines`; the patch critic :mod:`QHQGANLib.nn.critics`.

All networks take and return HU; internally they work on ``HU / 1000`` (water 0,
air -1), after clipping the input to [-1024, 3071] HU.

Console usage::

    >>> import torch
    >>> from QHQGANLib.nn import HQGANGenerator
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

from ..quantum.layer import QuantumLayer
from .common import hu_to_net, net_to_hu
from .mixers import PixelwiseMixer, check_mixer, default_hidden

#: The architecture name (``config["arch"]`` of a model card) of each mixer.
ARCH_OF_MIXER = {"quantum": "hqgan", "mlp": "mlp-control", "none": "no-circuit", "bottleneck": "bottleneck-ablation"}
#: The modulating placement's architectures (its mixers: the circuit and the fair MLP control).
FILM_ARCHS = {"hqgan-film": "quantum", "mlp-control-film": "mlp"}
MIXER_OF_ARCH = {**{arch: mixer for mixer, arch in ARCH_OF_MIXER.items()}, **FILM_ARCHS}
PLACEMENTS = ("residual", "film")


def arch_name(mixer: str, placement: str = "residual") -> str:
    """The architecture name of a mixer in a placement (``hqgan``, ``mlp-control-film``, ...)."""
    return ARCH_OF_MIXER[mixer] + ("-film" if placement == "film" else "")


def placement_of_arch(arch: str) -> str:
    return "film" if arch in FILM_ARCHS else "residual"


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild an :class:`HQGANGenerator` (stored in model cards)."""

    task: str = "enhance"            # "enhance" or "super-resolve"
    context: int = 1                 # neighbouring slices on each side (input has 2*context+1)
    width: int = 16                  # channels at full resolution (x2 at 1/2, x4 at 1/4)
    n_qubits: int = 8
    n_layers: int = 2
    reupload: bool = True
    mixer: str = "quantum"           # "quantum" (HQGAN), "mlp", "none" or "bottleneck" (controls)
    scale: int = 2                   # super-resolution factor (task "super-resolve")
    mlp_hidden: Optional[int] = None  # hidden width of the "mlp" / "bottleneck" mixer (None otherwise)
    placement: str = "residual"      # PLACEMENTS: where the slot's outputs enter (module docstring)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # in place: the activation overwrites the convolution's output (which no backward needs), one
    # full-resolution buffer fewer (issue #16)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.1, inplace=True))


def _conv_of_concat(block: nn.Sequential, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``block(torch.cat([upsampled, skip], 1))`` without the concatenation: the convolution of the
    concatenated channels is the sum of two convolutions with the two slices of its weights (the same
    weights and the same result up to float rounding, no copy of the skip features; issue #16)."""
    conv, activation = block[0], block[1]
    split = upsampled.shape[1]
    out = F.conv2d(upsampled, conv.weight[:, :split], conv.bias, conv.stride, conv.padding)
    return activation(out.add_(F.conv2d(skip, conv.weight[:, split:], None, conv.stride, conv.padding)))


class HQGANGenerator(nn.Module):
    """Hybrid quantum-classical generator; see the module docstring. Input (B, 2c+1, H, W) HU."""

    def __init__(self, task: str = "enhance", context: int = 1, width: int = 16, n_qubits: int = 8,
                 n_layers: int = 2, reupload: bool = True, mixer: str = "quantum", scale: int = 2,
                 quantum_backend: str = "torch", quantum_device: str = "default.qubit",
                 mlp_hidden: Optional[int] = None, placement: str = "residual"):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if placement == "film" and mixer not in ("quantum", "mlp"):
            raise ValueError(f"the modulating placement holds the circuit or its MLP control, not {mixer!r}")
        if task not in ("enhance", "super-resolve"):
            raise ValueError(f"task must be 'enhance' or 'super-resolve', got {task!r}")
        if context < 0:
            raise ValueError("context must be >= 0")
        if task == "super-resolve" and scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {scale}")
        check_mixer(mixer)
        if mixer in ("mlp", "bottleneck"):
            mlp_hidden = int(mlp_hidden) if mlp_hidden is not None else default_hidden(mixer, n_qubits, n_layers)
        else:
            mlp_hidden = None  # stored explicitly only where there is an MLP
        self.config = GeneratorConfig(task, context, width, n_qubits, n_layers, reupload, mixer, scale, mlp_hidden,
                                      placement)
        w = width
        self.enc1 = _conv(2 * context + 1, w)
        self.enc2 = _conv(w, 2 * w, stride=2)
        self.enc3 = _conv(2 * w, 4 * w, stride=2)
        # "none": no block at all, the encoder's features go straight on (the residual path alone)
        self.mix = (nn.Identity() if mixer == "none" else
                    PixelwiseMixer(4 * w, n_qubits, n_layers, mixer, reupload, quantum_backend, quantum_device,
                                   hidden=mlp_hidden, residual=placement == "residual"))
        # "film": per stage (deepest, 1/2, full resolution) a 1x1 map from the slot's outputs to a scale and a
        # shift per channel, zero at first (the unmodulated network)
        self.film = nn.ModuleList([nn.Conv2d(n_qubits, 2 * c, 1) for c in (4 * w, 2 * w, w)]
                                  if placement == "film" else [])
        for conv in self.film:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
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

    @property
    def arch(self) -> str:
        """The architecture name of a model card (``hqgan``, ``mlp-control``, ``hqgan-film``, ...)."""
        return arch_name(self.config.mixer, self.config.placement)

    def quantum_layer(self) -> Optional[QuantumLayer]:
        mixer = getattr(self.mix, "mixer", None)
        return mixer if isinstance(mixer, QuantumLayer) else None

    def forward(self, stack_hu: torch.Tensor) -> torch.Tensor:
        if stack_hu.dim() != 4 or stack_hu.shape[1] != self.in_slices:
            raise ValueError(f"expected (batch, {self.in_slices}, H, W) HU, got {tuple(stack_hu.shape)}")
        if stack_hu.shape[-1] % 4 or stack_hu.shape[-2] % 4:
            raise ValueError(f"H and W must be multiples of 4, got {tuple(stack_hu.shape[-2:])}")
        x = hu_to_net(stack_hu)
        centre = x[:, self.config.context:self.config.context + 1]
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        if self.film:
            deep = self.enc3(e2)
            outputs = self.mix(deep)  # the slot's outputs alone, (B, n_qubits, H/4, W/4)
            e3 = self._modulate(self.bottleneck(deep), outputs, 0)
            d2 = self._modulate(_conv_of_concat(self.dec2, self.up2(e3), e2), outputs, 1)
            d1 = self._modulate(_conv_of_concat(self.dec1, self.up1(d2), e1), outputs, 2)
        else:
            e3 = self.bottleneck(self.mix(self.enc3(e2)))
            d2 = _conv_of_concat(self.dec2, self.up2(e3), e2)
            d1 = _conv_of_concat(self.dec1, self.up1(d2), e1)
        residual = self.head(self.upscale(d1))
        if self.scale > 1:
            centre = F.interpolate(centre, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return net_to_hu(centre + residual)

    def _modulate(self, features: torch.Tensor, outputs: torch.Tensor, stage: int) -> torch.Tensor:
        """``features * (1 + gamma) + beta``, gamma and beta from the slot's outputs (upsampled to the stage)."""
        gamma, beta = self.film[stage](outputs).to(features.dtype).chunk(2, dim=1)
        if gamma.shape[-2:] != features.shape[-2:]:
            size = features.shape[-2:]
            gamma = F.interpolate(gamma, size=size, mode="bilinear", align_corners=False)
            beta = F.interpolate(beta, size=size, mode="bilinear", align_corners=False)
        return torch.addcmul(beta, features, 1 + gamma)
