"""Radiomic-style features of 2D CT slices (scikit-image), and the input checks every synthesis metric shares.

First order on the HU values (mean, standard deviation, skewness, excess kurtosis,
10th/50th/90th percentiles, entropy of the HU histogram in 16-HU bins, energy = mean square
of the values windowed to [0, 1]); texture from the grey-level co-occurrence matrix
(``skimage.feature.graycomatrix`` / ``graycoprops``: contrast, dissimilarity, homogeneity, ASM,
energy, correlation at distances 1 and 2 px, symmetric, averaged over 0/45/90/135 degrees) of
the slice quantised into 32 levels in the window [-1024, 1024] HU; and the mean and standard
deviation of the Sobel gradient magnitude (HU per pixel) in that window. pyradiomics is not
used (hard to install in Slicer); the features follow its definitions where they overlap.

Console usage::

    >>> from QHQGANLib.metrics.features import radiomic_features, FEATURE_NAMES
    >>> radiomic_features(slices).shape            # (n, len(FEATURE_NAMES))
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..core.constants import HU_MAX, HU_MIN, SYNTH_WINDOW
from ..core.volume import Volume

SlicesLike = Union[np.ndarray, Volume, Sequence[np.ndarray]]

#: HU window of the GLCM quantisation, the gradient, MS-SSIM and memorization SSIM.
WINDOW: Tuple[float, float] = SYNTH_WINDOW
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")
#: Bins of the HU histogram whose entropy is a feature: 16 HU wide over [-1024, 3072).
HISTOGRAM_EDGES = np.arange(HU_MIN, HU_MAX + 1.0 + 1e-6, 16.0)

FIRST_ORDER_NAMES = ("mean", "std", "skewness", "kurtosis", "p10", "p50", "p90", "entropy", "energy")
FEATURE_NAMES: Tuple[str, ...] = FIRST_ORDER_NAMES + tuple(
    f"glcm_{prop}_d{d}" for d in GLCM_DISTANCES for prop in GLCM_PROPS) + ("gradient_mean", "gradient_std")



# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def _as_slices(slices: SlicesLike, name: str = "slices") -> np.ndarray:
    """``(n, H, W)`` float64 HU, checked finite and non-empty."""
    if isinstance(slices, Volume):
        arr = slices.array
    elif isinstance(slices, (list, tuple)):
        arr = np.stack([np.asarray(s) for s in slices])
    else:
        arr = np.asarray(slices)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"{name} must be 2D slices stacked as (n, H, W); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} hold NaN or infinite values")
    return arr


def _as_features(feat: np.ndarray, name: str) -> np.ndarray:
    feat = np.asarray(feat, dtype=np.float64)
    if feat.ndim != 2 or feat.shape[0] == 0:
        raise ValueError(f"{name} must be a (n, d) feature array; got shape {feat.shape}")
    if not np.all(np.isfinite(feat)):
        raise ValueError(f"{name} hold NaN or infinite values")
    return feat


def feature_scaler(reference: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of reference features, for ``standardize=`` of the distances.

    Constant features keep unit scale. Pass the features of *all* real slices at hand (e.g.
    held-out and training together): a small held-out set alone can give a feature a tiny
    spread, and then that one feature dominates every distance.
    """
    ref = _as_features(reference, "reference")
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0)
    sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), sd, 1.0)
    return mu, sd


Standardize = Union[bool, Tuple[np.ndarray, np.ndarray]]


def _standardized(real: np.ndarray, fake: np.ndarray, standardize: Standardize):
    """Both sets scaled with ``standardize`` = True (the real set's statistics), a ``(mean, sd)``
    pair from :func:`feature_scaler`, or False (raw features)."""
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"the feature sets differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    if standardize is False:
        return real, fake
    mu, sd = feature_scaler(real) if standardize is True else (np.asarray(v, float) for v in standardize)
    if mu.shape != (real.shape[1],) or sd.shape != (real.shape[1],):
        raise ValueError(f"the scaler has shape {mu.shape}, the features {real.shape[1]} dimensions")
    return (real - mu) / sd, (fake - mu) / sd


def _window01(x: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must have high > low, got {window}")
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


# ---------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------
def radiomic_features(slices: SlicesLike, mask: Optional[np.ndarray] = None, *,
                      window: Tuple[float, float] = WINDOW, levels: int = GLCM_LEVELS) -> np.ndarray:
    """Radiomic-style features computed with scikit-image, one row per slice.

    Args:
        slices: ``(n, H, W)`` HU.
        mask: optional boolean ``(n, H, W)`` or ``(H, W)`` region: first-order and gradient
            statistics use its pixels only, the GLCM only pairs of pixels both inside it.
        window: HU window of the GLCM quantisation and of the energy/gradient features.
        levels: grey levels of the GLCM quantisation.

    Returns:
        ``(n, len(FEATURE_NAMES))`` float64 array; column names in :data:`FEATURE_NAMES`.
    """
    from scipy import stats
    from skimage.feature import graycomatrix, graycoprops
    from skimage.filters import sobel

    x = _as_slices(slices)
    n = x.shape[0]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim == 2:
            mask = np.broadcast_to(mask, x.shape)
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the slices {x.shape}")
    lo, hi = float(window[0]), float(window[1])
    win = _window01(x, window)
    quant = np.minimum((win * levels).astype(np.int64), levels - 1)

    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    for i in range(n):
        m = None if mask is None else mask[i]
        values = x[i].ravel() if m is None else x[i][m]
        if values.size < 2:
            raise ValueError(f"slice {i}: the mask holds {values.size} pixel(s); at least 2 are needed")
        std = float(values.std())
        if std > 1e-8:
            skew, kurt = float(stats.skew(values)), float(stats.kurtosis(values))
        else:
            skew = kurt = 0.0
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        hist, _ = np.histogram(np.clip(values, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1] - 1e-6), HISTOGRAM_EDGES)
        p = hist[hist > 0] / values.size
        entropy = float(-(p * np.log2(p)).sum())
        wv = win[i].ravel() if m is None else win[i][m]
        energy = float(np.mean(wv ** 2))

        if m is None:
            glcm = graycomatrix(quant[i].astype(np.uint8), GLCM_DISTANCES, GLCM_ANGLES,
                                levels=levels, symmetric=True, normed=False)
        else:  # outside the mask -> level 0 of a (levels + 1)-level image, then dropped
            q = np.where(m, quant[i] + 1, 0).astype(np.uint8)
            glcm = graycomatrix(q, GLCM_DISTANCES, GLCM_ANGLES, levels=levels + 1,
                                symmetric=True, normed=False)[1:, 1:]
        glcm = glcm.astype(np.float64)
        sums = glcm.sum(axis=(0, 1))
        if np.any(sums == 0):
            raise ValueError(f"slice {i}: no pixel pair inside the mask at GLCM distances {GLCM_DISTANCES}")
        texture = []
        for d in range(len(GLCM_DISTANCES)):
            sub = glcm[:, :, d:d + 1, :]
            for prop in GLCM_PROPS:
                texture.append(float(np.mean(graycoprops(sub, prop))))

        grad = sobel(np.clip(x[i], lo, hi))
        gv = grad.ravel() if m is None else grad[m]
        out[i] = [values.mean(), std, skew, kurt, p10, p50, p90, entropy, energy] + texture + [
            float(gv.mean()), float(gv.std())]
    return out
