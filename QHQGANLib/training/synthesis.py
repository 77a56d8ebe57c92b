"""Training of the synthesis generators (:mod:`QHQGANLib.nn.synthesis`): HQGAN, its ablation, WGAN-GP, DCGAN.

The same for every method: left-right flips of the training slices, DiffAugment
(random translation, optionally cutout) of real and generated images before the critic
(Zhao et al. 2020: a critic that cannot memorise ~100 slices), and samples from an
exponential moving average of the generator weights. The WGAN-GP methods use 2 critic
updates per generator update at Adam 2e-4 (the paper: 5 at 1e-4) to fit a CPU budget:
1200 generator updates take about 5 minutes at 64x64 on 2 CPU cores. DCGAN uses BCE,
a batch-norm discriminator and Adam 2e-4 / beta1 0.5 as published.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.training.synthesis import SynthConfig, train_synth
    >>> ct = q.read_volume("rare_case_ct/")
    >>> model = train_synth(SynthConfig(method="hqgan", size=64, steps=1200), [ct])
    >>> fake = q.synthesize(model, n=32, seed=0)          # a Volume of 32 synthetic slices, HU
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.critics import Critic
from ..nn.synthesis import METHODS, SynthGenerator, hu_to_unit
from .augment import diff_augment, parse_diffaugment
from .slices import training_slices


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
    from .checkpoints import check_resumable, load_checkpoint

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
        from .checkpoints import write_checkpoint

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
