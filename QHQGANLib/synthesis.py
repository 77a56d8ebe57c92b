"""Synthetic CT slices for data augmentation: the hybrid quantum GAN and its classical rivals.

Four generators share one classical decoder (4x4 -> 64x64 or 128x128; each stage a nearest
x2 resize then a 3x3 convolution, which avoids the checkerboard artefacts of DCGAN's transposed
convolutions, Odena et al. 2016; ``upsample="transposed"`` gives DCGAN's) and differ only in
what feeds it:

* ``hqgan``: latent noise ``z`` (``n_circuits`` x ``n_qubits`` angles, uniform in [0, pi)) ->
  :class:`~QHQGANLib.quantum.QuantumLayer` (re-uploading, ``<Z_i>`` outputs; one set of
  weights run on each of the ``n_circuits`` noise vectors) -> batch normalisation of the
  ``n_circuits * n_qubits`` features (the circuit's outputs concentrate near 0) -> decoder;
  WGAN-GP loss. ``n_circuits=4`` (default) beat 1 in the benchmark: with 1, the decoder gets
  only 8 numbers per sample.
* ``ablation``: the same with the circuit replaced by a parameter-matched classical MLP.
* ``wgan-gp`` (Gulrajani et al. 2017): Gaussian ``z`` (100-d, as published) -> decoder; WGAN-GP.
* ``dcgan`` (Radford et al. 2016): Gaussian ``z`` (100-d) -> decoder; BCE loss, batch-norm
  discriminator, Adam 2e-4 / beta1 0.5 as published.

The critics are one family (strided 4x4 convolutions with LeakyReLU); the WGAN critics
use no batch norm (the gradient penalty is per sample), the DCGAN discriminator does.

Training, the same for every method: left-right flips of the training slices, DiffAugment
(random translation, optionally cutout) of real and generated images before the critic
(Zhao et al. 2020: a critic that cannot memorise ~100 slices), and samples from an
exponential moving average of the generator weights. The WGAN-GP methods use 2 critic
updates per generator update at Adam 2e-4 (the paper: 5 at 1e-4) to fit a CPU budget:
1200 generator updates take about 5 minutes at 64x64 on 2 CPU cores.

Images are trained on HU windowed to ``WINDOW`` = [-1024, 1024] and scaled to [-1, 1];
generated samples are returned in HU. Every generated volume is named and marked as
synthetic (``metadata["synthetic"] = True``; DICOM export writes ``SyntheticData`` YES).

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.synthesis import SynthConfig, train_synth, synthesize
    >>> ct = q.read_volume("rare_case_ct/")
    >>> model = train_synth(SynthConfig(method="hqgan", size=64, steps=1200), [ct])
    >>> fake = synthesize(model, n=32, seed=0)          # a Volume of 32 synthetic slices, HU
    >>> fake = synthesize("hqgan-synth", n=32, seed=0)  # with a shipped model
"""
from __future__ import annotations

import copy
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
UPSAMPLING = ("resize", "transposed")
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
    steps: int = 1200                  # ~5 min at 64x64 on 2 CPU cores (WGAN-GP methods)
    batch_size: int = 32
    seed: int = 0
    n_qubits: int = 8
    n_layers: int = 4
    latent_dim: int = 100              # for wgan-gp / dcgan (published); hqgan/ablation use n_qubits
    width: int = 16                    # decoder channels at the last stage (x8 at 4x4)
    lr_g: Optional[float] = None       # None: the method's default (see _default_lrs)
    lr_d: Optional[float] = None
    n_critic: int = 2                  # WGAN-GP critic updates per generator update (published: 5)
    gp_weight: float = 10.0
    augment: bool = True               # flips (left-right) of training slices
    diffaugment: str = "translation"   # differentiable augmentation of real and fake critic inputs
    upsample: str = "resize"           # decoder upsampling: "resize" (+conv) or "transposed" (DCGAN)
    feature_norm: bool = True          # hqgan/ablation: batch-normalise the mixer's outputs
    n_circuits: int = 4                # hqgan/ablation: circuit runs (shared weights) on independent noise
    ema_decay: float = 0.99            # returned generator: exponential moving average of the weights (0: off)
    output_dir: Optional[str] = None
    checkpoint_every: int = 500        # with output_dir: checkpoint.pt every this many updates and at the end
    resume: bool = False               # with output_dir: continue from its checkpoint.pt (exactly)

    def to_dict(self) -> Dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------
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
            from .quantum import QuantumLayer

            self.latent_dim = n_qubits * self.n_circuits
            self.mixer = QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=True, backend=quantum_backend)
        elif method == "ablation":
            from .models import ClassicalMixer

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

    def sample_latent(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.method in ("hqgan", "ablation"):
            return torch.rand(n, self.latent_dim, generator=generator) * math.pi  # circuit angles
        return torch.randn(n, self.latent_dim, generator=generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, K*n) -> one mixer run per noise vector, (B*K, n) -> (B, K*n); K = 1 for wgan-gp/dcgan
        features = self.mixer(z.reshape(-1, z.shape[-1] // self.n_circuits)).reshape(z.shape[0], -1)
        return self.decoder(self.features(features.to(z.dtype)))


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
                          width=int(config["width"]), upsample=str(config.get("upsample", "transposed")),
                          feature_norm=bool(config.get("feature_norm", False)),
                          n_circuits=int(config.get("n_circuits", 1)))


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
# differentiable augmentation (Zhao et al. 2020, "DiffAugment")
# ---------------------------------------------------------------------------
DIFFAUGMENT_OPS = ("translation", "cutout")


def parse_diffaugment(policy: str) -> List[str]:
    """``"translation,cutout"`` -> ``["translation", "cutout"]``; ``""`` -> no augmentation."""
    ops = [op.strip() for op in (policy or "").split(",") if op.strip()]
    unknown = [op for op in ops if op not in DIFFAUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown diffaugment operation(s) {unknown}; choose from {DIFFAUGMENT_OPS}")
    return ops


def diff_augment(x: torch.Tensor, ops: Sequence[str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random translation (up to 1/8 of the side, air shifted in) and cutout (a square of
    half the side set to air) of a batch (B, 1, s, s) in [-1, 1], differentiable in ``x``.

    The critic sees real and generated images through the same random transformations, so
    it cannot memorise a small training set, while the generator still learns the
    un-augmented distribution (the transformations do not leak into the samples).
    """
    if not ops:
        return x
    b, _, h, w = x.shape
    if "translation" in ops:
        shift = max(1, h // 8)
        pad = F.pad(x, (shift, shift, shift, shift), value=-1.0)  # air
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(b, 1, h, w + 2 * shift)
        pad = pad.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(b, 1, h, w)
        x = pad.gather(3, cols)
    if "cutout" in ops:
        ch, cw = h // 2, w // 2
        cy = torch.randint(0, h - ch + 1, (b,), generator=generator)
        cx = torch.randint(0, w - cw + 1, (b,), generator=generator)
        yy, xx = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        inside = ((yy >= cy[:, None, None]) & (yy < (cy + ch)[:, None, None])
                  & (xx >= cx[:, None, None]) & (xx < (cx + cw)[:, None, None]))
        x = torch.where(inside[:, None], torch.full_like(x, -1.0), x)
    return x


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _default_lrs(method: str):
    """Learning rates and Adam betas: DCGAN as published (Radford et al. 2016); WGAN-GP with the
    published betas (Gulrajani et al. 2017, Algorithm 1) but 2e-4 instead of 1e-4, which, with
    2 instead of 5 critic updates per generator update, reaches recognisable body sections in a
    CPU budget (BENCHMARKS.md, section "synth")."""
    if method == "dcgan":
        return 2e-4, 2e-4, (0.5, 0.999)
    return 2e-4, 2e-4, (0.0, 0.9)


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for the weights; buffers (batch-norm
    statistics) are copied. Sampling from the averaged weights gives smoother, more stable
    samples than the last iterate (Yazici et al. 2019); every method gets the same average."""
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


#: SynthConfig fields that must match to resume from a checkpoint (they shape the networks or the data).
RESUME_KEYS = ("method", "size", "n_qubits", "n_layers", "latent_dim", "width", "upsample", "feature_norm",
               "n_circuits", "batch_size", "seed", "ema_decay")


def _load_synth_checkpoint(path: Path, cfg: SynthConfig, gen, ema, critic, opt_g, opt_d, torch_gen, rng) -> int:
    """Restore a ``checkpoint.pt`` of :func:`train_synth` (no objects unpickled); its update count."""
    from .train import check_resumable, load_checkpoint

    state = load_checkpoint(path)
    check_resumable(json.loads(state["config"]), cfg, RESUME_KEYS)
    gen.load_state_dict(state["gen"])
    critic.load_state_dict(state["critic"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    torch_gen.set_state(state["torch_gen"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    return int(state["step"])


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

    policy = parse_diffaugment(cfg.diffaugment)
    gen = SynthGenerator(cfg.method, cfg.size, cfg.n_qubits, cfg.n_layers, cfg.latent_dim, cfg.width,
                         upsample=cfg.upsample, feature_norm=cfg.feature_norm, n_circuits=cfg.n_circuits)
    critic = Critic(cfg.size, cfg.width, batch_norm=(cfg.method == "dcgan"))
    lr_g, lr_d, betas = _default_lrs(cfg.method)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g or lr_g, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr_d or lr_d, betas=betas)
    torch_gen = torch.Generator().manual_seed(cfg.seed)
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    ema = copy.deepcopy(gen) if cfg.ema_decay > 0 else None
    wgan = cfg.method != "dcgan"
    n_critic = cfg.n_critic if wgan else 1
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    ckpt_path = out_dir / "checkpoint.pt" if out_dir is not None else None
    start = 0
    if cfg.resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint.pt in {cfg.output_dir!r}")
        start = _load_synth_checkpoint(ckpt_path, cfg, gen, ema, critic, opt_g, opt_d, torch_gen, rng)
        if start > cfg.steps:
            raise ValueError(f"the checkpoint is at update {start}, beyond steps={cfg.steps}")
    log = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        log = open(out_dir / "losses.jsonl", "a" if cfg.resume else "w")

    def checkpoint(step: int) -> None:
        from .train import write_checkpoint

        if ckpt_path is not None:
            write_checkpoint(ckpt_path, {
                "step": step, "gen": gen.state_dict(), "critic": critic.state_dict(),
                "ema": None if ema is None else ema.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "torch_gen": torch_gen.get_state(),
                "numpy_rng": json.dumps(rng.bit_generator.state), "config": json.dumps(cfg.to_dict())})

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

        bar = tqdm(total=cfg.steps, initial=start, desc=f"training {cfg.method} synthesis")
    t0 = time.time()
    try:
        for step in range(start, cfg.steps):
            check_cancel(cancel)
            for _ in range(n_critic):
                real = real_batch()
                with torch.no_grad():
                    fake = gen(gen.sample_latent(cfg.batch_size, torch_gen))
                real, fake = diff_augment(real, policy, torch_gen), diff_augment(fake, policy, torch_gen)
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
            fake = diff_augment(gen(gen.sample_latent(cfg.batch_size, torch_gen)), policy, torch_gen)
            if wgan:
                loss_g = -critic(fake).mean()
            else:
                loss_g = F.binary_cross_entropy_with_logits(critic(fake), torch.ones(fake.shape[0]))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if ema is not None:
                _update_ema(ema, gen, cfg.ema_decay)
            if log is not None:
                log.write(json.dumps({"step": step + 1, "loss_d": float(loss_d.detach()),
                                      "loss_g": float(loss_g.detach())}) + "\n")
            if bar is not None:
                bar.update(1)
            report(progress, (step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps}")
            if cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0:
                checkpoint(step + 1)
        if cfg.checkpoint_every <= 0 or cfg.steps % cfg.checkpoint_every:  # the last update not saved yet
            checkpoint(cfg.steps)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    result = gen if ema is None else ema
    result.eval()
    result.training_seconds = time.time() - t0
    return result


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
