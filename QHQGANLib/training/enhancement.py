"""Training of the enhancement and super-resolution generators (HQGAN, its controls, RED-CNN).

Pairs are made from normal-dose CT with the physics simulator (:mod:`QHQGANLib.training.pairs`).

Architectures (``arch``, ``ARCHS``): ``hqgan``; its controls ``mlp-control`` (the circuit
replaced by a fair classical MLP), ``no-circuit`` (the quantum block removed) and
``bottleneck-ablation`` (the legacy 8 -> 1 -> 8 MLP, not a fair control; ``"ablation"`` is
still accepted for it, the name the earlier ``ablation-enhance`` was trained under);
``hqgan-film`` and its control ``mlp-control-film`` (the slot's outputs modulate the features
instead of being added to them: :mod:`QHQGANLib.nn.enhancer`); and
``redcnn`` (``redcnn_context`` 0: one slice, as published; 1: the 3 slices HQGAN sees).

Loss (``loss``): ``"l1-ssim-adv"`` (default) = L1 + ``ssim_weight`` x (1 - SSIM) +
``adv_weight`` x adversarial term of a classical patch critic trained with WGAN-GP
(Gulrajani et al. 2017: gradient penalty 10, ``critic_steps`` critic updates per generator
update; ``adv_weight=0`` is pure regression). ``"mse"``: the published RED-CNN recipe (Chen et
al. 2017), mean squared error alone (in units of 1000 HU), no critic trained; ``ssim_weight``
and ``adv_weight`` are then unused. The published recipe for RED-CNN is
``TrainConfig(arch="redcnn", loss="mse", redcnn_width=96, lr=1e-4)``.

The loop, checkpoints, loss log and exact resume are :func:`QHQGANLib.training.loop.run_loop`'s;
this module gives it one update (:class:`EnhancerStep`). Seeded and deterministic on the CPU (same
seed, same config -> same weights); ``resume=True`` continues exactly where a run stopped.

``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``): the generator, the critic, every batch and
the penalty's random mixing weights live there; the returned model stays there (checkpoints
hold CPU tensors). ``amp=True``: mixed precision (float16 + GradScaler on CUDA, bfloat16 on
the CPU; :class:`~QHQGANLib.training.loop.Precision`). The same code runs under
``torchrun --nproc_per_node N`` (DistributedDataParallel; NCCL when training on CUDA, one GPU
per rank, Gloo on the CPU): every rank draws its own patches, rank 0 writes the checkpoints.

Console usage::

    >>> from QHQGANLib.training.enhancement import TrainConfig, train_enhancer
    >>> cfg = TrainConfig(arch="hqgan", task="enhance", steps=2000, output_dir="runs/hqgan")
    >>> model = train_enhancer(cfg, volumes=[q.read_volume("ct_series/")])
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.kinds import ENHANCE_ARCHS
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.baselines import REDCNN
from ..nn.common import count_parameters
from ..nn.critics import PatchCritic
from ..nn.build import LEGACY_ENHANCE_ARCHS
from ..nn.enhancer import MIXER_OF_ARCH, HQGANGenerator, placement_of_arch
from .distributed import frozen, gather_from_ranks, setup_distributed, unwrap, wrap_ddp
from .loop import Precision, check_output_dir, claim_output_dir, in_training_layout, resume_state, run_loop
from .losses import gradient_penalty, ssim_loss
from .pairs import PairPool
from .provenance import write_training_data


ARCHS = ENHANCE_ARCHS
LOSSES = ("l1-ssim-adv", "mse")


@dataclass
class TrainConfig:
    arch: str = "hqgan"                  # ARCHS ("ablation": the legacy name of "bottleneck-ablation")
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
    dose_range: Tuple[float, float] = (0.05, 0.5)   # a wide range: models robust to the noise level (issue #9)
    recon_filters: Tuple[str, ...] = ("hann",)      # the simulator's FBP filters, one drawn per realisation (#26)
    scale: int = 2
    pool_size: int = 4                   # low-dose realisations per training volume
    refresh_every: int = 250             # re-simulate one realisation every N steps
    seed: int = 0
    context: int = 1                     # neighbour slices each side (hqgan and its controls)
    width: int = 16
    n_qubits: int = 8
    n_layers: int = 2
    mlp_hidden: Optional[int] = None     # mlp-control / bottleneck-ablation: hidden width (None: their rule)
    redcnn_width: int = 96
    redcnn_context: int = 0              # RED-CNN: 0 = one slice (published), 1 = 3 slices (as HQGAN)
    loss: str = "l1-ssim-adv"            # LOSSES: "l1-ssim-adv" or "mse" (RED-CNN's published loss, no critic)
    checkpoint_every: int = 500
    output_dir: Optional[str] = None
    resume: bool = False
    overwrite: bool = False              # a non-empty output_dir: replace the earlier run (not compared on resume)
    threads: Optional[int] = None
    device: str = "auto"                 # "auto", "cpu", "cuda" or "cuda:N" (one GPU per rank under torchrun)
    amp: bool = False                    # mixed precision: float16 on CUDA, bfloat16 on the CPU

    def to_dict(self) -> Dict:
        return asdict(self)


def canonical_arch(arch: str) -> str:
    """``arch`` with a legacy name replaced by the current one; ValueError for an unknown one."""
    arch = LEGACY_ENHANCE_ARCHS.get(arch, arch)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return arch


def build_model(cfg: TrainConfig) -> nn.Module:
    arch = canonical_arch(cfg.arch)
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    if arch == "redcnn":
        if cfg.task != "enhance":
            raise ValueError("RED-CNN is a denoiser: task must be 'enhance'")
        return REDCNN(width=cfg.redcnn_width, context=cfg.redcnn_context)
    return HQGANGenerator(task=cfg.task, context=cfg.context, width=cfg.width, n_qubits=cfg.n_qubits,
                          n_layers=cfg.n_layers, mixer=MIXER_OF_ARCH[arch], scale=cfg.scale,
                          mlp_hidden=cfg.mlp_hidden, placement=placement_of_arch(arch))


def model_context(model: nn.Module) -> int:
    return (getattr(model, "in_slices", 1) - 1) // 2


#: TrainConfig fields that must match to resume from a checkpoint (they shape the networks).
RESUME_KEYS = ("arch", "task", "context", "width", "n_qubits", "n_layers", "mlp_hidden", "redcnn_width",
               "redcnn_context", "scale", "loss")


class EnhancerStep:
    """One update of the enhancement GAN (``critic_steps`` critic updates, one generator update),
    and the state that makes a resumed run continue exactly (see :mod:`QHQGANLib.training.loop`)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, critic: nn.Module, pool: PairPool,
                 rng: np.random.Generator, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.model, self.critic, self.pool, self.rng = cfg, model, critic, pool, rng
        self.device, self.rank, self.world = device, rank, world
        self.opt_g = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.opt_c = torch.optim.Adam(critic.parameters(), lr=cfg.lr_critic, betas=(0.5, 0.9))
        self.amp = Precision(device, cfg.amp)
        self.scaler_g, self.scaler_c = self.amp.scaler(), self.amp.scaler()
        # the penalty's mixing weights: the global (seeded) stream on the CPU, as always; a generator on a GPU
        self.device_rng = None if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
        self.gen_train, self.critic_train = wrap_ddp(model, device, world), wrap_ddp(critic, device, world)

    def train_step(self, step: int) -> Dict[str, float]:
        cfg, amp = self.cfg, self.amp
        if cfg.refresh_every and step > 0 and step % cfg.refresh_every == 0:
            self.pool.refresh(step)
        x, y = (in_training_layout(t.to(self.device, non_blocking=True)) for t in self.pool.batch(cfg.batch_size))
        stats: Dict[str, float] = {}
        adversarial = cfg.loss != "mse" and cfg.adv_weight > 0  # "mse": no critic is trained
        # One generator forward serves the critic and the generator update: the critic steps change
        # only the critic, so the generator's output is the same for all of them (issue #16).
        with amp.autocast():
            out = self.gen_train(x)
        out = out.float()
        if adversarial:
            fake = out.detach()
            for _ in range(cfg.critic_steps):
                with amp.autocast():
                    loss_c = self.critic_train(fake).float().mean() - self.critic_train(y).float().mean()
                gp = gradient_penalty(self.critic_train, y, fake, generator=self.device_rng)
                amp.step(loss_c + cfg.gp_weight * gp, self.opt_c, self.scaler_c)
            stats["critic"] = float(loss_c.detach())
            stats["gp"] = float(gp.detach())
        l1 = F.l1_loss(out, y) / 1000.0  # in units of 1000 HU
        if cfg.loss == "mse":  # RED-CNN's published loss: MSE alone
            loss = F.mse_loss(out / 1000.0, y / 1000.0)
            stats["mse"] = float(loss.detach())
        else:
            loss = l1
        if cfg.ssim_weight > 0 and cfg.loss != "mse":
            s = ssim_loss(out, y)
            loss = loss + cfg.ssim_weight * s
            stats["ssim_loss"] = float(s.detach())
        if adversarial:
            with frozen(self.critic) as critic, amp.autocast():  # no critic weight gradients: thrown away
                adv = -critic(out).float().mean()
            loss = loss + cfg.adv_weight * adv
            stats["adv"] = float(adv.detach())
        amp.step(loss, self.opt_g, self.scaler_g)
        stats["l1_hu"] = float(l1.detach()) * 1000.0  # logged for every loss, to compare runs
        stats["loss"] = float(loss.detach())
        return stats

    def state_dict(self) -> Dict[str, Any]:
        numpy_states = gather_from_ranks(self.rng.bit_generator.state, self.world)  # every rank draws its own patches
        return {
            "model": unwrap(self.model).state_dict(),
            "critic": unwrap(self.critic).state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_c": self.opt_c.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(numpy_states[0] if self.world == 1 else numpy_states),
            "device_rng": None if self.device_rng is None else self.device_rng.get_state(),
            "scaler_g": None if self.scaler_g is None else self.scaler_g.state_dict(),
            "scaler_c": None if self.scaler_c is None else self.scaler_c.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        unwrap(self.critic).load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])  # moves the moments to the parameters' device
        self.opt_c.load_state_dict(state["opt_c"])
        torch.set_rng_state(state["torch_rng"])
        numpy_state = json.loads(state["numpy_rng"])
        self.rng.bit_generator.state = numpy_state if self.world == 1 else numpy_state[self.rank]
        if self.device_rng is not None and state.get("device_rng") is not None:
            self.device_rng.set_state(state["device_rng"])
        for scaler, key in ((self.scaler_g, "scaler_g"), (self.scaler_c, "scaler_c")):
            if scaler is not None and state.get(key) is not None:
                scaler.load_state_dict(state[key])


def train_enhancer(cfg: TrainConfig, volumes: Sequence[Volume],
                   progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                   show_progress: bool = False) -> nn.Module:
    """Train a generator (``cfg.arch``) on ``volumes`` (normal-dose CT); returns the trained model,
    on the training device (``cfg.device``).

    ``progress(fraction, message)`` and ``cancel`` as everywhere in QHQGANLib;
    ``show_progress`` draws a tqdm bar. With ``cfg.output_dir`` set, checkpoints and
    ``losses.jsonl`` go there and ``cfg.resume`` continues from ``checkpoint.pt`` (a fresh
    run when there is none yet); a non-empty ``output_dir`` is refused before any work unless
    ``cfg.resume`` or ``cfg.overwrite``, and the folder is claimed for the run.
    """
    check_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    rank, world, device = setup_distributed(cfg.device)  # a missing GPU is an error before any work
    with claim_output_dir(cfg.output_dir, rank):
        return _train_enhancer(cfg, volumes, progress, cancel, show_progress, rank, world, device)


def _train_enhancer(cfg: TrainConfig, volumes: Sequence[Volume], progress, cancel, show_progress: bool,
                    rank: int, world: int, device: torch.device) -> nn.Module:
    """:func:`train_enhancer` once its output folder is checked and claimed."""
    check_cancel(cancel)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng([cfg.seed, rank])

    # channels last while training (loop.TRAINING_LAYOUT); the returned model is NCHW again
    model = in_training_layout(build_model(cfg).to(device))
    critic = in_training_layout(PatchCritic().to(device))
    state = (resume_state(cfg.output_dir, cfg, RESUME_KEYS, cfg.steps, world, missing_ok=True)
             if cfg.resume else None)
    start = int(state["step"]) if state is not None else 0
    # the pool is rebuilt as it was at `start`, then the random streams continue from the checkpoint
    pool = PairPool(volumes, cfg, model_context(model), [cfg.seed, rank], start_step=start,
                    progress=(lambda f, m: report(progress, 0.1 * f, m)), cancel=cancel)
    pool.rng = rng
    task = EnhancerStep(cfg, model, critic, pool, rng, device, rank, world)
    if state is not None:
        task.load_state_dict(state)
    seconds = run_loop(task, cfg.steps, start=start, output_dir=cfg.output_dir,
                       checkpoint_every=cfg.checkpoint_every, config=cfg.to_dict(), rank=rank, world=world,
                       progress=progress, cancel=cancel, progress_range=(0.1, 1.0), show_progress=show_progress,
                       description=f"training {cfg.arch} ({cfg.task})", resume=cfg.resume,
                       overwrite=cfg.overwrite)
    if rank == 0 and cfg.output_dir:
        write_training_data(cfg.output_dir, volumes)  # what this run read: voxel sha256 per volume (#27)
        (Path(cfg.output_dir) / "summary.json").write_text(json.dumps({
            "steps": cfg.steps, "seconds": seconds, "parameters": count_parameters(model),
            "world_size": world, "device": str(device), "amp": cfg.amp,
            "updates_per_second": (cfg.steps - start) / seconds if seconds > 0 else None}, indent=2))
    model = model.to(memory_format=torch.contiguous_format)
    model.training_seconds, model.training_updates = seconds, cfg.steps - start
    return model
