"""Side-by-side evaluation of enhancement and super-resolution methods on normal-dose CT.

For each normal-dose volume, the degraded input is made with the physics simulator
(``simulate_low_dose`` at each dose, seeded) or ``degrade_resolution``; every method
maps it back and is scored against the normal-dose original:

* PSNR and SSIM in the ``abdomen`` window ([-160, 240] HU) and the ``full`` CT range;
* noise: the standard deviation of the output in uniform soft-tissue regions (9x9
  windows of the normal-dose image between -100 and 200 HU whose local standard
  deviation is in its lowest quintile), mean over those windows, in HU.

The reference's padding (the voxels outside the reconstruction circle, DICOM PixelPaddingValue:
:mod:`QHQGANLib.core.padding`) is left out of every score: it is no image, and what a method
writes there changes nothing.

Console usage::

    >>> from QHQGANLib.tasks.evaluate import evaluate_enhancement
    >>> table = evaluate_enhancement({"hqgan": "hqgan-enhance", "redcnn": "redcnn-enhance"},
    ...                              [normal_dose_volume], doses=(0.25, 0.1))
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.progress import report
from ..core.volume import Volume
from ..metrics.image import noise_in_uniform_regions, psnr, scored_voxels, ssim, uniform_region_mask
from .classical import bicubic_upsample

Method = Union[str, object, Callable[[Volume], Volume]]


def _apply(method: Method, volume: Volume, task: str) -> Volume:
    from .enhance import enhance, super_resolve

    if callable(method) and not hasattr(method, "state_dict"):
        return method(volume)
    if task == "enhance":
        return enhance(volume, model=method)
    return super_resolve(volume, 2, model=method)


def score(output: Volume, reference: Volume, mask: np.ndarray) -> Dict[str, float]:
    """PSNR, SSIM and noise of ``output`` against ``reference`` (noise in the windows ``mask``), the
    reference's padding left out."""
    valid = scored_voxels(output, reference)
    noisy = output.array if valid is None else np.where(valid, output.array, np.clip(reference.array, HU_MIN, HU_MAX))
    return {
        "psnr_abdomen": psnr(output, reference, window="abdomen", valid=valid),
        "ssim_abdomen": ssim(output, reference, window="abdomen", valid=valid),
        "psnr_full": psnr(output, reference, window="full", valid=valid),
        "ssim_full": ssim(output, reference, window="full", valid=valid),
        "noise_hu": noise_in_uniform_regions(noisy, mask if valid is None else mask & valid),
    }


def evaluate_enhancement(methods: Dict[str, Method], normal_volumes: Sequence[Volume],
                         doses: Sequence[float] = (0.25, 0.1), seed: int = 1234,
                         include_input: bool = True, progress: Optional[Callable[[float, str], None]] = None
                         ) -> List[Dict]:
    """Rows ``{method, dose, psnr_..., ssim_..., noise_hu, seconds_per_slice, n_slices}``, averaged over
    volumes (weighted by slices); ``progress(fraction, message)`` after each (dose, method). The input row
    costs nothing: its ``seconds_per_slice`` is 0."""
    from ..physics.lowdose import simulate_low_dose

    rows = []
    names = (["low-dose input"] if include_input else []) + list(methods)
    total, done = len(doses) * (len(names) + 1), 0
    for dose in doses:
        pairs = [(simulate_low_dose(v, dose, seed=seed + i), v) for i, v in enumerate(normal_volumes)]
        done += 1
        report(progress, done / total, f"simulated {dose:g} dose")
        for name in names:
            if name == "low-dose input":
                scores = {**_average_scores(lambda v: v, pairs), "seconds_per_slice": 0.0}
            else:
                scores = _average_scores(lambda v, m=methods[name]: _apply(m, v, "enhance"), pairs)
            rows.append({"method": name, "dose": dose, **scores})
            done += 1
            report(progress, done / total, f"{name} at {dose:g} dose")
    return rows


def _average_scores(run: Callable[[Volume], Volume], pairs) -> Dict[str, float]:
    """Scores of ``run(degraded)`` against each reference, averaged over slices, and its time per slice."""
    acc: Dict[str, float] = {}
    n_slices, seconds = 0, 0.0
    for degraded, reference in pairs:
        t0 = time.perf_counter()
        out = run(degraded)
        seconds += time.perf_counter() - t0
        for key, value in score(out, reference, uniform_region_mask(np.clip(reference.array, HU_MIN, HU_MAX))).items():
            acc[key] = acc.get(key, 0.0) + value * reference.shape[0]
        n_slices += reference.shape[0]
    return {**{k: v / n_slices for k, v in acc.items()}, "seconds_per_slice": seconds / n_slices,
            "n_slices": n_slices}


def evaluate_super_resolution(methods: Dict[str, Method], normal_volumes: Sequence[Volume],
                              scale: int = 2, include_bicubic: bool = True,
                              progress: Optional[Callable[[float, str], None]] = None) -> List[Dict]:
    """Rows for x``scale`` super-resolution of ``degrade_resolution`` copies, bicubic included."""
    from ..physics.resolution import degrade_resolution

    rows = []
    pairs = []
    for v in normal_volumes:
        low = degrade_resolution(v, scale)
        ny, nx = low.shape[1] * scale, low.shape[2] * scale
        pairs.append((low, v.with_geometry(v.array[:, :ny, :nx], v.spacing, v.origin)))
    names = (["bicubic"] if include_bicubic else []) + list(methods)
    for name in names:
        run = ((lambda v: bicubic_upsample(v, scale)) if name == "bicubic"
               else (lambda v, m=methods[name]: _apply(m, v, "super-resolve")))
        rows.append({"method": name, "scale": scale, **_average_scores(run, pairs)})
        report(progress, len(rows) / len(names), name)
    return rows
