"""Training of the enhancement and super-resolution generators (HQGAN, its ablation, RED-CNN).

Pairs are made from normal-dose CT with the physics simulator: a pool of low-dose
realisations (dose fractions drawn from ``dose_range``) or, for super-resolution,
``degrade_resolution`` copies, from which random patches are cut, flipped and
rotated. The pool is partly re-simulated every ``refresh_every`` steps, so the
network keeps seeing new noise.

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

    >>> from QHQGANLib.train import TrainConfig, train_enhancer
    >>> cfg = TrainConfig(arch="hqgan", task="enhance", steps=2000, output_dir="runs/hqgan")
    >>> model = train_enhancer(cfg, volumes=[q.read_volume("ct_series/")])
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import REDCNN, HQGANGenerator, PatchCritic, count_parameters
from .progress import check_cancel, report
from .volume import Volume

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


# ---------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# training pairs
# ---------------------------------------------------------------------------
def slab(array: np.ndarray, k: int, context: int) -> np.ndarray:
    """Slices ``k-context .. k+context`` of ``array`` (edge slices repeated at the ends)."""
    idx = np.clip(np.arange(k - context, k + context + 1), 0, array.shape[0] - 1)
    return array[idx]


class PairPool:
    """Normal-dose volumes and their degraded copies, from which patch pairs are drawn.

    Every low-dose realisation is a pure function of (seed, rank, slot, step), so a
    run resumed at ``start_step`` rebuilds exactly the pool a straight run had then.
    """

    def __init__(self, volumes: Sequence[Volume], cfg: TrainConfig, context: int, seed_key: Sequence[int],
                 start_step: int = 0, progress: Optional[Callable[[float, str], None]] = None, cancel=None):
        from .lowdose import degrade_resolution

        if not volumes:
            raise ValueError("no training volumes given")
        for v in volumes:
            if min(v.shape[1:]) < cfg.patch_size:
                raise ValueError(f"a training slice of {v.shape[1:]} is smaller than the patch size {cfg.patch_size}")
        self.cfg, self.context, self.seed_key = cfg, context, list(seed_key)
        self.rng = np.random.default_rng(self.seed_key)  # replaced by the training stream
        self.volumes = list(volumes)
        self.targets = [np.clip(v.array, -1024, 3071) for v in volumes]
        self.inputs: List[List[np.ndarray]] = []
        if cfg.task == "super-resolve":
            for i, v in enumerate(volumes):
                low = degrade_resolution(v, cfg.scale)
                s = cfg.scale
                self.targets[i] = self.targets[i][:, : low.shape[1] * s, : low.shape[2] * s]
                self.inputs.append([low.array])
                report(progress, (i + 1) / len(volumes), "degrading resolution")
        else:
            # which generation each slot holds at start_step: the initial one, or the last refresh
            latest = {(i, j): None for i in range(len(volumes)) for j in range(cfg.pool_size)}
            if cfg.refresh_every:
                for step in range(cfg.refresh_every, start_step + 1, cfg.refresh_every):
                    latest[self._refresh_slot(step)] = step
            total = len(latest)
            self.inputs = [[None] * cfg.pool_size for _ in volumes]
            for n, ((i, j), step) in enumerate(sorted(latest.items())):
                check_cancel(cancel)
                self.inputs[i][j] = self._simulate(i, j, step)
                report(progress, (n + 1) / total, "simulating low-dose training pairs")
        self.weights = np.array([t.size for t in self.targets], float)
        self.weights /= self.weights.sum()

    def _refresh_slot(self, step: int) -> Tuple[int, int]:
        r = np.random.default_rng(self.seed_key + [2, step])
        return int(r.integers(len(self.volumes))), int(r.integers(self.cfg.pool_size))

    def _simulate(self, i: int, j: int, step: Optional[int]) -> np.ndarray:
        from .lowdose import simulate_low_dose

        key = self.seed_key + ([1, i, j] if step is None else [3, step])
        r = np.random.default_rng(key)
        dose = float(r.uniform(*self.cfg.dose_range))
        return simulate_low_dose(self.volumes[i], dose, seed=int(r.integers(2**31))).array

    def refresh(self, step: int) -> None:
        """Re-simulate the realisation that ``step`` picks (enhancement only)."""
        if self.cfg.task != "enhance":
            return
        i, j = self._refresh_slot(step)
        self.inputs[i][j] = self._simulate(i, j, step)

    def batch(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(inputs (n, 2c+1, p_in, p_in), targets (n, 1, p, p)) in HU, augmented."""
        cfg = self.cfg
        s = cfg.scale if cfg.task == "super-resolve" else 1
        p_out, p_in = cfg.patch_size, cfg.patch_size // s
        xs, ys = [], []
        for _ in range(n):
            i = int(self.rng.choice(len(self.targets), p=self.weights))
            source = self.inputs[i][int(self.rng.integers(len(self.inputs[i])))]
            k = int(self.rng.integers(source.shape[0]))
            y0 = int(self.rng.integers(source.shape[1] - p_in + 1))
            x0 = int(self.rng.integers(source.shape[2] - p_in + 1))
            x = slab(source, k, self.context)[:, y0:y0 + p_in, x0:x0 + p_in]
            y = self.targets[i][k:k + 1, y0 * s:y0 * s + p_out, x0 * s:x0 * s + p_out]
            rot, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            x, y = np.rot90(x, rot, axes=(1, 2)), np.rot90(y, rot, axes=(1, 2))
            if flip:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ys)).float()


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def ssim_loss(a_hu: torch.Tensor, b_hu: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (torchmetrics, Gaussian window) on [-1024, 3071] HU scaled to [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    a = (a_hu.clamp(-1024, 3071) + 1024) / 4095
    b = (b_hu.clamp(-1024, 3071) + 1024) / 4095
    return 1.0 - ssim_fn(a, b, data_range=1.0)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(mixed)
    grad, = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    # the critic works on HU / 1000: measure the gradient in those units
    return ((grad.flatten(1).norm(dim=1) * 1000.0 - 1.0) ** 2).mean()


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------
def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


def save_checkpoint(path: Path, step: int, model, critic, opt_g, opt_c, rng: np.random.Generator,
                    cfg: TrainConfig) -> None:
    state = {
        "step": step,
        "model": _unwrap(model).state_dict(),
        "critic": _unwrap(critic).state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_c": opt_c.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "config": json.dumps(cfg.to_dict()),
    }
    write_checkpoint(path, state)


def write_checkpoint(path: Path, state: Dict) -> None:
    """``torch.save`` of a dict of tensors, numbers and strings, atomically (a crash leaves the
    previous checkpoint); :func:`load_checkpoint` reads it back without unpickling objects."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Dict:
    """A checkpoint written by :func:`write_checkpoint`, loaded without unpickling objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_resumable(saved_config: Dict, cfg, keys: Sequence[str]) -> None:
    """Refuse to resume when the checkpoint's config differs from ``cfg`` in any of ``keys``."""
    for key in keys:
        if saved_config.get(key) != getattr(cfg, key):
            raise ValueError(f"cannot resume: the checkpoint has {key}={saved_config.get(key)!r}, "
                             f"the config {getattr(cfg, key)!r}")


# ---------------------------------------------------------------------------
# distributed helpers
# ---------------------------------------------------------------------------
def _distributed() -> Tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------
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
