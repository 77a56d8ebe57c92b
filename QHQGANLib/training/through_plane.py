"""Self-supervised training of through-plane (thick -> thin slice) super-resolution, SMORE-like.

No thin-slice ground truth is needed: the scan's own in-plane resolution is the teacher.
Axial patches of the training CT are degraded along ONE in-plane axis with the slice profile
(:mod:`QHQGANLib.physics.slice_profile`: a box of ``width_px`` fine pixels, one sample every
``scale`` pixels: what a thick slice does along z), brought back onto the fine grid by linear
(or cubic) interpolation along that axis, and the network learns to restore the original
patch. The degraded axis is always the patch's first (vertical) axis; patches are transposed
at random, so both in-plane axes teach it. At inference (:mod:`QHQGANLib.tasks.through_plane`)
the network runs on coronal and sagittal planes, whose first axis is z.

The network is the HQGAN generator (:class:`~QHQGANLib.nn.enhancer.HQGANGenerator`, with its
quantum block; ``arch="hqgan"``) or its fair classical control (``arch="mlp-control"``: the
circuit replaced by the MLP of :mod:`QHQGANLib.nn.mixers`), in its same-grid form with one
input channel (``task="enhance"``, ``context=0``: there is no 2.5D context across the degraded
axis). It predicts a residual added to the interpolated input. Loss: L1 (+ ``ssim_weight`` x
(1 - SSIM)); no critic (a regression: no invented detail).

The loop, checkpoints, exact resume, progress and cancel are
:func:`QHQGANLib.training.loop.run_loop`'s. The patches and their degradation are
:class:`QHQGANLib.physics.slice_profile.PatchSampler`'s, shared with the short fine-tuning on the
user's own volume that :func:`QHQGANLib.tasks.through_plane.fine_tune` runs before applying a model.

Console usage::

    >>> from QHQGANLib.training.through_plane import ZTrainConfig, train_through_plane
    >>> model = train_through_plane(ZTrainConfig(arch="hqgan", scale=2, steps=1500), [q.read_volume("ct/")])
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import check_cancel
from ..core.volume import Volume
from ..nn.enhancer import MIXER_OF_ARCH, HQGANGenerator
from ..physics.slice_profile import INTERPOLATION_ORDER, PatchSampler, check_scale, patch_size_for
from .loop import resume_state, run_loop
from .losses import ssim_loss

#: The architectures trained for through-plane SR: HQGAN, its fair classical control, the block removed.
Z_ARCHS = ("hqgan", "mlp-control", "no-circuit")


@dataclass
class ZTrainConfig:
    """What :func:`train_through_plane` needs (stored in checkpoints and model cards)."""

    arch: str = "hqgan"
    scale: int = 2
    width_px: Optional[float] = None   # slice-profile box width in fine pixels (None: = scale, contiguous)
    interpolation: str = "linear"      # how thick samples reach the fine grid before the network
    steps: int = 1500
    batch_size: int = 16
    patch_size: int = 64               # rounded down to a multiple of 4 and of scale
    lr: float = 1e-3
    ssim_weight: float = 0.1
    width: int = 16
    n_qubits: int = 8
    n_layers: int = 2
    seed: int = 0
    threads: Optional[int] = None
    device: str = "cpu"
    output_dir: Optional[str] = None
    checkpoint_every: int = 500
    resume: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def patch(self) -> int:
        return patch_size_for(self.scale, self.patch_size)


RESUME_KEYS = ("arch", "scale", "width", "n_qubits", "n_layers", "interpolation")


def build_z_model(cfg: ZTrainConfig) -> HQGANGenerator:
    """The fresh network of ``cfg.arch``: one input channel, same grid."""
    if cfg.arch not in Z_ARCHS:
        raise ValueError(f"arch must be one of {Z_ARCHS}, got {cfg.arch!r}")
    if cfg.interpolation not in INTERPOLATION_ORDER:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATION_ORDER)}, got {cfg.interpolation!r}")
    check_scale(cfg.scale)
    return HQGANGenerator(task="enhance", context=0, width=cfg.width, n_qubits=cfg.n_qubits,
                          n_layers=cfg.n_layers, mixer=MIXER_OF_ARCH[cfg.arch])


def restoration_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean absolute error (HU) of ``model`` on a fixed batch (what training lowers)."""
    model.eval()
    with torch.no_grad():
        out = model(inputs.to(next(model.parameters()).device)).float().cpu()
    return float((out - targets).abs().mean())


class ZStep:
    """One update (L1 + SSIM) and the state an exact resume needs."""

    def __init__(self, cfg: ZTrainConfig, model: nn.Module, sampler: PatchSampler, device: torch.device):
        self.cfg, self.model, self.sampler, self.device = cfg, model, sampler, device
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, cfg.steps),
                                                                eta_min=cfg.lr * 0.05)

    def train_step(self, step: int) -> Dict[str, float]:
        cfg = self.cfg
        self.model.train()
        x, y = (torch.from_numpy(a).to(self.device) for a in self.sampler.pairs(cfg.batch_size, cfg.scale,
                                                                                  cfg.width_px, cfg.interpolation))
        out = self.model(x).float()
        l1 = F.l1_loss(out, y) / 1000.0
        loss = l1
        stats: Dict[str, float] = {}
        if cfg.ssim_weight > 0:
            s = ssim_loss(out, y)
            loss = loss + cfg.ssim_weight * s
            stats["ssim_loss"] = float(s.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        stats.update(l1_hu=float(l1.detach()) * 1000.0, input_l1_hu=float((x - y).abs().mean()),
                     loss=float(loss.detach()))
        return stats

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(self.sampler.rng.bit_generator.state)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["torch_rng"])
        self.sampler.rng.bit_generator.state = json.loads(state["numpy_rng"])


def train_through_plane(cfg: ZTrainConfig, volumes: Sequence[Volume], model: Optional[nn.Module] = None,
                        progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                        show_progress: bool = False) -> nn.Module:
    """Train (or, given ``model``, continue training) a through-plane model on the in-plane data of
    ``volumes``; returns it in eval mode with ``model.card`` describing it (axis "z", scale, profile)."""
    check_cancel(cancel)
    check_scale(cfg.scale)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    model = (model if model is not None else build_z_model(cfg)).to(device)
    if getattr(model, "in_slices", 1) != 1 or getattr(model, "scale", 1) != 1:
        raise ValueError("a through-plane model takes one slice and keeps the grid (context 0, task 'enhance')")
    sampler = PatchSampler(volumes, cfg.patch, np.random.default_rng(cfg.seed))
    task = ZStep(cfg, model, sampler, device)
    state = resume_state(cfg.output_dir, cfg, RESUME_KEYS, cfg.steps, missing_ok=True) if cfg.resume else None
    start = 0
    if state is not None:
        task.load_state_dict(state)
        start = int(state["step"])
    seconds = run_loop(task, cfg.steps, start=start, output_dir=cfg.output_dir, checkpoint_every=cfg.checkpoint_every,
                       config=cfg.to_dict(), progress=progress, cancel=cancel, show_progress=show_progress,
                       description=f"training {cfg.arch} (through-plane x{cfg.scale})", resume=cfg.resume)
    model.eval()
    model.card = {"name": f"{cfg.arch}-srz{cfg.scale}", "task": "super-resolve", "axis": "z", "scale": cfg.scale,
                  "slice_profile_width_px": cfg.width_px if cfg.width_px is not None else float(cfg.scale),
                  "interpolation": cfg.interpolation, "training": {**cfg.to_dict(), "seconds": round(seconds, 1)}}
    return model
