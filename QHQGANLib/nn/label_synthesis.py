"""Label-conditioned generators: a tissue-class map in, a CT slice out, the per-sample style from the circuit.

Issue #30, item 1. :class:`LabelGenerator` renders an axial CT slice (HU, windowed like synthesis:
``SYNTH_WINDOW`` scaled to [-1, 1]) from a label map of the 7 tissue classes of
:data:`QHQGANLib.physics.tissue_classes.TISSUE_CLASSES` (0 outside, 1 air inside the body, 2 lung,
3 fat, 4 soft tissue, 5 enhanced tissue and vessels, 6 bone), SPADE-style (Park et al. 2019):

* **Input**: the label map as "soft one-hot" channels at the model size (:func:`encode_labels`: the
  one-hot classes of each slice resampled like the training images, so a pixel on a boundary holds the
  fractions of its classes: partial volume), optionally a 2.5D stack (``context`` neighbouring slices
  each side: ``7 * (2 * context + 1)`` channels, the centre slice first).
* **Body**: from ``size / 16`` (the label map area-downsampled, one 3x3 convolution) up to ``size``
  in five residual stages (x2 nearest resize, then two 3x3 convolutions). Every normalisation is a
  batch norm without affine parameters followed by two modulations: **SPADE** (a per-pixel scale and
  shift computed by small convolutions from the label map at that resolution: where which tissue is)
  and **FiLM** (a per-channel scale and shift of each sample from its **style vector**: what this
  sample looks like as a whole, e.g. contrast phase, noise level, sharpness). Before each
  normalisation a Gaussian noise image (one per layer and sample, per-channel learned strength,
  zero at the start: StyleGAN's noise inputs) gives the texture its per-pixel randomness.
* **Style** (``METHODS``; the architectures ``ARCH_OF_METHOD``): the same place for all three, the
  same width ``n_circuits * n_qubits`` (32 by default), then one batch normalisation of the style
  features (the circuit's outputs concentrate near 0; all three get it):

  - ``hqgan`` (``hqgan-labels``): ``n_circuits`` noise vectors of ``n_qubits`` angles, uniform in
    [0, pi), through the project's re-uploading circuit
    (:class:`~QHQGANLib.quantum.layer.QuantumLayer`, one set of ``2 * n_layers * n_qubits``
    trainable angles; the torch simulation, exact against PennyLane) as hqgan-synth does
    (:mod:`QHQGANLib.nn.synthesis`);
  - ``mlp-control`` (``mlp-control-labels``): the fair classical MLP of :mod:`QHQGANLib.nn.mixers`
    in the circuit's place (same inputs, ``n_qubits -> hidden >= n_qubits -> n_qubits`` with tanh,
    at least the circuit's parameters);
  - ``spade`` (``spade-labels``): the classical conditional baseline, Gaussian noise
    (``latent_dim``, by default the style width) through one linear layer to the style width.

So one map gives many samples: the style (and the noise images) change, the anatomy stays.

Console usage::

    >>> from QHQGANLib.nn.label_synthesis import LabelGenerator, encode_labels
    >>> g = LabelGenerator("hqgan", size=64).eval()
    >>> labels = torch.from_numpy(encode_labels(codes[None], 64)).float()[None] / 255  # codes: (H, W) 0-6
    >>> g(labels, g.sample_latent(1)).shape           # image in [-1, 1] (SYNTH_WINDOW)
    torch.Size([1, 1, 64, 64])
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .mixers import default_hidden, make_mixer

#: Tissue classes the generators know (codes 0-6 of physics.tissue_classes.TISSUE_CLASSES).
N_CLASSES = 7
METHODS = ("hqgan", "mlp-control", "spade")
ARCH_OF_METHOD = {"hqgan": "hqgan-labels", "mlp-control": "mlp-control-labels", "spade": "spade-labels"}
METHOD_OF_ARCH = {arch: method for method, arch in ARCH_OF_METHOD.items()}
#: What makes the style of the methods with the circuit's slot (the baseline's is a linear layer).
MIXER_OF_METHOD = {"hqgan": "quantum", "mlp-control": "mlp"}
#: Sizes a generator renders (the start resolution is size / 16).
SIZES = (64, 128, 256)



def label_channels(context: int = 0) -> int:
    """Input channels of a generator with ``context`` neighbouring slices each side."""
    return N_CLASSES * (2 * int(context) + 1)


def encode_labels(codes: np.ndarray, size: int) -> np.ndarray:
    """Label slices ``(d, h, w)`` of whole class codes 0-6 -> ``(d * 7, size, size)`` uint8 soft one-hot.

    Each slice's one-hot classes are resampled to ``size`` exactly as the training images are
    (:func:`skimage.transform.resize`, linear, anti-aliased), so a boundary pixel holds the fractions of
    its classes; stored as fractions x 255 (uint8, rounded: training data and inference see the same
    values). The generators take ``uint8 / 255``.
    """
    from skimage.transform import resize

    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"label slices must be (d, h, w), got shape {codes.shape}")
    out = []
    for plane in codes:
        onehot = (plane[..., None] == np.arange(N_CLASSES)).astype(np.float32)  # (h, w, 7)
        small = resize(onehot, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        out.append(np.moveaxis(small, -1, 0))
    return np.round(np.clip(np.concatenate(out), 0.0, 1.0) * 255).astype(np.uint8)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


class SpadeNorm(nn.Module):
    """Batch norm (no affine) -> SPADE (per-pixel scale/shift from the label features) -> FiLM (per-sample
    scale/shift from the style vector; zero-initialised: the style starts neutral)."""

    def __init__(self, channels: int, hidden: int, style_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.spade = nn.Conv2d(hidden, 2 * channels, 3, 1, 1)
        self.film = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)  # the style starts neutral
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, label_features: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.spade(label_features).chunk(2, dim=1)
        x = self.norm(x) * (1 + gamma) + beta
        g, b = self.film(style).to(x.dtype).chunk(2, dim=1)
        return x * (1 + g[:, :, None, None]) + b[:, :, None, None]


class SpadeBlock(nn.Module):
    """Two (noise, SpadeNorm, LeakyReLU, 3x3 conv) layers with a skip path (1x1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int, label_ch: int, hidden: int, style_dim: int, pixel_noise: bool):
        super().__init__()
        mid = min(cin, cout)
        self.labels = nn.Sequential(nn.Conv2d(label_ch, hidden, 3, 1, 1), nn.ReLU())  # shared by both norms
        self.norm0, self.norm1 = SpadeNorm(cin, hidden, style_dim), SpadeNorm(mid, hidden, style_dim)
        self.conv0, self.conv1 = nn.Conv2d(cin, mid, 3, 1, 1), nn.Conv2d(mid, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        # StyleGAN's noise inputs: one Gaussian image per layer, a learned strength per channel
        self.noise_strength = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in (cin, mid)]
                                               if pixel_noise else [])

    def forward(self, x, labels, style, noise: Sequence[Optional[torch.Tensor]]):
        features = self.labels(labels)
        h = x
        for i, (norm, conv) in enumerate(((self.norm0, self.conv0), (self.norm1, self.conv1))):
            if self.noise_strength and noise[i] is not None:
                h = h + self.noise_strength[i] * noise[i].to(h.dtype)
            h = conv(F.leaky_relu(norm(h, features, style), 0.2))
        return self.skip(x) + h


class LabelGenerator(nn.Module):
    """Label map + style latent -> CT slice in [-1, 1] (module doc).

    ``method``: ``METHODS``; ``size``: ``SIZES``; ``context``: neighbouring label slices each side;
    ``width``: channels of the last stage (x8 at the two coarsest); ``hidden``: channels of the label
    features of each stage; ``n_qubits``, ``n_layers``, ``n_circuits``: the circuit (and the width of
    the style, ``n_circuits * n_qubits``, for every method); ``mlp_hidden``: the control MLP's hidden
    width (None: the fair rule, :func:`QHQGANLib.nn.mixers.fair_hidden`); ``latent_dim``: the
    baseline's Gaussian noise (None: the style width); ``pixel_noise``: the noise images.
    """

    def __init__(self, method: str = "hqgan", size: int = 128, context: int = 0, width: int = 16, hidden: int = 32,
                 n_qubits: int = 8, n_layers: int = 4, n_circuits: int = 4, mlp_hidden: Optional[int] = None,
                 latent_dim: Optional[int] = None, pixel_noise: bool = True, quantum_backend: str = "torch"):
        super().__init__()
        check_method(method)
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size}")
        if int(context) < 0 or int(n_circuits) < 1 or int(width) < 1 or int(hidden) < 1:
            raise ValueError("context must be >= 0; n_circuits, width and hidden >= 1")
        self.method, self.size, self.context = method, int(size), int(context)
        self.n_qubits, self.n_circuits = int(n_qubits), int(n_circuits)
        self.style_dim = self.n_qubits * self.n_circuits
        mixer = MIXER_OF_METHOD.get(method)
        if mixer == "mlp":
            mlp_hidden = int(mlp_hidden) if mlp_hidden is not None else default_hidden("mlp", n_qubits, n_layers)
        else:
            mlp_hidden = None
        if mixer is None:
            latent_dim = int(latent_dim) if latent_dim is not None else self.style_dim
            self.style_source = nn.Linear(latent_dim, self.style_dim)  # the baseline: Gaussian noise, one linear layer
        else:
            latent_dim = self.style_dim  # n_circuits vectors of n_qubits angles
            self.style_source = make_mixer(mixer, n_qubits, n_layers, mlp_hidden, quantum_backend=quantum_backend)
        self.latent_dim = latent_dim
        self.style_norm = nn.BatchNorm1d(self.style_dim)
        self.config = {"arch": ARCH_OF_METHOD[method], "method": method, "size": self.size, "context": self.context,
                       "width": int(width), "hidden": int(hidden), "n_qubits": self.n_qubits, "n_layers": int(n_layers),
                       "n_circuits": self.n_circuits, "mlp_hidden": mlp_hidden, "latent_dim": latent_dim,
                       "pixel_noise": bool(pixel_noise), "n_classes": N_CLASSES}
        label_ch = label_channels(context)
        self.resolutions = [self.size // 16 * 2 ** i for i in range(5)]
        channels = [int(width) * min(2 ** (4 - i), 8) for i in range(5)]
        self.head = nn.Conv2d(label_ch, channels[0], 3, 1, 1)
        cins = [channels[0]] + channels[:-1]
        self.blocks = nn.ModuleList([SpadeBlock(cin, cout, label_ch, int(hidden), self.style_dim, bool(pixel_noise))
                                     for cin, cout in zip(cins, channels)])
        self.out = nn.Conv2d(channels[-1], 1, 3, 1, 1)

    # ---- the style ----
    @property
    def has_circuit_slot(self) -> bool:
        return self.method in MIXER_OF_METHOD

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
        """``n`` style latents: angles uniform in [0, pi) (circuit slot) or standard Gaussian (baseline)."""
        device = device if device is not None else (generator.device if generator is not None else None)
        if self.has_circuit_slot:
            return torch.rand(n, self.latent_dim, generator=generator, device=device) * math.pi
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def style(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, style_dim) style features (normalised over the batch, or by running statistics)."""
        if self.has_circuit_slot:  # one run of the block per noise vector: (B*K, n) -> (B, K*n)
            features = self.style_source(latent.reshape(-1, self.n_qubits)).reshape(latent.shape[0], -1)
        else:
            features = self.style_source(latent)
        return self.style_norm(features.to(latent.dtype))

    # ---- the image ----
    def noise_shapes(self) -> List[Tuple[int, int]]:
        """(channels=1, side) of the noise image of every layer, in the order ``forward`` uses them."""
        return [(1, r) for r in self.resolutions for _ in range(2)]

    def draw_noise(self, batch: int, generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> List[torch.Tensor]:
        """Noise images for ``batch`` samples (on ``generator``'s device, or ``device``)."""
        device = device if device is not None else (generator.device if generator is not None else None)
        return [torch.randn(batch, c, r, r, generator=generator, device=device) for c, r in self.noise_shapes()]

    def forward(self, labels: torch.Tensor, latent: torch.Tensor, noise: Optional[List[torch.Tensor]] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``labels`` (B, 7*(2*context+1), size, size) in [0, 1], ``latent`` (B, latent_dim) -> (B, 1, size, size).

        ``noise``: the noise images (:meth:`draw_noise`); None draws them with ``generator``."""
        if labels.shape[-1] != self.size or labels.shape[-2] != self.size:
            raise ValueError(f"labels must be {self.size}x{self.size}, got {tuple(labels.shape[-2:])}")
        if noise is None and self.config["pixel_noise"]:
            noise = [n.to(labels.device) for n in self.draw_noise(labels.shape[0], generator)]
        style = self.style(latent)
        x = None
        for i, (r, block) in enumerate(zip(self.resolutions, self.blocks)):
            at_r = labels if r == self.size else F.interpolate(labels, size=(r, r), mode="area")
            x = self.head(at_r) if x is None else F.interpolate(x, scale_factor=2, mode="nearest")
            layer_noise = noise[2 * i: 2 * i + 2] if noise is not None else (None, None)
            x = block(x, at_r, style, layer_noise)
        return torch.tanh(self.out(F.leaky_relu(x, 0.2)))


def style_parameters(model: LabelGenerator) -> int:
    """Trainable parameters of the style source (the circuit, its MLP control, or the baseline's linear layer)."""
    return sum(p.numel() for p in model.style_source.parameters())


def build_from_config(config: Dict) -> LabelGenerator:
    """Rebuild a label-conditioned generator from its stored description (``load_model``)."""
    method = METHOD_OF_ARCH.get(config.get("arch"))
    if method is None or config.get("method", method) != method:
        raise ValueError(f"architecture {config.get('arch')!r} with method {config.get('method')!r} in the model "
                         "description is not a label-conditioned generator")
    hidden = config.get("mlp_hidden")
    return LabelGenerator(method, size=int(config["size"]), context=int(config.get("context", 0)),
                          width=int(config["width"]), hidden=int(config["hidden"]), n_qubits=int(config["n_qubits"]),
                          n_layers=int(config["n_layers"]), n_circuits=int(config["n_circuits"]),
                          mlp_hidden=None if hidden is None else int(hidden),
                          latent_dim=None if config.get("latent_dim") is None else int(config["latent_dim"]),
                          pixel_noise=bool(config.get("pixel_noise", True)))
