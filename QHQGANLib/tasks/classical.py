"""Non-learned reference methods: BM3D denoising (the ``bm3d`` package) and bicubic upsampling.

Reconstructed CT noise is correlated (the ramp filter of filtered back-projection shapes its
spectrum), so BM3D as a white-noise denoiser (one ``sigma``) is not its best. The ``bm3d``
package (Makinen et al. 2020) takes the noise's power spectral density instead: give
:func:`bm3d_denoise` a ``psd`` estimated by :func:`estimate_noise_psd` from noise-only residuals
(e.g. low-dose minus normal-dose slices of a tuning patient, never of the evaluated ones).

PSD convention (the ``bm3d`` package's): for noise images ``n`` of M x N pixels,
``psd = E |numpy.fft.fft2(n)|^2`` (unnormalised FFT, zero frequency at [0, 0]), so white noise
of standard deviation ``s`` has the constant PSD ``s^2 * M * N`` and ``psd.mean() / (M * N)`` is
the noise variance. Ours is in HU^2; :func:`bm3d_denoise` divides it by the square of the HU
window it scales slices by, and resamples it (:func:`resample_psd`) to the slice size.

Console usage::

    >>> from QHQGANLib.tasks.classical import bm3d_denoise, estimate_noise_psd
    >>> denoised = bm3d_denoise(low_dose_volume)        # white noise, level estimated per slice
    >>> psd = estimate_noise_psd(tuning_low.array - tuning_normal.array)   # (n, M, N) HU residuals
    >>> denoised = bm3d_denoise(low_dose_volume, psd=psd)                  # correlated noise
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from ..core.constants import HU_MAX, HU_MIN, HU_RANGE
from ..core.padding import carry_padding
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..metrics.image import noise_in_uniform_regions, uniform_region_mask

WINDOW = HU_RANGE


def estimate_noise_psd(residuals: np.ndarray, shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The noise power spectral density (HU^2, the ``bm3d`` convention of the module docstring)
    of noise-only residual images (M, N) or (n, M, N) in HU: the mean of ``|fft2(r - mean(r))|^2``
    over the images, resampled to ``shape`` if given.

    A residual must hold noise alone (low-dose minus normal-dose of the same slice; the normal dose's
    own noise adds a little). Its mean is removed per image, so a dose-dependent offset is not noise.
    """
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or min(r.shape[1:]) < 2 or r.shape[0] < 1:
        raise ValueError(f"residuals must be (M, N) or (n, M, N) images, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("residuals must be finite")
    r = r - r.mean(axis=(1, 2), keepdims=True)
    psd = (np.abs(np.fft.fft2(r)) ** 2).mean(axis=0)
    return psd if shape is None else resample_psd(psd, shape)


def resample_psd(psd: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``psd`` (M, N) of the same noise for images of ``shape`` (M', N'), ``bm3d`` convention.

    Through the noise's autocovariance ``ifft2(psd) / (M N)``, which does not depend on the image
    size: it is cropped or zero-padded around lag 0 to (M', N') and transformed back (times M' N');
    negative values from the crop are set to 0. White noise keeps its variance; a correlated
    noise keeps its correlation at lags that fit.
    """
    psd = np.asarray(psd, dtype=np.float64)
    m, n = psd.shape
    new_m, new_n = int(shape[0]), int(shape[1])
    if (new_m, new_n) == (m, n):
        return psd.copy()
    autocov = np.fft.fftshift(np.real(np.fft.ifft2(psd)) / (m * n))  # lag 0 at (m // 2, n // 2)
    out = np.zeros((new_m, new_n))
    h, w = min(m, new_m), min(n, new_n)
    src = autocov[m // 2 - h // 2: m // 2 - h // 2 + h, n // 2 - w // 2: n // 2 - w // 2 + w]
    out[new_m // 2 - h // 2: new_m // 2 - h // 2 + h, new_n // 2 - w // 2: new_n // 2 - w // 2 + w] = src
    resampled = np.real(np.fft.fft2(np.fft.ifftshift(out))) * (new_m * new_n)
    return np.maximum(resampled, 0.0)


@contextlib.contextmanager
def _numpy_trapz_for_bm4d() -> Iterator[None]:
    """``numpy.trapz`` for the duration of a BM3D call with a PSD: bm4d 4.2.5 (the engine of
    ``bm3d`` 4.0.3, the newest releases) calls it, and numpy 2.4 removed it (``trapezoid``
    is the same function). Lent only when missing, and taken back after the call."""
    lend = not hasattr(np, "trapz") and hasattr(np, "trapezoid")
    if lend:
        np.trapz = np.trapezoid
    try:
        yield
    finally:
        if lend:
            del np.trapz


def bm3d_denoise(volume: Volume, sigma_hu: Optional[float] = None, psd: Optional[np.ndarray] = None,
                 progress=None, cancel=None) -> Volume:
    """BM3D (Dabov et al. 2007; Makinen et al. 2020 implementation) slice by slice.

    ``psd``: the noise power spectral density in HU^2 (:func:`estimate_noise_psd`; the module
    docstring gives the convention), for any size (resampled to the slices'): BM3D for
    correlated noise. Without it, BM3D for white noise of standard deviation ``sigma_hu`` in HU
    (positive). By default that is estimated from the image itself, blind: the mean local standard
    deviation (9x9) in its most uniform soft-tissue windows
    (:func:`QHQGANLib.metrics.image.uniform_region_mask`), falling back to scikit-image's
    wavelet estimator where a slice has no soft tissue. (The wavelet estimator alone
    underestimates CT noise several-fold, because reconstructed CT noise is correlated and not white.)
    """
    try:
        import bm3d
    except ImportError as exc:  # an optional (benchmark) dependency
        raise ImportError("BM3D needs the 'bm3d' package: pip install bm3d") from exc
    from skimage.restoration import estimate_sigma

    if sigma_hu is not None and not (np.isfinite(sigma_hu) and sigma_hu > 0):
        raise ValueError(f"sigma_hu must be a positive noise level in HU (or None to estimate it), got {sigma_hu!r}")
    low, high = WINDOW
    psd_unit = None
    if psd is not None:
        if sigma_hu is not None:
            raise ValueError("give sigma_hu (white noise) or psd (correlated noise), not both")
        psd = np.asarray(psd, dtype=np.float64)
        if psd.ndim != 2 or not np.isfinite(psd).all() or psd.min() < 0 or psd.max() <= 0:
            raise ValueError("psd must be a 2D array of non-negative powers (HU^2), not all zero")
        psd_unit = resample_psd(psd, volume.shape[1:]) / (high - low) ** 2  # the slices' [0, 1] scale
    out = np.empty_like(volume.array)
    for k in range(volume.shape[0]):
        check_cancel(cancel)
        x = (np.clip(volume.array[k], low, high) - low) / (high - low)
        if psd_unit is not None:
            sigma = psd_unit
        elif sigma_hu is not None:
            sigma = sigma_hu / (high - low)
        else:
            image = volume.array[k:k + 1]
            mask = uniform_region_mask(image)
            sigma = (noise_in_uniform_regions(image, mask) / (high - low) if mask.any()
                     else float(estimate_sigma(x)))
        if psd_unit is None:
            sigma = max(sigma, 1e-6)
        with _numpy_trapz_for_bm4d():
            denoised = bm3d.bm3d(x, sigma_psd=sigma)
        out[k] = np.asarray(denoised, np.float32) * (high - low) + low
        report(progress, (k + 1) / volume.shape[0], f"BM3D slice {k + 1}/{volume.shape[0]}")
    return carry_padding(volume, volume.with_array(
        out, note="BM3D denoised" + (" (noise PSD)" if psd_unit is not None else "")))


def bicubic_upsample(volume: Volume, scale: int = 2) -> Volume:
    """In-plane bicubic upsampling (torch, align_corners=False) onto the super-resolved grid."""
    import torch
    import torch.nn.functional as F

    from .geometry import super_resolved_geometry

    x = torch.from_numpy(np.clip(volume.array, HU_MIN, HU_MAX))[:, None]
    y = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)[:, 0].numpy()
    spacing, origin = super_resolved_geometry(volume, scale)
    return carry_padding(volume, volume.with_geometry(y, spacing, origin, note=f"bicubic x{scale}"))
