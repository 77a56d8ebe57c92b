"""Training of the enhancement and super-resolution generators (HQGAN, its ablation, RED-CNN).

Pairs are made from normal-dose CT with the physics simulator (:mod:`QHQGANLib.training.pairs`).

Loss = L1 + ``ssim_weight`` x (1 - SSIM) + ``adv_weight`` x adversarial term of a
classical patch critic trained with WGAN-GP (Gulrajani et al. 2017: gradient
penalty 10, ``critic_steps`` critic updates per generator update). ``adv_weight=0``
is pure regression.

Seeded and deterministic (same seed, same config -> same weights); checkpoints every
``checkpoint_every`` steps hold the weights, optimiser states and random states, so
``resume=True`` continues exactly where a run stopped. A loss log
(``losses.jsonl``) sits beside them. The same code runs under
``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, NCCL on GPU):
every rank draws its own patches, rank 0 writes the checkpoints.

Console usage::

    >>> from QHQGANLib.training.enhancement import TrainConfig, train_enhancer
    >>> cfg = TrainConfig(arch="hqgan", task="enhance", steps=2000, output_dir="runs/hqgan")
    >>> model = train_enhancer(cfg, volumes=[q.read_volume("ct_series/")])
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.baselines import REDCNN
from ..nn.common import count_parameters
from ..nn.critics import PatchCritic
from ..nn.enhancer import HQGANGenerator
from .checkpoints import check_resumable, load_checkpoint, save_checkpoint
from .distributed import _distributed
from .losses import gradient_penalty, ssim_loss
from .pairs import PairPool


ARCHS = ("hqgan", "ablation", "redcnn")


@dataclass
class TrainConfig:
    arch: str = "hqgan"                  # "hqgan", "ablation" (classical mixer) or "redcnn"
    task: str = "enhance"                # "enhance" or "super-resolve"
    steps: int = 2000
    batch_size: int = 16
    patch_size: int = 64                 # output patch size (HR size for super-resolution)
    lr: float = 1e-3                     # Adam; RED-CNN's published rate is 1e-4
    lr_critic: float = 1e-4
    ssim_weight: float = 0.1
    adv_weight: float = 1e-3             # 0 = pure regression
    critic_steps: int = 1
    gp_weight: float = 10.0
    dose_range: Tuple[float, float] = (0.1, 0.5)
    scale: int = 2
    pool_size: int = 4                   # low-dose realisations per training volume
    refresh_every: int = 250             # re-simulate one realisation every N steps
    seed: int = 0
    context: int = 1                     # neighbour slices each side (hqgan/ablation)
    width: int = 16
    n_qubits: int = 8
    n_layers: int = 2
    redcnn_width: int = 96
    checkpoint_every: int = 500
    output_dir: Optional[str] = None
    resume: bool = False
    threads: Optional[int] = None

    def to_dict(self) -> Dict:
        return asdict(self)


def build_model(cfg: TrainConfig) -> nn.Module:
    if cfg.arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {cfg.arch!r}")
    if cfg.arch == "redcnn":
        if cfg.task != "enhance":
            raise ValueError("RED-CNN is a denoiser: task must be 'enhance'")
        return REDCNN(width=cfg.redcnn_width)
    return HQGANGenerator(task=cfg.task, context=cfg.context, width=cfg.width, n_qubits=cfg.n_qubits,
                          n_layers=cfg.n_layers, mixer="quantum" if cfg.arch == "hqgan" else "classical",
                          scale=cfg.scale)


def model_context(model: nn.Module) -> int:
    return (getattr(model, "in_slices", 1) - 1) // 2


def train_enhancer(cfg: TrainConfig, volumes: Sequence[Volume],
                   progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                   show_progress: bool = False) -> nn.Module:
    """Train a generator (``cfg.arch``) on ``volumes`` (normal-dose CT); returns the trained model.

    ``progress(fraction, message)`` and ``cancel`` as everywhere in QHQGANLib;
    ``show_progress`` draws a tqdm bar. With ``cfg.output_dir`` set, checkpoints and
    ``losses.jsonl`` go there and ``cfg.resume`` continues from ``checkpoint.pt``.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = _distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng([cfg.seed, rank])

    model = build_model(cfg)
    critic = PatchCritic()
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic, betas=(0.5, 0.9))
    out_dir = Path(cfg.output_dir) if cfg.output_dir else None
    ckpt_path = out_dir / "checkpoint.pt" if out_dir else None
    start = 0
    resumed_rng_state = None
    if cfg.resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        check_resumable(json.loads(state["config"]), cfg,
                        ("arch", "task", "context", "width", "n_qubits", "n_layers", "redcnn_width", "scale"))
        model.load_state_dict(state["model"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_c.load_state_dict(state["opt_c"])
        start = int(state["step"])
        resumed_rng_state = (state["torch_rng"], json.loads(state["numpy_rng"]))

    # the pool is rebuilt as it was at `start`, then the random streams continue from the checkpoint
    pool = PairPool(volumes, cfg, model_context(model), [cfg.seed, rank], start_step=start,
                    progress=(lambda f, m: report(progress, 0.1 * f, m)), cancel=cancel)
    if resumed_rng_state is not None:
        torch.set_rng_state(resumed_rng_state[0])
        rng.bit_generator.state = resumed_rng_state[1]
    pool.rng = rng

    gen_train, critic_train = model, critic
    if world > 1:
        gen_train, critic_train = DDP(model), DDP(critic)
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    log = open(out_dir / "losses.jsonl", "a") if (out_dir is not None and rank == 0) else None

    bar = None
    if show_progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"training {cfg.arch} ({cfg.task})")
    t0 = time.time()
    try:
        for step in range(start, cfg.steps):
            check_cancel(cancel)
            if cfg.refresh_every and step > 0 and step % cfg.refresh_every == 0:
                pool.refresh(step)
            x, y = pool.batch(cfg.batch_size)
            stats = {"step": step + 1}
            if cfg.adv_weight > 0:
                for _ in range(cfg.critic_steps):
                    with torch.no_grad():
                        fake = gen_train(x)
                    loss_c = critic_train(fake).mean() - critic_train(y).mean()
                    gp = gradient_penalty(critic_train, y, fake)
                    opt_c.zero_grad(set_to_none=True)
                    (loss_c + cfg.gp_weight * gp).backward()
                    opt_c.step()
                stats["critic"] = float(loss_c.detach())
                stats["gp"] = float(gp.detach())
            out = gen_train(x)
            l1 = F.l1_loss(out, y) / 1000.0  # in units of 1000 HU
            loss = l1
            if cfg.ssim_weight > 0:
                s = ssim_loss(out, y)
                loss = loss + cfg.ssim_weight * s
                stats["ssim_loss"] = float(s.detach())
            if cfg.adv_weight > 0:
                adv = -critic_train(out).mean()
                loss = loss + cfg.adv_weight * adv
                stats["adv"] = float(adv.detach())
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            stats["l1_hu"] = float(l1.detach()) * 1000.0
            stats["loss"] = float(loss.detach())
            if log is not None:
                log.write(json.dumps(stats) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(l1_hu=f"{stats['l1_hu']:.1f}")
            report(progress, 0.1 + 0.9 * (step + 1) / cfg.steps, f"step {step + 1}/{cfg.steps}")
            done = step + 1
            if ckpt_path is not None and rank == 0 and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                save_checkpoint(ckpt_path, done, model, critic, opt_g, opt_c, rng, cfg)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    if rank == 0 and out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps({
            "steps": cfg.steps, "seconds": time.time() - t0, "parameters": count_parameters(model),
            "world_size": world}, indent=2))
    return model
