"""Generators of synthetic CT slices: the hybrid quantum GAN's and its classical rivals'.

The generators share one classical decoder (4x4 -> 64x64 or 128x128; each stage a nearest
x2 resize then a 3x3 convolution, which avoids the checkerboard artefacts of DCGAN's transposed
convolutions, Odena et al. 2016; ``upsample="transposed"`` gives DCGAN's) and differ only in
what feeds it:

* ``hqgan``: latent noise ``z`` (``n_circuits`` x ``n_qubits`` angles, uniform in [0, pi)) ->
  :class:`~QHQGANLib.quantum.layer.QuantumLayer` (re-uploading, ``<Z_i>`` outputs; one set of
  weights run on each of the ``n_circuits`` noise vectors) -> batch normalisation of the
  ``n_circuits * n_qubits`` features (the circuit's outputs concentrate near 0) -> decoder.
* The controls for the circuit: the same network with the circuit's slot filled otherwise
  (:mod:`QHQGANLib.nn.mixers`): ``mlp-control``: the fair classical MLP (``n_qubits`` -> hidden
  >= ``n_qubits`` -> ``n_qubits``, at least the circuit's parameters; the hidden width is stored
  in the config as ``mlp_hidden``); ``no-circuit``: nothing, the noise goes straight to the batch
  normalisation and the decoder (the circuit's parameters fewer, nothing else changes);
  ``bottleneck-ablation``: the legacy 8 -> 3 -> 8 MLP (59 parameters against 64 angles), NOT a
  fair control, kept so the retired ``ablation-synth`` weights still load. ``ablation``, the name
  those weights were stored under, is still accepted for it (``LEGACY_METHODS``).
* ``wgan-gp`` (Gulrajani et al. 2017) and ``dcgan`` (Radford et al. 2016): Gaussian ``z``
  (100-d, as published) -> decoder.

Images are HU windowed to ``WINDOW`` = [-1024, 1024] and scaled to [-1, 1]
(:func:`hu_to_unit`, :func:`unit_to_hu`). How they are trained:
:mod:`QHQGANLib.training.synthesis`; how samples are drawn: :mod:`QHQGANLib.tasks.synthesize`.

Console usage::

    >>> from QHQGANLib.nn.synthesis import SynthGenerator
    >>> g = SynthGenerator("hqgan", size=64).eval()
    >>> g(g.sample_latent(4)).shape                      # images in [-1, 1]
    torch.Size([4, 1, 64, 64])
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..core.constants import SYNTH_WINDOW
from ..core.kinds import LEGACY_NAMES

WINDOW = SYNTH_WINDOW
METHODS = ("hqgan", "mlp-control", "no-circuit", "bottleneck-ablation", "wgan-gp", "dcgan")
#: What fills the circuit's slot for the methods that have one (the others feed the decoder Gaussian noise).
MIXER_OF_METHOD = {"hqgan": "quantum", "mlp-control": "mlp", "no-circuit": "none", "bottleneck-ablation": "bottleneck"}
#: Names of earlier versions, still accepted: "ablation" was the 8 -> 3 -> 8 bottleneck.
LEGACY_METHODS = LEGACY_NAMES
UPSAMPLING = ("resize", "transposed")
#: Decoder stages: "plain" (upsample, conv, BN, ReLU: the shipped 64x64 models) or "residual" (two 3x3
#: convolutions per stage with a skip path: more capacity per parameter, for anatomy at 128x128).
DECODER_BLOCKS = ("plain", "residual")
ARCH_OF_METHOD = {"hqgan": "hqgan-synth", "mlp-control": "mlp-control-synth", "no-circuit": "no-circuit-synth",
                  "bottleneck-ablation": "bottleneck-ablation-synth", "wgan-gp": "wgan-gp", "dcgan": "dcgan",
                  "ablation": "ablation-synth"}  # the last: the arch of cards stored under the legacy name


def canonical_method(method: str) -> str:
    """``method`` with a legacy name replaced by the current one; ValueError for an unknown one."""
    method = LEGACY_METHODS.get(method, method)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def hu_to_unit(x: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip(x, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def unit_to_hu(x: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.asarray(x) + 1.0) / 2.0 * (hi - lo) + lo


class ResidualUp(nn.Module):
    """x2 nearest resize, then conv-BN-ReLU-conv-BN with a 1x1 skip path, then ReLU (BigGAN-like, no conditioning)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.skip = nn.Conv2d(cin, cout, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.act(self.body(x) + self.skip(x))


class Decoder(nn.Module):
    """features (B, d) -> image (B, 1, size, size) in [-1, 1]."""

    def __init__(self, in_features: int, size: int = 64, width: int = 16, upsample: str = "resize",
                 blocks: str = "plain"):
        super().__init__()
        if size not in (64, 128):
            raise ValueError(f"size must be 64 or 128, got {size}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        if blocks not in DECODER_BLOCKS:
            raise ValueError(f"blocks must be one of {DECODER_BLOCKS}, got {blocks!r}")
        if blocks == "residual" and upsample != "resize":
            raise ValueError("residual decoder blocks resize (upsample='resize')")
        n_up = int(math.log2(size // 4))
        channels = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 256,128,64,32
        self.start = channels[0]
        self.fc = nn.Sequential(nn.Linear(in_features, 4 * 4 * channels[0]), nn.ReLU())

        def up(cin: int, cout: int) -> List[nn.Module]:
            if upsample == "transposed":  # DCGAN's fractionally-strided convolution
                return [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
            # resize then convolve: no checkerboard artefacts (Odena et al. 2016)
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1)]

        stages: List[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            if blocks == "residual":
                stages.append(ResidualUp(cin, cout))
            else:
                stages += up(cin, cout) + [nn.BatchNorm2d(cout), nn.ReLU()]
        if blocks == "residual":  # the last stage at full resolution, then a 3x3 to one channel
            stages += [ResidualUp(channels[-1], channels[-1]), nn.Conv2d(channels[-1], 1, 3, 1, 1), nn.Tanh()]
        else:
            stages += up(channels[-1], 1) + [nn.Tanh()]
        self.net = nn.Sequential(*stages)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(features).view(-1, self.start, 4, 4))


class SynthGenerator(nn.Module):
    """Latent -> (quantum | classical | nothing) -> decoder. ``sample_latent`` draws its noise.

    ``method``: one of ``METHODS`` (or a legacy name, ``LEGACY_METHODS``); ``mlp_hidden``: the
    hidden width of the ``mlp-control`` / ``bottleneck-ablation`` MLP (None: the method's rule,
    :func:`QHQGANLib.nn.mixers.default_hidden`).
    """

    def __init__(self, method: str = "hqgan", size: int = 64, n_qubits: int = 8, n_layers: int = 4,
                 latent_dim: int = 100, width: int = 16, quantum_backend: str = "torch",
                 upsample: str = "resize", feature_norm: bool = True, n_circuits: int = 4,
                 mlp_hidden: Optional[int] = None, blocks: str = "plain"):
        super().__init__()
        from .mixers import default_hidden, make_mixer

        method = canonical_method(method)
        if n_circuits < 1:
            raise ValueError(f"n_circuits must be at least 1, got {n_circuits}")
        self.method, self.size = method, size
        mixer = MIXER_OF_METHOD.get(method)  # None: wgan-gp / dcgan, no slot
        self.has_slot = mixer is not None
        if mixer in ("mlp", "bottleneck"):
            mlp_hidden = int(mlp_hidden) if mlp_hidden is not None else default_hidden(mixer, n_qubits, n_layers)
        else:
            mlp_hidden = None
        # hqgan and its controls: the mixer (one set of weights) runs on n_circuits independent noise
        # vectors per sample; their outputs are concatenated (n_circuits * n_qubits features)
        self.n_circuits = int(n_circuits) if self.has_slot else 1
        self.config = {"arch": ARCH_OF_METHOD[method], "method": method, "size": size, "n_qubits": n_qubits,
                       "n_layers": n_layers, "latent_dim": latent_dim, "width": width, "upsample": upsample,
                       "feature_norm": bool(feature_norm and self.has_slot),
                       "n_circuits": self.n_circuits, "mlp_hidden": mlp_hidden, "blocks": blocks}
        if self.has_slot:
            self.latent_dim = n_qubits * self.n_circuits
            self.mixer = make_mixer(mixer, n_qubits, n_layers, mlp_hidden, quantum_backend=quantum_backend)
        else:
            self.latent_dim = latent_dim
            self.mixer = nn.Identity()
        # The circuit's <Z_i> concentrate near 0 (spread ~0.06 for 8 qubits, 4 layers at random
        # angles): standardising each feature over the batch lets the decoder see their variation.
        # The controls get the same normalisation, so they differ from hqgan only in the slot.
        self.features = nn.BatchNorm1d(self.latent_dim) if self.config["feature_norm"] else nn.Identity()
        self.decoder = Decoder(self.latent_dim, size, width, upsample, blocks)

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
        """``n`` latent vectors drawn with ``generator``, on ``device`` (the generator's device by default)."""
        device = device if device is not None else (generator.device if generator is not None else None)
        if self.has_slot:
            return torch.rand(n, self.latent_dim, generator=generator, device=device) * math.pi  # circuit angles
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, K*n) -> one mixer run per noise vector, (B*K, n) -> (B, K*n); K = 1 for wgan-gp/dcgan
        features = self.mixer(z.reshape(-1, z.shape[-1] // self.n_circuits)).reshape(z.shape[0], -1)
        return self.decoder(self.features(features.to(z.dtype)))


def build_from_config(config: Dict):
    """Rebuild a synthesis generator from its stored description (used by ``load_model``)."""
    hidden = config.get("mlp_hidden")  # absent from legacy cards: the method's rule (their sizing)
    return SynthGenerator(method=config["method"], size=int(config["size"]), n_qubits=int(config["n_qubits"]),
                          n_layers=int(config["n_layers"]), latent_dim=int(config["latent_dim"]),
                          width=int(config["width"]), upsample=str(config.get("upsample", "transposed")),
                          feature_norm=bool(config.get("feature_norm", False)),
                          n_circuits=int(config.get("n_circuits", 1)),
                          mlp_hidden=None if hidden is None else int(hidden),
                          blocks=str(config.get("blocks", "plain")))
