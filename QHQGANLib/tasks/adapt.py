"""Adapt an enhancement model to one scan: self-supervised fine-tuning on the user's own low-dose volume.

A model trained on simulated noise meets scanners, kernels and doses it never saw. Here it is
fine-tuned on the very volume it is about to enhance, without any clean image, by
Recorrupted-to-Recorrupted (R2R; Pang et al., CVPR 2021), a Noisier2Noise-type scheme with the
correction built into the targets:

* the scan's own noise texture and level are measured in its uniform tissue
  (:func:`QHQGANLib.physics.noise_texture.estimate_nps`);
* for every training patch of the scan ``y = x + n``, noise ``z`` of that texture and level is
  drawn and the network is trained to map ``y + alpha z`` to ``y - z / alpha`` (mean squared error).
  For Gaussian ``n`` with the covariance of ``z`` the input's and the target's noise are
  uncorrelated, so the expected loss is the loss against the unknown clean ``x`` plus a constant:
  the network learns to remove noise like the scan's own, not to copy it;
* with a small ``alpha`` (default 0.5) the training input's noise is only ``sqrt(1 + alpha^2)``
  (1.12) times the scan's, so the adapted model is applied to the scan itself.

The fine-tuning starts from the model's weights (its prior from training), updates every weight
(the circuit's included) for ``steps`` Adam updates on random patches of the scan (inside the
body), and stops early at ``max_seconds``, reporting so. The loaded model is never modified:
a copy is adapted. Deterministic for a seed on the CPU.

Console usage::

    >>> import QHQGANLib as q
    >>> low = q.read_volume("low_dose_series/")
    >>> better = q.enhance(low, adapt_steps=300)                 # adapt, then enhance
    >>> better.metadata["enhancement"]["adaptation"]             # steps, seconds, noise texture, alpha
    >>> from QHQGANLib.tasks.adapt import adapt_model
    >>> model, info = adapt_model(low, "hqgan-enhance", steps=300, progress=lambda f, m: print(m))
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Optional, Tuple

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.options import ADAPT_DEFAULT_STEPS
from ..core.progress import check_cancel, report
from ..core.volume import Volume, require_finite
from ..physics.noise_texture import NoiseTexture, estimate_nps

#: Recorruption strength: the training input has sqrt(1 + alpha^2) times the scan's noise.
ADAPT_ALPHA = 0.5
ADAPT_LR = 1e-3  # chosen on the tuning patient (bench_adapt.py tune: 1e-4 +0.35, 3e-4 +0.69, 1e-3 +0.87 dB)
ADAPT_BATCH = 8
ADAPT_PATCH = 64
#: The time budget (seconds) of an adaptation unless one is given.
ADAPT_MAX_SECONDS = 600.0
#: A patch is drawn inside the body: its mean above this (HU).
BODY_HU = -700.0


def _body_centres(array: np.ndarray, patch: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slice, y0, x0) of every patch position on a grid whose patch mean lies inside the body."""
    nz, ny, nx = array.shape
    step = max(8, patch // 4)
    ys = np.arange(0, max(1, ny - patch + 1), step)
    xs = np.arange(0, max(1, nx - patch + 1), step)
    ks, y0s, x0s = [], [], []
    for k in range(nz):
        for y0 in ys:
            row = array[k, y0:y0 + patch]
            for x0 in xs:
                if float(row[:, x0:x0 + patch].mean()) > BODY_HU:
                    ks.append(k), y0s.append(int(y0)), x0s.append(int(x0))
    if not ks:
        raise ValueError("adaptation needs a body in the scan (no region above -700 HU)")
    return np.asarray(ks), np.asarray(y0s), np.asarray(x0s)


def card_advice(net) -> Tuple[Optional[float], Optional[str]]:
    """``(learning rate, warning)`` for adapting ``net``, from its card's ``"adaptation"`` record (written by
    ``Testing/Benchmarks/bench_adapt.py retune``: the rate chosen on the tuning patient and whether the
    adaptation helped there). No record: ``(None, a warning that it was never tuned for this model)``; a
    record that says it did not help: its least harmful rate and a warning with the measured number."""
    card = getattr(net, "card", None) or {}
    name = card.get("name") or type(net).__name__
    record = card.get("adaptation")
    if not isinstance(record, dict):
        return None, (f"adaptation has not been tuned for {name} (its settings come from the models shipped before "
                      "the realistic-noise retraining): compare with the result without adaptation")
    lr = float(record["lr"]) if isinstance(record.get("lr"), (int, float)) and record["lr"] > 0 else None
    if not record.get("recommended", False):
        added = record.get("added_db")
        measured = f" ({float(added):+.2f} dB at the least harmful learning rate tried)" if isinstance(
            added, (int, float)) else ""
        return lr, (f"adaptation makes {name} worse on the tuning patient{measured}: compare with the result "
                    "without adaptation")
    return lr, None


def adapt_model(volume: Volume, model, steps: int = ADAPT_DEFAULT_STEPS, *, alpha: float = ADAPT_ALPHA,
                lr: Optional[float] = None, batch_size: int = ADAPT_BATCH, patch_size: int = ADAPT_PATCH, seed: int = 0,
                max_seconds: float = ADAPT_MAX_SECONDS, texture: Optional[NoiseTexture] = None,
                device: Optional[str] = None, quantum_backend: Optional[str] = None,
                progress: Optional[Callable[[float, str], None]] = None, cancel=None):
    """Fine-tune a copy of ``model`` (a name, a path or a loaded enhancement network) on ``volume``.

    Returns ``(adapted_model, info)``; ``info`` records the steps done and asked for, the seconds,
    ``alpha``, the learning rate and the measured noise texture (``texture`` overrides the
    measurement). The input volume and the given model are never modified. ``lr`` None: the rate
    the model's card records (:func:`card_advice`), else ``ADAPT_LR``; ``info["warning"]`` holds the
    card's advice against adapting this model, when it gives one.
    """
    import torch

    from ..core.devices import pick_device
    from .inference import _resolve_model

    require_finite(volume, "adapt")
    steps, patch_size = int(steps), int(patch_size)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < alpha <= 2.0:
        raise ValueError(f"alpha must be in (0, 2], got {alpha}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    check_cancel(cancel)
    t0 = time.perf_counter()
    device = pick_device(device)
    base = _resolve_model(model, device, quantum_backend)
    if getattr(base, "scale", 1) != 1:
        raise ValueError("adaptation is for enhancement (denoising) models, not super-resolution ones")
    # a model loaded here by name or path is this call's own; a given network is copied, never changed
    net = (base if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") else copy.deepcopy(base))
    net = net.to(device=device, memory_format=torch.contiguous_format).float()
    card_lr, warning = card_advice(base)
    lr = float(lr) if lr is not None else (card_lr or ADAPT_LR)
    context = (getattr(net, "in_slices", 1) - 1) // 2
    multiple = int(getattr(net, "multiple", 1))
    report(progress, 0.0, "measuring the scan's noise texture")
    if texture is None:
        texture = estimate_nps(volume)
    nz, ny, nx = volume.shape
    patch = max(multiple, min(patch_size, ny, nx) // multiple * multiple)
    array = np.clip(volume.array, HU_MIN, HU_MAX).astype(np.float32)
    ks, y0s, x0s = _body_centres(array, patch)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    done, losses = 0, []
    stopped = None
    while done < steps:
        check_cancel(cancel)
        if time.perf_counter() - t0 > max_seconds:
            stopped = f"time budget of {max_seconds:.0f} s reached after {done} of {steps} updates"
            break
        pick = rng.integers(0, len(ks), batch_size)
        stacks = np.empty((batch_size, 2 * context + 1, patch, patch), dtype=np.float32)
        for b, i in enumerate(pick):
            idx = np.clip(np.arange(ks[i] - context, ks[i] + context + 1), 0, nz - 1)  # as inference: edges repeated
            stacks[b] = array[idx, y0s[i]:y0s[i] + patch, x0s[i]:x0s[i] + patch]
            if rng.random() < 0.5:  # flips and transposes: the texture is rotationally symmetric
                stacks[b] = stacks[b, :, ::-1]
            if rng.random() < 0.5:
                stacks[b] = stacks[b, :, :, ::-1]
        z = texture.sample(stacks.shape, rng)
        centre = stacks[:, context:context + 1]
        x = torch.from_numpy(stacks + alpha * z).to(device)
        target = torch.from_numpy(centre - z[:, context:context + 1] / alpha).to(device)
        out = net(x)
        loss = torch.mean(((out - target) / 1000.0) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done += 1
        report(progress, done / steps, f"adapting to this scan: update {done}/{steps}")
    net.eval()
    info = {"steps": done, "steps_asked": steps, "seconds": round(time.perf_counter() - t0, 1),
            "alpha": alpha, "lr": lr, "batch_size": batch_size, "patch_size": patch, "seed": seed,
            "noise_texture": texture.to_dict(),
            "loss_first_last": [round(float(np.mean(losses[:10])), 6), round(float(np.mean(losses[-10:])), 6)]
            if losses else None}
    if stopped:
        info["stopped"] = stopped
    if warning:
        info["warning"] = warning
    card = dict(getattr(base, "card", None) or {})
    net.card = {**card, "adapted": info}
    return net, info
