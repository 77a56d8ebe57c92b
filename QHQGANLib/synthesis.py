"""Synthetic CT slices for data augmentation: the hybrid quantum GAN and its classical rivals.

Four generators share one classical decoder (DCGAN-style transposed convolutions,
4x4 -> 64x64 or 128x128) and differ only in what feeds it:

* ``hqgan``: latent noise ``z`` (``n_qubits`` angles, uniform in [0, pi)) ->
  :class:`~QHQGANLib.quantum.QuantumLayer` (re-uploading, ``<Z_i>`` outputs) -> decoder;
  WGAN-GP loss.
* ``ablation``: the same with the circuit replaced by a parameter-matched classical MLP.
* ``wgan-gp`` (Gulrajani et al. 2017): Gaussian ``z`` (100-d, as published) -> decoder; WGAN-GP.
* ``dcgan`` (Radford et al. 2016): Gaussian ``z`` (100-d) -> decoder; BCE loss, batch-norm
  discriminator, Adam 2e-4 / beta1 0.5 as published.

The critics are one family (strided 4x4 convolutions with LeakyReLU); the WGAN critics
use no batch norm (the gradient penalty is per sample), the DCGAN discriminator does.

Images are trained on HU windowed to ``WINDOW`` = [-1024, 1024] and scaled to [-1, 1];
generated samples are returned in HU. Every generated volume is named and marked as
synthetic (``metadata["synthetic"] = True``; DICOM export writes ``SyntheticData`` YES).

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.synthesis import SynthConfig, train_synth, synthesize
    >>> ct = q.read_volume("rare_case_ct/")
    >>> model = train_synth(SynthConfig(method="hqgan", size=64, steps=500), [ct])
    >>> fake = synthesize(model, n=32, seed=0)          # a Volume of 32 synthetic slices, HU
    >>> fake = synthesize("hqgan-synth", n=32, seed=0)  # with a shipped model
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .progress import check_cancel, report
from .volume import Volume

WINDOW = (-1024.0, 1024.0)
METHODS = ("hqgan", "ablation", "wgan-gp", "dcgan")
ARCH_OF_METHOD = {"hqgan": "hqgan-synth", "ablation": "ablation-synth", "wgan-gp": "wgan-gp", "dcgan": "dcgan"}


def hu_to_unit(x: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip(x, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def unit_to_hu(x: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.asarray(x) + 1.0) / 2.0 * (hi - lo) + lo


@dataclass
class SynthConfig:
    method: str = "hqgan"
    size: int = 64
    steps: int = 500
    batch_size: int = 32
    seed: int = 0
    n_qubits: int = 8
    n_layers: int = 4
    latent_dim: int = 100              # for wgan-gp / dcgan (published); hqgan/ablation use n_qubits
    width: int = 16                    # decoder channels at the last stage (x8 at 4x4)
    lr_g: Optional[float] = None       # None: the method's published setting
    lr_d: Optional[float] = None
    n_critic: int = 5                  # WGAN-GP critic updates per generator update (published)
    gp_weight: float = 10.0
    augment: bool = True               # flips (left-right) of training slices
    output_dir: Optional[str] = None
    checkpoint_every: int = 500

    def to_dict(self) -> Dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------
class Decoder(nn.Module):
    """features (B, d) -> image (B, 1, size, size) in [-1, 1]."""

    def __init__(self, in_features: int, size: int = 64, width: int = 16):
        super().__init__()
        if size not in (64, 128):
            raise ValueError(f"size must be 64 or 128, got {size}")
        n_up = int(math.log2(size // 4))
        channels = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 256,128,64,32
        self.start = channels[0]
        self.fc = nn.Sequential(nn.Linear(in_features, 4 * 4 * channels[0]), nn.ReLU())
        blocks = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            blocks += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]
        blocks += [nn.ConvTranspose2d(channels[-1], 1, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*blocks)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(features).view(-1, self.start, 4, 4))


class SynthGenerator(nn.Module):
    """Latent -> (quantum | classical | nothing) -> decoder. ``sample_latent`` draws its noise."""

    def __init__(self, method: str = "hqgan", size: int = 64, n_qubits: int = 8, n_layers: int = 4,
                 latent_dim: int = 100, width: int = 16, quantum_backend: str = "torch"):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.size = method, size
        self.config = {"arch": ARCH_OF_METHOD[method], "method": method, "size": size, "n_qubits": n_qubits,
                       "n_layers": n_layers, "latent_dim": latent_dim, "width": width}
        if method == "hqgan":
            from .quantum import QuantumLayer

            self.latent_dim = n_qubits
            self.mixer = QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=True, backend=quantum_backend)
        elif method == "ablation":
            from .models import ClassicalMixer

            self.latent_dim = n_qubits
            self.mixer = ClassicalMixer(n_qubits, target_params=n_layers * n_qubits * 2)
        else:
            self.latent_dim = latent_dim
            self.mixer = nn.Identity()
        self.decoder = Decoder(self.latent_dim, size, width)

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.method in ("hqgan", "ablation"):
            return torch.rand(n, self.latent_dim, generator=generator) * math.pi  # circuit angles
        return torch.randn(n, self.latent_dim, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.mixer(z).to(z.dtype))


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


def build_from_config(config: Dict):
    """Rebuild a synthesis generator from its stored description (used by ``load_model``)."""
    return SynthGenerator(method=config["method"], size=int(config["size"]), n_qubits=int(config["n_qubits"]),
                          n_layers=int(config["n_layers"]), latent_dim=int(config["latent_dim"]),
                          width=int(config["width"]))


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def training_slices(volumes: Sequence[Volume], size: int = 64, roi: Optional[Sequence[np.ndarray]] = None,
                    min_body_fraction: float = 0.05) -> np.ndarray:
    """Axial slices of ``volumes`` as (n, size, size) HU, each resampled to ``size``.

    Each slice is cropped to a square around the body (voxels above -500 HU), or around
    the ROI mask when ``roi`` gives one (same shape as the volume) for each volume; the
    aspect ratio is kept (physical pixel spacing), the square padded with air. Slices
    with less than ``min_body_fraction`` of body are skipped.
    """
    from skimage.transform import resize

    out: List[np.ndarray] = []
    for index, volume in enumerate(volumes):
        mask_volume = None if roi is None else np.asarray(roi[index]) > 0
        if mask_volume is not None and mask_volume.shape != volume.shape:
            raise ValueError(f"ROI {index} has shape {mask_volume.shape}, the volume {volume.shape}")
        sx, sy = volume.spacing[0], volume.spacing[1]
        for k in range(volume.shape[0]):
            image = volume.array[k]
            mask = (image > -500) if mask_volume is None else mask_volume[k]
            if mask.mean() < (min_body_fraction if mask_volume is None else 1e-9):
                continue
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            # square in millimetres around the box centre
            side_mm = max((y1 - y0) * sy, (x1 - x0) * sx) * 1.05
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            hy, hx = side_mm / sy / 2, side_mm / sx / 2
            ys_idx = np.clip(np.arange(int(np.floor(cy - hy)), int(np.ceil(cy + hy))), -1, image.shape[0])
            xs_idx = np.clip(np.arange(int(np.floor(cx - hx)), int(np.ceil(cx + hx))), -1, image.shape[1])
            padded = np.pad(image, 1, constant_values=-1024.0)
            crop = padded[np.ix_(ys_idx + 1, xs_idx + 1)]
            out.append(resize(np.clip(crop, -1024, 3071), (size, size), order=1, anti_aliasing=True,
                              preserve_range=True).astype(np.float32))
    if not out:
        raise ValueError("no usable slices (no body or ROI found)")
    return np.stack(out)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _published_lrs(method: str):
    if method == "dcgan":
        return 2e-4, 2e-4, (0.5, 0.999)
    return 1e-4, 1e-4, (0.0, 0.9)  # WGAN-GP (Gulrajani et al. 2017, Algorithm 1)


def train_synth(cfg: SynthConfig, volumes: Optional[Sequence[Volume]] = None,
                slices: Optional[np.ndarray] = None, roi: Optional[Sequence[np.ndarray]] = None,
                progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                show_progress: bool = False) -> SynthGenerator:
    """Train a synthesis generator on ``volumes`` (or ready ``slices`` (n, s, s) in HU); seeded."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if slices is None:
        if not volumes:
            raise ValueError("give training volumes or slices")
        slices = training_slices(volumes, cfg.size, roi=roi)
    if slices.shape[1:] != (cfg.size, cfg.size):
        raise ValueError(f"slices must be {cfg.size}x{cfg.size}, got {slices.shape[1:]}")
    data = torch.from_numpy(hu_to_unit(slices).astype(np.float32))[:, None]

    gen = SynthGenerator(cfg.method, cfg.size, cfg.n_qubits, cfg.n_layers, cfg.latent_dim, cfg.width)
    critic = Critic(cfg.size, cfg.width, batch_norm=(cfg.method == "dcgan"))
    lr_g, lr_d, betas = _published_lrs(cfg.method)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g or lr_g, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr_d or lr_d, betas=betas)
    torch_gen = torch.Generator().manual_seed(cfg.seed)
    wgan = cfg.method != "dcgan"
    n_critic = cfg.n_critic if wgan else 1
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    log = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log = open(out_dir / "losses.jsonl", "w")

    def real_batch() -> torch.Tensor:
        idx = rng.integers(len(data), size=cfg.batch_size)
        batch = data[idx].clone()
        if cfg.augment:
            flip = torch.from_numpy(rng.random(cfg.batch_size) < 0.5)
            batch[flip] = batch[flip].flip(-1)
        return batch

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc=f"training {cfg.method} synthesis")
    t0 = time.time()
    try:
        for step in range(cfg.steps):
            check_cancel(cancel)
            for _ in range(n_critic):
                real = real_batch()
                with torch.no_grad():
                    fake = gen(gen.sample_latent(cfg.batch_size, torch_gen))
                if wgan:
                    loss_d = critic(fake).mean() - critic(real).mean()
                    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=torch_gen)
                    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
                    grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
                    loss_d = loss_d + cfg.gp_weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
                else:
                    ones, zeros = torch.ones(real.shape[0]), torch.zeros(real.shape[0])
                    loss_d = (F.binary_cross_entropy_with_logits(critic(real), ones)
                              + F.binary_cross_entropy_with_logits(critic(fake), zeros))
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            fake = gen(gen.sample_latent(cfg.batch_size, torch_gen))
            if wgan:
                loss_g = -critic(fake).mean()
            else:
                loss_g = F.binary_cross_entropy_with_logits(critic(fake), torch.ones(fake.shape[0]))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if log is not None:
                log.write(json.dumps({"step": step + 1, "loss_d": float(loss_d.detach()),
                                      "loss_g": float(loss_g.detach())}) + "\n")
            if bar is not None:
                bar.update(1)
            report(progress, (step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps}")
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    gen.eval()
    gen.training_seconds = time.time() - t0
    return gen


# ---------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------
def synthesize(model: Union[str, SynthGenerator], n: int = 8, seed: int = 0, pixel_spacing: float = 1.0,
               slice_spacing: float = 1.0, progress: Optional[Callable[[float, str], None]] = None,
               cancel=None, batch_size: int = 64, quantum_backend: Optional[str] = None) -> Volume:
    """``n`` synthetic slices as a Volume (HU), seeded; named and marked synthetic in its metadata.

    The slices are independent samples stacked along z (not a contiguous volume);
    ``pixel_spacing`` is nominal (the training crops were resampled to a fixed size).
    """
    from . import __version__

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if isinstance(model, str):
        from .registry import load_model

        model = load_model(model, quantum_backend=quantum_backend)
    elif quantum_backend:
        from .registry import set_quantum_backend

        set_quantum_backend(model, quantum_backend)
    if not isinstance(model, SynthGenerator):
        raise TypeError(f"{type(model).__name__} is not a synthesis model (try hqgan-synth)")
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    images = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            check_cancel(cancel)
            count = min(batch_size, n - start)
            images.append(model(model.sample_latent(count, generator))[:, 0].float().numpy())
            report(progress, (start + count) / n, f"{start + count}/{n} samples")
    array = unit_to_hu(np.concatenate(images)).astype(np.float32)
    name = getattr(model, "card", {}).get("name", model.config["arch"]) if hasattr(model, "card") else model.config["arch"]
    metadata = {
        "synthetic": True,
        "name": f"SYNTHETIC_{name}_seed{seed}",
        "history": [f"synthesized by {name} (QHQGANLib {__version__}), seed {seed}, {n} independent samples"],
        "model": name,
        "seed": int(seed),
    }
    return Volume(array, (pixel_spacing, pixel_spacing, slice_spacing), (0.0, 0.0, 0.0), np.eye(3), metadata)
