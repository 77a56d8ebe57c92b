"""Training of the label-conditioned generators (:mod:`QHQGANLib.nn.label_synthesis`; issue #30, item 1).

Methods (``METHODS``): ``hqgan`` (the circuit makes each sample's style), ``mlp-control`` (its fair MLP
control in the same place), ``spade`` (the classical conditional baseline). The same for every method:

* **Data**: pairs (CT slice, its tissue classes) of the training volumes, body-cropped and resized to
  ``size`` like synthesis training (:mod:`QHQGANLib.training.label_pairs`); the crops' physical pixel
  size goes into the model card (``training_pixel_spacing``) and ``synthesize_from_labels`` checks label
  maps against it. Left-right flips of image and labels together.
* **Losses** of the generator: ``l1_weight`` x L1 between generated and real slice (both in the synthesis
  window [-1024, 1024] HU scaled to [-1, 1]; logged as ``l1_hu``, in HU) + ``adv_weight`` x the adversarial
  loss of a conditional patch critic (:class:`~QHQGANLib.nn.critics.LabelPatchCritic`: image and label
  channels in, one score per patch) + ``fm_weight`` x feature matching (L1 between the critic's
  activations on the generated and the real slice, pix2pixHD/SPADE). ``adversarial="hinge"`` (default:
  spectral-normalised critic, hinge loss, SPADE's) or ``"wgan-gp"`` (no spectral norm, gradient penalty
  ``gp_weight``). Adam with SPADE's two time-scale rates (generator 1e-4, critic 4e-4, betas (0, 0.999));
  ``n_critic`` critic updates per generator update (the last one's batch is the generator's).
* **Samples** from an exponential moving average of the generator weights, with a warm-up so short runs
  are usable: the decay at update t is ``min(ema_decay, (1 + t) / (10 + t))``; batch-norm statistics copied.

The loop, checkpoints (``checkpoint.pt``), ``losses.jsonl``, exact resume, progress and cancel are
:func:`QHQGANLib.training.loop.run_loop`'s; the run folder also gets ``training_data.json`` (the voxel
sha256 of every training volume). A non-empty ``output_dir`` is refused unless ``resume`` or ``overwrite``.
Cost: about 2 s per update at 128x128, batch 8, on one CPU thread of a busy 2-core machine (README).

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.training.label_synthesis import train_from_labels
    >>> model = train_from_labels([q.read_volume("ct/")], method="hqgan", size=128, steps=2000,
    ...                           output_dir="runs/hqgan-labels")
    >>> samples = q.synthesize_from_labels(q.tissue_labels(q.read_volume("other_ct/")), model=model, n=4)
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.progress import check_cancel, sub_progress
from ..core.volume import Volume
from ..nn.critics import LabelPatchCritic
from ..nn.label_synthesis import METHODS, LabelGenerator, check_method, label_channels
from ..nn.synthesis import hu_to_unit
from .distributed import broadcast_buffers, frozen, setup_distributed, unwrap, wrap_ddp
from .label_pairs import label_training_pairs
from .loop import Precision, check_output_dir, claim_output_dir, in_training_layout, resume_state, run_loop
from .losses import gradient_penalty
from .provenance import write_training_data
from .slices import training_pixel_spacing
from .synthesis import GanStepState, rank_seed, update_ema

ADVERSARIAL = ("hinge", "wgan-gp")
#: Share of the progress bar that preparing the training pairs takes (tissue classes of every slice).
DATA_PROGRESS = 0.1


@dataclass
class LabelSynthConfig:
    method: str = "hqgan"
    size: int = 128
    context: int = 0                   # neighbouring label slices each side (2.5D input)
    steps: int = 2000
    batch_size: int = 8
    seed: int = 0
    width: int = 16                    # generator channels at the last stage (x8 at the two coarsest)
    hidden: int = 32                   # channels of the label features (SPADE) per stage
    n_qubits: int = 8
    n_layers: int = 4
    n_circuits: int = 4                # style width = n_circuits * n_qubits for every method
    mlp_hidden: Optional[int] = None   # mlp-control: hidden width (None: the fair rule)
    pixel_noise: bool = True           # StyleGAN-style noise images in the generator
    critic_width: int = 32
    adversarial: str = "hinge"         # "hinge" (spectral-normalised critic) or "wgan-gp"
    n_critic: int = 1
    gp_weight: float = 10.0            # wgan-gp only
    l1_weight: float = 10.0
    fm_weight: float = 10.0
    adv_weight: float = 1.0
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    augment: bool = True               # left-right flips of image and labels together
    ema_decay: float = 0.999           # with warm-up (module doc); 0: off
    output_dir: Optional[str] = None
    checkpoint_every: int = 500
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    amp: bool = False

    def to_dict(self) -> Dict:
        return asdict(self)


#: Fields that must match to resume from a checkpoint (they shape the networks, the data or the streams).
RESUME_KEYS = ("method", "size", "context", "batch_size", "seed", "width", "hidden", "n_qubits", "n_layers",
               "n_circuits", "mlp_hidden", "pixel_noise", "critic_width", "adversarial", "ema_decay")


class LabelStep(GanStepState):
    """One generator update (after ``n_critic`` critic updates) and the state of an exact resume."""

    def __init__(self, cfg: LabelSynthConfig, images: torch.Tensor, labels: torch.Tensor, gen: LabelGenerator,
                 critic: LabelPatchCritic, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.images, self.labels, self.gen, self.critic = cfg, images, labels, gen, critic
        self.device, self.rank, self.world = device, rank, world
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr_g, betas=(0.0, 0.999))
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.lr_d, betas=(0.0, 0.999))
        self.torch_gen = torch.Generator(device).manual_seed(rank_seed(cfg.seed, rank))
        self.rng = np.random.default_rng(rank_seed(cfg.seed, rank))
        self.ema = copy.deepcopy(gen) if cfg.ema_decay > 0 else None
        self.amp = Precision(device, cfg.amp)
        self.scaler_g, self.scaler_d = self.amp.scaler(), self.amp.scaler()
        self.gen_train, self.critic_train = wrap_ddp(gen, device, world), wrap_ddp(critic, device, world)

    def batch(self):
        """(real images in [-1, 1], label channels in [0, 1]) of ``batch_size`` random pairs, flipped together."""
        cfg = self.cfg
        idx = torch.as_tensor(self.rng.integers(len(self.images), size=cfg.batch_size), device=self.device)
        images, labels = self.images[idx].clone(), self.labels[idx].float() / 255.0
        if cfg.augment:
            flip = torch.from_numpy(self.rng.random(cfg.batch_size) < 0.5).to(self.device)
            images[flip], labels[flip] = images[flip].flip(-1), labels[flip].flip(-1)
        return in_training_layout(images), in_training_layout(labels)

    def fake(self, labels: torch.Tensor) -> torch.Tensor:
        latent = self.gen.sample_latent(labels.shape[0], self.torch_gen)
        with self.amp.autocast():
            return self.gen_train(labels, latent, generator=self.torch_gen).float()

    def critic_loss(self, real, fake, labels) -> torch.Tensor:
        with self.amp.autocast():
            d_real, d_fake = self.critic_train(real, labels)[0].float(), self.critic_train(fake, labels)[0].float()
        if self.cfg.adversarial == "hinge":
            return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        penalty = gradient_penalty(lambda x: self.critic_train(x, labels)[0], real, fake, generator=self.torch_gen,
                                   unit=1.0)
        return d_fake.mean() - d_real.mean() + self.cfg.gp_weight * penalty

    def train_step(self, step: int) -> Dict[str, float]:
        cfg = self.cfg
        for _ in range(cfg.n_critic):
            real, labels = self.batch()
            with torch.no_grad():
                fake = self.fake(labels)
            loss_d = self.critic_loss(real, fake, labels)
            self.amp.step(loss_d, self.opt_d, self.scaler_d)
        fake = self.fake(labels)
        with frozen(self.critic) as critic, self.amp.autocast():
            scores, fake_features = critic(fake, labels)
            with torch.no_grad():
                real_features = critic(real, labels)[1]
        adv = -scores.float().mean()
        l1 = (fake - real).abs().mean()
        fm = sum(F.l1_loss(f.float(), r.float()) for f, r in zip(fake_features, real_features)) / len(fake_features)
        loss_g = cfg.adv_weight * adv + cfg.l1_weight * l1 + cfg.fm_weight * fm
        self.amp.step(loss_g, self.opt_g, self.scaler_g)
        broadcast_buffers(self.gen, self.world)
        broadcast_buffers(self.critic, self.world)
        if self.ema is not None:
            update_ema(self.ema, unwrap(self.gen), min(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()), "adv": float(adv.detach()),
                "l1_hu": float(l1.detach()) * 1024.0, "fm": float(fm.detach())}


def check_config(cfg: LabelSynthConfig) -> None:
    """Refuse settings that cannot train, before any work (one line each)."""
    check_method(cfg.method)
    if cfg.adversarial not in ADVERSARIAL:
        raise ValueError(f"adversarial must be one of {ADVERSARIAL}, got {cfg.adversarial!r}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (batch normalisation), got {cfg.batch_size}")
    for name in ("l1_weight", "fm_weight", "adv_weight", "gp_weight"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")


def train_from_labels(volumes: Sequence[Volume], cfg: Optional[LabelSynthConfig] = None, *,
                      label_maps: Optional[Sequence[Optional[Volume]]] = None,
                      mapping: Optional[Mapping[float, int]] = None,
                      progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                      show_progress: bool = False, **options) -> LabelGenerator:
    """Train a label-conditioned generator on the slices of ``volumes`` and their tissue classes (module doc).

    ``cfg`` (a :class:`LabelSynthConfig`) and/or its fields as keywords (``method="spade", steps=500``);
    ``label_maps``: one label Volume per volume (None: ``tissue_labels``), recoded with ``mapping``.
    Returns the generator (its moving average) in eval mode on the training device, with
    ``training_seconds``, ``training_updates`` and ``training_pixel_spacing`` (for the card) set.
    """
    cfg = dataclasses.replace(cfg or LabelSynthConfig(), **options)
    check_config(cfg)
    if not volumes:
        raise ValueError("give at least one training volume")
    check_output_dir(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
    rank, world, device = setup_distributed(cfg.device)
    with claim_output_dir(cfg.output_dir, rank):
        return _train(cfg, volumes, label_maps, mapping, progress, cancel, show_progress, rank, world, device)


def _train(cfg, volumes, label_maps, mapping, progress, cancel, show_progress, rank, world, device):
    check_cancel(cancel)
    torch.manual_seed(cfg.seed)
    images, labels = label_training_pairs(volumes, cfg.size, cfg.context, label_maps, mapping,
                                          progress=sub_progress(progress, 0.0, DATA_PROGRESS), cancel=cancel)
    pixel_spacing = training_pixel_spacing(volumes, cfg.size)
    images_t = torch.from_numpy(hu_to_unit(images).astype(np.float32))[:, None].to(device)
    labels_t = torch.from_numpy(labels).to(device)
    gen = LabelGenerator(cfg.method, cfg.size, cfg.context, cfg.width, cfg.hidden, cfg.n_qubits, cfg.n_layers,
                         cfg.n_circuits, cfg.mlp_hidden, pixel_noise=cfg.pixel_noise).to(device)
    critic = LabelPatchCritic(label_channels(cfg.context), cfg.critic_width,
                              spectral=cfg.adversarial == "hinge").to(device)
    gen, critic = in_training_layout(gen), in_training_layout(critic)
    task = LabelStep(cfg, images_t, labels_t, gen, critic, device, rank, world)
    start = 0
    if cfg.resume:
        state = resume_state(cfg.output_dir, cfg, RESUME_KEYS, cfg.steps, world)
        task.load_state_dict(state)
        start = int(state["step"])
    seconds = run_loop(task, cfg.steps, start=start, output_dir=cfg.output_dir, checkpoint_every=cfg.checkpoint_every,
                       config=cfg.to_dict(), rank=rank, world=world, progress=progress, cancel=cancel,
                       progress_range=(DATA_PROGRESS, 1.0), show_progress=show_progress,
                       description=f"training {cfg.method} from labels", resume=cfg.resume, overwrite=cfg.overwrite)
    if rank == 0 and cfg.output_dir:
        write_training_data(cfg.output_dir, volumes)
    result = (gen if task.ema is None else task.ema).to(memory_format=torch.contiguous_format)
    result.eval()
    result.training_seconds, result.training_updates = seconds, cfg.steps - start
    result.training_pixel_spacing = pixel_spacing
    result.training_pairs = int(len(images))
    return result


__all__ = ["LabelSynthConfig", "LabelStep", "METHODS", "train_from_labels", "RESUME_KEYS"]
