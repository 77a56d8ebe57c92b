"""Generators of synthetic CT slices: the hybrid quantum GAN's and its classical rivals'.

Four generators share one classical decoder (4x4 -> 64x64 or 128x128; each stage a nearest
x2 resize then a 3x3 convolution, which avoids the checkerboard artefacts of DCGAN's transposed
convolutions, Odena et al. 2016; ``upsample="transposed"`` gives DCGAN's) and differ only in
what feeds it:

* ``hqgan``: latent noise ``z`` (``n_circuits`` x ``n_qubits`` angles, uniform in [0, pi)) ->
  :class:`~QHQGANLib.quantum.layer.QuantumLayer` (re-uploading, ``<Z_i>`` outputs; one set of
  weights run on each of the ``n_circuits`` noise vectors) -> batch normalisation of the
  ``n_circuits * n_qubits`` features (the circuit's outputs concentrate near 0) -> decoder.
* ``ablation``: the same with the circuit replaced by a parameter-matched classical MLP.
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

WINDOW = SYNTH_WINDOW
METHODS = ("hqgan", "ablation", "wgan-gp", "dcgan")
UPSAMPLING = ("resize", "transposed")
ARCH_OF_METHOD = {"hqgan": "hqgan-synth", "ablation": "ablation-synth", "wgan-gp": "wgan-gp", "dcgan": "dcgan"}


def hu_to_unit(x: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip(x, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def unit_to_hu(x: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.asarray(x) + 1.0) / 2.0 * (hi - lo) + lo


class Decoder(nn.Module):
    """features (B, d) -> image (B, 1, size, size) in [-1, 1]."""

    def __init__(self, in_features: int, size: int = 64, width: int = 16, upsample: str = "resize"):
        super().__init__()
        if size not in (64, 128):
            raise ValueError(f"size must be 64 or 128, got {size}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        n_up = int(math.log2(size // 4))
        channels = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 256,128,64,32
        self.start = channels[0]
        self.fc = nn.Sequential(nn.Linear(in_features, 4 * 4 * channels[0]), nn.ReLU())

        def up(cin: int, cout: int) -> List[nn.Module]:
            if upsample == "transposed":  # DCGAN's fractionally-strided convolution
                return [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
            # resize then convolve: no checkerboard artefacts (Odena et al. 2016)
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1)]

        blocks: List[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            blocks += up(cin, cout) + [nn.BatchNorm2d(cout), nn.ReLU()]
        blocks += up(channels[-1], 1) + [nn.Tanh()]
        self.net = nn.Sequential(*blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(features).view(-1, self.start, 4, 4))


class SynthGenerator(nn.Module):
    """Latent -> (quantum | classical | nothing) -> decoder. ``sample_latent`` draws its noise."""

    def __init__(self, method: str = "hqgan", size: int = 64, n_qubits: int = 8, n_layers: int = 4,
                 latent_dim: int = 100, width: int = 16, quantum_backend: str = "torch",
                 upsample: str = "resize", feature_norm: bool = True, n_circuits: int = 4):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if n_circuits < 1:
            raise ValueError(f"n_circuits must be at least 1, got {n_circuits}")
        self.method, self.size = method, size
        # hqgan/ablation: the mixer (one set of weights) runs on n_circuits independent noise
        # vectors per sample; their outputs are concatenated (n_circuits * n_qubits features)
        self.n_circuits = int(n_circuits) if method in ("hqgan", "ablation") else 1
        self.config = {"arch": ARCH_OF_METHOD[method], "method": method, "size": size, "n_qubits": n_qubits,
                       "n_layers": n_layers, "latent_dim": latent_dim, "width": width, "upsample": upsample,
                       "feature_norm": bool(feature_norm and method in ("hqgan", "ablation")),
                       "n_circuits": self.n_circuits}
        if method == "hqgan":
            from ..quantum.layer import QuantumLayer

            self.latent_dim = n_qubits * self.n_circuits
            self.mixer = QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=True, backend=quantum_backend)
        elif method == "ablation":
            from .mixers import ClassicalMixer

            self.latent_dim = n_qubits * self.n_circuits
            self.mixer = ClassicalMixer(n_qubits, target_params=n_layers * n_qubits * 2)
        else:
            self.latent_dim = latent_dim
            self.mixer = nn.Identity()
        # The circuit's <Z_i> concentrate near 0 (spread ~0.06 for 8 qubits, 4 layers at random
        # angles): standardising each feature over the batch lets the decoder see their variation.
        # The ablation gets the same normalisation, so the two differ only in the mixer.
        self.features = nn.BatchNorm1d(self.latent_dim) if self.config["feature_norm"] else nn.Identity()
        self.decoder = Decoder(self.latent_dim, size, width, upsample)

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
        """``n`` latent vectors drawn with ``generator``, on ``device`` (the generator's device by default)."""
        device = device if device is not None else (generator.device if generator is not None else None)
        if self.method in ("hqgan", "ablation"):
            return torch.rand(n, self.latent_dim, generator=generator, device=device) * math.pi  # circuit angles
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, K*n) -> one mixer run per noise vector, (B*K, n) -> (B, K*n); K = 1 for wgan-gp/dcgan
        features = self.mixer(z.reshape(-1, z.shape[-1] // self.n_circuits)).reshape(z.shape[0], -1)
        return self.decoder(self.features(features.to(z.dtype)))


def build_from_config(config: Dict):
    """Rebuild a synthesis generator from its stored description (used by ``load_model``)."""
    return SynthGenerator(method=config["method"], size=int(config["size"]), n_qubits=int(config["n_qubits"]),
                          n_layers=int(config["n_layers"]), latent_dim=int(config["latent_dim"]),
                          width=int(config["width"]), upsample=str(config.get("upsample", "transposed")),
                          feature_norm=bool(config.get("feature_norm", False)),
                          n_circuits=int(config.get("n_circuits", 1)))
