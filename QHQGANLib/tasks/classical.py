"""Non-learned reference methods: BM3D denoising (the ``bm3d`` package) and bicubic upsampling.

Console usage::

    >>> from QHQGANLib.tasks.classical import bm3d_denoise
    >>> denoised = bm3d_denoise(low_dose_volume)        # noise level estimated per slice
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..core.constants import HU_MAX, HU_MIN, HU_RANGE
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..metrics.image import noise_in_uniform_regions, uniform_region_mask

WINDOW = HU_RANGE


def bm3d_denoise(volume: Volume, sigma_hu: Optional[float] = None, progress=None, cancel=None) -> Volume:
    """BM3D (Dabov et al. 2007; Makinen et al. 2020 implementation) slice by slice.

    ``sigma_hu``: the noise standard deviation in HU (positive). By default it is estimated from the
    image itself, blind: the mean local standard deviation (9x9) in its most uniform
    soft-tissue windows (:func:`QHQGANLib.metrics.image.uniform_region_mask`), falling back to
    scikit-image's wavelet estimator where a slice has no soft tissue. (The wavelet
    estimator alone underestimates CT noise several-fold, because reconstructed CT noise
    is correlated and not white.)
    """
    try:
        import bm3d
    except ImportError as exc:  # an optional (benchmark) dependency
        raise ImportError("BM3D needs the 'bm3d' package: pip install bm3d") from exc
    from skimage.restoration import estimate_sigma

    if sigma_hu is not None and not (np.isfinite(sigma_hu) and sigma_hu > 0):
        raise ValueError(f"sigma_hu must be a positive noise level in HU (or None to estimate it), got {sigma_hu!r}")
    low, high = WINDOW
    out = np.empty_like(volume.array)
    for k in range(volume.shape[0]):
        check_cancel(cancel)
        x = (np.clip(volume.array[k], low, high) - low) / (high - low)
        if sigma_hu is not None:
            sigma = sigma_hu / (high - low)
        else:
            image = volume.array[k:k + 1]
            mask = uniform_region_mask(image)
            sigma = (noise_in_uniform_regions(image, mask) / (high - low) if mask.any()
                     else float(estimate_sigma(x)))
        out[k] = np.asarray(bm3d.bm3d(x, sigma_psd=max(sigma, 1e-6)), np.float32) * (high - low) + low
        report(progress, (k + 1) / volume.shape[0], f"BM3D slice {k + 1}/{volume.shape[0]}")
    return volume.with_array(out, note="BM3D denoised")


def bicubic_upsample(volume: Volume, scale: int = 2) -> Volume:
    """In-plane bicubic upsampling (torch, align_corners=False) onto the super-resolved grid."""
    import torch
    import torch.nn.functional as F

    from .geometry import super_resolved_geometry

    x = torch.from_numpy(np.clip(volume.array, HU_MIN, HU_MAX))[:, None]
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)[:, 0].numpy()
    spacing, origin = super_resolved_geometry(volume, scale)
    return volume.with_geometry(y, spacing, origin, note=f"bicubic x{scale}")
