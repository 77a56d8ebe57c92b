"""Training of the synthesis generators (:mod:`QHQGANLib.nn.synthesis`): HQGAN, its controls, WGAN-GP, DCGAN.

Methods (``METHODS``): ``hqgan``; its controls ``mlp-control`` (the circuit replaced by a fair
classical MLP), ``no-circuit`` (the noise straight to the batch norm and decoder) and
``bottleneck-ablation`` (the legacy 8 -> 3 -> 8 MLP, not a fair control; ``"ablation"`` is still
accepted for it); ``wgan-gp``; ``dcgan``.

The same for every method: left-right flips of the training slices, DiffAugment
(random translation, optionally cutout) of real and generated images before the critic
(Zhao et al. 2020: a critic that cannot memorise ~100 slices), and samples from an
exponential moving average of the generator weights. The WGAN-GP methods use 2 critic
updates per generator update at Adam 2e-4 (the paper: 5 at 1e-4) to fit a CPU budget:
1200 generator updates take about 5 minutes at 64x64 on 2 CPU cores (plain decoder). DCGAN uses BCE,
a batch-norm discriminator and Adam 2e-4 / beta1 0.5 as published.

The loop, checkpoints, loss log and exact resume are :func:`QHQGANLib.training.loop.run_loop`'s;
this module gives it one update (:class:`SynthStep`). ``device`` (``auto``, ``cpu``, ``cuda``,
``cuda:N``): the networks, the EMA copy, the training slices, the latent noise, the DiffAugment
and penalty random numbers and the BCE targets live there (one seeded ``torch.Generator`` on
that device; on the CPU the same CPU generator as always, so CPU results do not change); the
returned generator stays there. ``amp=True``: mixed precision (float16 + GradScaler on CUDA,
bfloat16 on the CPU). Under ``torchrun --nproc_per_node N`` the generator and critic train with
DistributedDataParallel (NCCL on CUDA, Gloo on the CPU); every rank draws its own slices and
noise, rank 0 writes the checkpoints.

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
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import check_cancel
from ..core.volume import Volume
from ..nn.critics import Critic
from ..nn.synthesis import SynthGenerator, canonical_method, hu_to_unit
from .augment import diff_augment, parse_diffaugment
from .distributed import broadcast_buffers, frozen, gather_from_ranks, setup_distributed, unwrap, wrap_ddp
from .loop import Precision, check_output_dir, claim_output_dir, in_training_layout, resume_state, run_loop
from .provenance import write_training_data
from .losses import gradient_penalty
from .slices import training_pixel_spacing, training_slices


@dataclass
class SynthConfig:
    method: str = "hqgan"
    size: int = 64
    steps: int = 1200                  # ~5 min at 64x64 on 2 CPU cores (WGAN-GP methods)
    batch_size: int = 32
    seed: int = 0
    n_qubits: int = 8
    n_layers: int = 4
    latent_dim: int = 100              # for wgan-gp / dcgan (published); hqgan and its controls use n_qubits
    width: int = 16                    # decoder channels at the last stage (x8 at 4x4)
    lr_g: Optional[float] = None       # None: the method's default (see _default_lrs)
    lr_d: Optional[float] = None
    n_critic: int = 2                  # WGAN-GP critic updates per generator update (published: 5)
    gp_weight: float = 10.0
    augment: bool = True               # flips (left-right) of training slices
    diffaugment: str = "translation"   # differentiable augmentation of real and fake critic inputs
    upsample: str = "resize"           # decoder upsampling: "resize" (+conv) or "transposed" (DCGAN)
    feature_norm: bool = True          # hqgan and its controls: batch-normalise the mixer's outputs
    n_circuits: int = 4                # hqgan and its controls: circuit runs (shared weights) on independent noise
    mlp_hidden: Optional[int] = None   # mlp-control / bottleneck-ablation: hidden width (None: their rule)
    blocks: str = "plain"              # decoder stages: "plain" or "residual" (more capacity, for 128x128 anatomy)
    ema_decay: float = 0.99            # returned generator: exponential moving average of the weights (0: off)
    output_dir: Optional[str] = None
    checkpoint_every: int = 500        # with output_dir: checkpoint.pt every this many updates and at the end
    resume: bool = False               # with output_dir: continue from its checkpoint.pt (exactly)
    overwrite: bool = False            # a non-empty output_dir: replace the earlier run (not compared on resume)
    device: str = "auto"               # "auto", "cpu", "cuda" or "cuda:N" (one GPU per rank under torchrun)
    amp: bool = False                  # mixed precision: float16 on CUDA, bfloat16 on the CPU

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
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for the weights; buffers (batch-norm
    statistics) are copied. Sampling from the averaged weights gives smoother, more stable
    samples than the last iterate (Yazici et al. 2019); every method gets the same average."""
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


#: SynthConfig fields that must match to resume from a checkpoint (they shape the networks or the data).
RESUME_KEYS = ("method", "size", "n_qubits", "n_layers", "latent_dim", "width", "upsample", "feature_norm",
               "n_circuits", "mlp_hidden", "batch_size", "seed", "ema_decay")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s streams: ``seed`` itself on rank 0 (a single process is unchanged)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


class GanStepState:
    """The exact-resume state of a GAN step (generator, critic, their EMA, optimisers, every rank's random
    streams, AMP scalers): shared by :class:`SynthStep` and ``label_synthesis.LabelStep``, which set the
    attributes it reads."""

    def state_dict(self) -> Dict[str, Any]:
        # every rank draws its own slices and noise: keep each rank's streams
        torch_states = gather_from_ranks(self.torch_gen.get_state(), self.world)
        numpy_states = gather_from_ranks(self.rng.bit_generator.state, self.world)
        one = self.world == 1
        return {
            "gen": unwrap(self.gen).state_dict(), "critic": unwrap(self.critic).state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "torch_gen": torch_states[0] if one else torch_states,
            "numpy_rng": json.dumps(numpy_states[0] if one else numpy_states),
            "scaler_g": None if self.scaler_g is None else self.scaler_g.state_dict(),
            "scaler_d": None if self.scaler_d is None else self.scaler_d.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        one = self.world == 1
        unwrap(self.gen).load_state_dict(state["gen"])
        unwrap(self.critic).load_state_dict(state["critic"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])  # moves the moments to the parameters' device
        self.opt_d.load_state_dict(state["opt_d"])
        self.torch_gen.set_state(state["torch_gen"] if one else state["torch_gen"][self.rank])
        numpy_state = json.loads(state["numpy_rng"])
        self.rng.bit_generator.state = numpy_state if one else numpy_state[self.rank]
        for scaler, key in ((self.scaler_g, "scaler_g"), (self.scaler_d, "scaler_d")):
            if scaler is not None and state.get(key) is not None:
                scaler.load_state_dict(state[key])


class SynthStep(GanStepState):
    """One generator update of a synthesis GAN (after ``n_critic`` critic updates), and the
    state that makes a resumed run continue exactly (see :mod:`QHQGANLib.training.loop`)."""

    def __init__(self, cfg: SynthConfig, data: torch.Tensor, gen: SynthGenerator, critic: nn.Module,
                 device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.data, self.gen, self.critic = cfg, data, gen, critic
        self.device, self.rank, self.world = device, rank, world
        lr_g, lr_d, betas = _default_lrs(cfg.method)
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g or lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr_d or lr_d, betas=betas)
        # latent noise, DiffAugment and penalty mixing weights: one seeded generator on the training device
        self.torch_gen = torch.Generator(device).manual_seed(rank_seed(cfg.seed, rank))
        self.rng = np.random.default_rng(rank_seed(cfg.seed, rank))  # which slices, flips
        self.ema = copy.deepcopy(gen) if cfg.ema_decay > 0 else None
        self.policy = parse_diffaugment(cfg.diffaugment)
        self.wgan = cfg.method != "dcgan"
        self.n_critic = cfg.n_critic if self.wgan else 1
        self.amp = Precision(device, cfg.amp)
        self.scaler_g, self.scaler_d = self.amp.scaler(), self.amp.scaler()
        self.gen_train, self.critic_train = wrap_ddp(gen, device, world), wrap_ddp(critic, device, world)

    def real_batch(self) -> torch.Tensor:
        cfg = self.cfg
        idx = self.rng.integers(len(self.data), size=cfg.batch_size)
        batch = self.data[torch.as_tensor(idx, device=self.device)].clone()
        if cfg.augment:
            flip = torch.from_numpy(self.rng.random(cfg.batch_size) < 0.5).to(self.device)
            batch[flip] = batch[flip].flip(-1)
        return batch

    def fake_batch(self) -> torch.Tensor:
        """Generated images (float32) from noise drawn on the training device."""
        z = self.gen.sample_latent(self.cfg.batch_size, self.torch_gen)  # on the device of torch_gen
        with self.amp.autocast():
            return self.gen_train(z).float()

    def critic_scores(self, images: torch.Tensor) -> torch.Tensor:
        with self.amp.autocast():
            return self.critic_train(images).float()

    def train_step(self, step: int) -> Dict[str, float]:
        cfg, g = self.cfg, self.torch_gen
        for _ in range(self.n_critic):
            real = self.real_batch()
            with torch.no_grad():
                fake = self.fake_batch()
            real, fake = diff_augment(real, self.policy, g), diff_augment(fake, self.policy, g)
            if self.wgan:
                loss_d = self.critic_scores(fake).mean() - self.critic_scores(real).mean()
                loss_d = loss_d + cfg.gp_weight * gradient_penalty(self.critic_train, real, fake, generator=g,
                                                                   unit=1.0)
            else:
                ones = torch.ones(real.shape[0], device=self.device)
                zeros = torch.zeros(real.shape[0], device=self.device)
                loss_d = (F.binary_cross_entropy_with_logits(self.critic_scores(real), ones)
                          + F.binary_cross_entropy_with_logits(self.critic_scores(fake), zeros))
            self.amp.step(loss_d, self.opt_d, self.scaler_d)
        fake = diff_augment(self.fake_batch(), self.policy, g)
        with frozen(self.critic) as critic, self.amp.autocast():  # no critic weight gradients: thrown away
            scores = critic(fake).float()
        if self.wgan:
            loss_g = -scores.mean()
        else:
            loss_g = F.binary_cross_entropy_with_logits(scores, torch.ones(scores.shape[0], device=self.device))
        self.amp.step(loss_g, self.opt_g, self.scaler_g)
        broadcast_buffers(self.gen, self.world)  # all ranks: rank 0's batch-norm statistics, as DDP would
        broadcast_buffers(self.critic, self.world)
        if self.ema is not None:
            update_ema(self.ema, self.gen, cfg.ema_decay)
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}


def train_synth(cfg: SynthConfig, volumes: Optional[Sequence[Volume]] = None,
                slices: Optional[np.ndarray] = None, roi: Optional[Sequence[np.ndarray]] = None,
                progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                show_progress: bool = False) -> SynthGenerator:
    """Train a synthesis generator on ``volumes`` (or ready ``slices`` (n, s, s) in HU); seeded.

    Returns the generator (its exponential moving average with ``ema_decay`` > 0) in eval mode,
    on the training device (``cfg.device``), with ``training_seconds`` set, and ``training_pixel_spacing``
    (the crops' physical pixel size for the model card, :func:`~QHQGANLib.training.slices.training_pixel_spacing`;
    empty when trained on ready ``slices``). A non-empty ``cfg.output_dir``
    is refused before any work unless ``cfg.resume`` or ``cfg.overwrite``; the folder is claimed for the run.
    """
    canonical_method(cfg.method)  # ValueError naming METHODS for an unknown one
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    parse_diffaugment(cfg.diffaugment)
    check_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    rank, world, device = setup_distributed(cfg.device)  # a missing GPU is an error before any work
    with claim_output_dir(cfg.output_dir, rank):
        return _train_synth(cfg, volumes, slices, roi, progress, cancel, show_progress, rank, world, device)


def _train_synth(cfg: SynthConfig, volumes, slices, roi, progress, cancel, show_progress: bool,
                 rank: int, world: int, device: torch.device) -> SynthGenerator:
    """:func:`train_synth` once its output folder is checked and claimed."""
    check_cancel(cancel)
    torch.manual_seed(cfg.seed)
    pixel_spacing = {}
    if slices is None:
        if not volumes:
            raise ValueError("give training volumes or slices")
        slices = training_slices(volumes, cfg.size, roi=roi)
        pixel_spacing = training_pixel_spacing(volumes, cfg.size, roi=roi)  # for the card: synthesize() uses it
    if slices.shape[1:] != (cfg.size, cfg.size):
        raise ValueError(f"slices must be {cfg.size}x{cfg.size}, got {slices.shape[1:]}")
    data = torch.from_numpy(hu_to_unit(slices).astype(np.float32))[:, None].to(device)

    gen = SynthGenerator(cfg.method, cfg.size, cfg.n_qubits, cfg.n_layers, cfg.latent_dim, cfg.width,
                         upsample=cfg.upsample, feature_norm=cfg.feature_norm, n_circuits=cfg.n_circuits,
                         mlp_hidden=cfg.mlp_hidden, blocks=cfg.blocks).to(device)
    critic = Critic(cfg.size, cfg.width, batch_norm=(cfg.method == "dcgan")).to(device)
    # channels last while training (loop.TRAINING_LAYOUT); the returned model is NCHW again
    gen, critic, data = in_training_layout(gen), in_training_layout(critic), in_training_layout(data)
    task = SynthStep(cfg, data, gen, critic, device, rank, world)
    start = 0
    if cfg.resume:
        state = resume_state(cfg.output_dir, cfg, RESUME_KEYS, cfg.steps, world)
        task.load_state_dict(state)
        start = int(state["step"])
    seconds = run_loop(task, cfg.steps, start=start, output_dir=cfg.output_dir,
                       checkpoint_every=cfg.checkpoint_every, config=cfg.to_dict(), rank=rank, world=world,
                       progress=progress, cancel=cancel, show_progress=show_progress,
                       description=f"training {cfg.method} synthesis", resume=cfg.resume,
                       overwrite=cfg.overwrite)
    if rank == 0 and cfg.output_dir and volumes:
        write_training_data(cfg.output_dir, volumes)  # what this run read: voxel sha256 per volume (#27)
    result = (gen if task.ema is None else task.ema).to(memory_format=torch.contiguous_format)
    result.eval()
    result.training_seconds, result.training_updates = seconds, cfg.steps - start
    result.training_pixel_spacing = pixel_spacing
    return result
