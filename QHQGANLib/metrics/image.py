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

Console usage::

    >>> from QHQGANLib import psnr, ssim
    >>> psnr(low_dose, normal_dose), ssim(low_dose, normal_dose, window="abdomen")
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from ..core.constants import WINDOWS
from ..core.volume import Volume


ImageLike = Union[Volume, np.ndarray]
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


def _prepare(test: ImageLike, reference: ImageLike, window: WindowLike):
    a = np.asarray(test.array if isinstance(test, Volume) else test, dtype=np.float64)
    b = np.asarray(reference.array if isinstance(reference, Volume) else reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the images differ in shape: {a.shape} vs {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("the images hold NaN or infinite values")
    low, high = resolve_window(window)
    return np.clip(a, low, high), np.clip(b, low, high), high - low


def psnr(test: ImageLike, reference: ImageLike, window: WindowLike = "full") -> float:
    """Peak signal-to-noise ratio (dB) of ``test`` against ``reference``, both in HU.

    Identical images give ``inf``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    a, b, data_range = _prepare(test, reference, window)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(b, a, data_range=data_range))


def ssim(test: ImageLike, reference: ImageLike, window: WindowLike = "full") -> float:
    """Mean structural similarity of ``test`` against ``reference`` over 2D slices, in HU."""
    from skimage.metrics import structural_similarity

    a, b, data_range = _prepare(test, reference, window)
    if a.ndim == 2:
        a, b = a[None], b[None]
    if min(a.shape[-2:]) < 7:
        raise ValueError(f"SSIM needs slices of at least 7x7 pixels, got {a.shape[-2:]}")
    values = [structural_similarity(b[k], a[k], data_range=data_range, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
              for k in range(a.shape[0])]
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
