"""Image-quality metrics in Hounsfield units: PSNR and SSIM (scikit-image implementations).

Both metrics first clip the two images to a HU window and use its width as the
data range, so the numbers are comparable between studies:

* ``"full"`` (default): [-1024, 3071] HU, data range 4095 (the 12-bit CT range);
* ``"abdomen"``: [-160, 240] HU, data range 400 (the soft-tissue window of
  low-dose CT papers); ``"lung"``: [-1350, 150]; ``"bone"``: [-450, 1050];
* or any ``(low, high)`` pair in HU.

SSIM is computed slice by slice (2D, Gaussian weights sigma 1.5, as in Wang et
al. 2004) and averaged over the slices, since slice spacing is usually coarser
than the pixel size.

Padding: voxels outside the reconstruction circle hold no image (DICOM PixelPaddingValue,
``metadata["padding_hu"]``, :mod:`QHQGANLib.core.padding`). When the reference Volume records
padding (else the test Volume), its padded voxels are left out: PSNR's mean squared error runs
over the other voxels, SSIM's map is averaged over them, and the padded voxels of both images are
set to the window's low end first, so that what an output holds there changes nothing. ``valid=``
(a boolean mask of the voxels to score) overrides it.

Console usage::

    >>> from QHQGANLib import psnr, ssim
    >>> psnr(low_dose, normal_dose), ssim(low_dose, normal_dose, window="abdomen")
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from ..core.constants import WINDOWS
from ..core.padding import padding_mask
from ..core.volume import Volume


ImageLike = Union[Volume, np.ndarray]
#: The border skimage leaves out of the SSIM mean: half its Gaussian window (sigma 1.5, truncated at 3.5 sigma).
SSIM_BORDER = 5
WindowLike = Union[str, Tuple[float, float]]


def resolve_window(window: WindowLike) -> Tuple[float, float]:
    """``(low, high)`` HU of a window name or pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; use one of {sorted(WINDOWS)} or (low, high)")
        return WINDOWS[window]
    low, high = (float(v) for v in window)
    if not high > low:
        raise ValueError(f"window must have high > low, got {window}")
    return low, high


def scored_voxels(test: ImageLike, reference: ImageLike) -> Optional[np.ndarray]:
    """The voxels a metric scores: all but the reference's padding (else the test's), or None for all."""
    for image in (reference, test):
        if isinstance(image, Volume):
            mask = padding_mask(image)
            if mask is not None:
                return ~mask
    return None


def _prepare(test: ImageLike, reference: ImageLike, window: WindowLike, valid: Optional[np.ndarray] = None):
    a = np.asarray(test.array if isinstance(test, Volume) else test, dtype=np.float64)
    b = np.asarray(reference.array if isinstance(reference, Volume) else reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the images differ in shape: {a.shape} vs {b.shape}")
    valid = scored_voxels(test, reference) if valid is None else np.asarray(valid, dtype=bool)
    if valid is not None and valid.shape != a.shape:
        raise ValueError(f"valid has shape {valid.shape}, the images {a.shape}")
    keep = slice(None) if valid is None else valid
    if not (np.all(np.isfinite(a[keep])) and np.all(np.isfinite(b[keep]))):
        raise ValueError("the images hold NaN or infinite values")
    low, high = resolve_window(window)
    a, b = np.clip(a, low, high), np.clip(b, low, high)
    if valid is not None:  # padding: the same value in both, then left out of the means
        a[~valid] = low
        b[~valid] = low
    return a, b, high - low, valid


def psnr(test: ImageLike, reference: ImageLike, window: WindowLike = "full",
         valid: Optional[np.ndarray] = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``test`` against ``reference``, both in HU, over the
    ``valid`` voxels (default: all but the padding, see the module docstring).

    Identical images give ``inf``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    a, b, data_range, valid = _prepare(test, reference, window, valid)
    if valid is not None:
        a, b = a[valid], b[valid]
    if a.size == 0:
        raise ValueError("no voxel to score (all are padding or outside valid)")
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(b, a, data_range=data_range))


def ssim(test: ImageLike, reference: ImageLike, window: WindowLike = "full",
         valid: Optional[np.ndarray] = None) -> float:
    """Mean structural similarity of ``test`` against ``reference`` over 2D slices, in HU (each
    slice's map averaged over its ``valid`` voxels, default all but the padding; slices without
    any are skipped)."""
    from skimage.metrics import structural_similarity

    a, b, data_range, valid = _prepare(test, reference, window, valid)
    if a.ndim == 2:
        a, b = a[None], b[None]
        valid = None if valid is None else valid[None]
    if min(a.shape[-2:]) < 7:
        raise ValueError(f"SSIM needs slices of at least 7x7 pixels, got {a.shape[-2:]}")
    values = []
    for k in range(a.shape[0]):
        if valid is not None and not valid[k].any():
            continue
        value, full = structural_similarity(b[k], a[k], data_range=data_range, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False, full=True)
        if valid is not None:  # the map's mean over the valid voxels, its border left out as skimage does
            inner = np.zeros_like(valid[k])
            inner[SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER] = valid[k][SSIM_BORDER:-SSIM_BORDER,
                                                                                  SSIM_BORDER:-SSIM_BORDER]
            value = float(full[inner if inner.any() else valid[k]].mean())
        values.append(value)
    if not values:
        raise ValueError("no voxel to score (all are padding or outside valid)")
    return float(np.mean(values))


def uniform_region_mask(normal: np.ndarray, size: int = 9) -> np.ndarray:
    """Centres of uniform soft-tissue windows in a normal-dose slice stack (z, y, x)."""
    from scipy.ndimage import uniform_filter

    mean = uniform_filter(normal, size=(1, size, size))
    sq = uniform_filter(normal.astype(np.float64) ** 2, size=(1, size, size))
    local_std = np.sqrt(np.maximum(sq - mean**2, 0))
    soft = (mean > -100) & (mean < 200) & (normal > -100) & (normal < 200)
    if not soft.any():
        return soft
    return soft & (local_std <= np.percentile(local_std[soft], 20))


def noise_in_uniform_regions(image: np.ndarray, mask: np.ndarray, size: int = 9) -> float:
    from scipy.ndimage import uniform_filter

    if not mask.any():
        return float("nan")
    mean = uniform_filter(image.astype(np.float64), size=(1, size, size))
    sq = uniform_filter(image.astype(np.float64) ** 2, size=(1, size, size))
    return float(np.sqrt(np.maximum(sq - mean**2, 0))[mask].mean())
