"""Fidelity, diversity and memorization metrics for synthetic 2D CT slices (values in HU).

Every function takes stacks of 2D slices in Hounsfield units, shape ``(n, H, W)``
(a single ``(H, W)`` slice or a :class:`~QHQGANLib.volume.Volume` is accepted too).

* **Radiomic-style features computed with scikit-image** (:func:`radiomic_features`):
  pyradiomics is not used (it is hard to install in Slicer and on recent Pythons); the
  features follow its definitions where they overlap. First order on the HU values
  (mean, standard deviation, skewness, excess kurtosis, 10th/50th/90th percentiles,
  entropy of the HU histogram in 16-HU bins, energy = mean square of the values windowed
  to [0, 1]); texture from the grey-level co-occurrence matrix (``skimage.feature.graycomatrix``
  / ``graycoprops``: contrast, dissimilarity, homogeneity, ASM, energy, correlation at
  distances 1 and 2 px, symmetric, averaged over 0/45/90/135 degrees) of the slice
  quantised into 32 levels in the window [-1024, 1024] HU; and the mean and standard
  deviation of the Sobel gradient magnitude (HU per pixel) in that window.
* **Fidelity**: :func:`frechet_distance` (FRD, the Fréchet distance between Gaussians
  fitted to the features, both sets standardised with the *real* set's mean and standard
  deviation so values are comparable between models), :func:`kid` (kernel inception
  distance on the same standardised features: unbiased MMD² with the cubic polynomial
  kernel, mean and standard deviation over random subsets, Bińkowski et al. 2018),
  :func:`precision_recall` (k-NN manifolds, Kynkäänniemi et al. 2019),
  :func:`density_coverage` (Naeem et al. 2020) and :func:`hu_histogram_wasserstein`
  (Wasserstein-1 distance between the HU value distributions, in HU).
* **Diversity**: :func:`diversity_ms_ssim`, the mean MS-SSIM of random pairs of samples
  (lower = more diverse; compare it with the value among real slices).
* **Memorization**: :func:`memorization`, for every sample the SSIM to its nearest
  training slice.
* :func:`fid_inception`: FID with InceptionV3, only when torchvision and the Inception
  weights are already on disk (nothing is downloaded); otherwise ``None`` and the reason.
* :func:`evaluate_synthetic`: all of the above in one JSON-friendly dict.

Windows: MS-SSIM and memorization SSIM clip HU to ``WINDOW`` = [-1024, 1024] and use its
width (2048 HU) as the data range (MS-SSIM maps it to [0, 1]).

Console usage::

    >>> from QHQGANLib.synth_metrics import evaluate_synthetic
    >>> report = evaluate_synthetic(samples, real_heldout, training_slices, seed=0)
    >>> report["frd"], report["kid_mean"], report["memorization"]["max"]
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .volume import Volume

SlicesLike = Union[np.ndarray, Volume, Sequence[np.ndarray]]

#: HU window of the GLCM quantisation, the gradient, MS-SSIM and memorization SSIM.
WINDOW: Tuple[float, float] = (-1024.0, 1024.0)
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")
#: Bins of the HU histogram whose entropy is a feature: 16 HU wide over [-1024, 3072).
HISTOGRAM_EDGES = np.arange(-1024.0, 3072.0 + 1e-6, 16.0)
#: MS-SSIM weights of Wang et al. 2003 (finest scale first); fewer scales use the first ones, renormalised.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 7
MS_SSIM_SIGMA = 1.5

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


# ---------------------------------------------------------------------------
# fidelity
# ---------------------------------------------------------------------------
def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feat_real: np.ndarray, feat_fake: np.ndarray, *, standardize: Standardize = True) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FRD on radiomic features).

    ``||mu_r - mu_f||² + tr(S_r + S_f - 2 (S_r S_f)^½)``. With ``standardize`` (default) both sets
    are first scaled with the real set's mean and standard deviation (or with a given
    ``(mean, sd)`` from :func:`feature_scaler`), so the value does not depend on the units of
    the features and is comparable between generators.

    The trace of the matrix square root is computed as the sum of the square roots of the
    eigenvalues of ``S_r^½ S_f S_r^½`` (symmetric, positive semi-definite: same eigenvalues as
    ``S_r S_f``), which avoids the spurious imaginary parts ``scipy.linalg.sqrtm`` gives on
    singular covariances (fewer samples than features). The result is clipped at 0.
    """
    real = _as_features(feat_real, "feat_real")
    fake = _as_features(feat_fake, "feat_fake")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    real, fake = _standardized(real, fake, standardize)
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    s_r = np.atleast_2d(np.cov(real, rowvar=False))
    s_f = np.atleast_2d(np.cov(fake, rowvar=False))
    root_r = _sqrt_psd(s_r)
    middle = root_r @ s_f @ root_r
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(np.sum((mu_r - mu_f) ** 2) + np.trace(s_r) + np.trace(s_f) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(feat_real: np.ndarray, feat_fake: np.ndarray, subset_size: int = 100, n_subsets: int = 100,
        seed: int = 0, *, standardize: Standardize = True) -> Tuple[float, float]:
    """Kernel distance (KID) between two feature sets: ``(mean, std)`` of unbiased MMD² over subsets.

    Kernel ``k(x, y) = (x·y / d + 1)³`` (Bińkowski et al. 2018); each subset draws
    ``subset_size`` samples without replacement from each set (capped at the smaller set).
    Features are standardised with the real set's statistics (see :func:`frechet_distance`).
    Identical distributions give values around 0 (the estimate is unbiased, so it can be
    slightly negative).
    """
    real = _as_features(feat_real, "feat_real")
    fake = _as_features(feat_fake, "feat_fake")
    real, fake = _standardized(real, fake, standardize)
    m = int(min(subset_size, real.shape[0], fake.shape[0]))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    if n_subsets < 1:
        raise ValueError("n_subsets must be at least 1")
    rng = np.random.default_rng(seed)
    values = np.empty(int(n_subsets))
    for s in range(int(n_subsets)):
        x = real[rng.choice(real.shape[0], m, replace=False)]
        y = fake[rng.choice(fake.shape[0], m, replace=False)]
        kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        values[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2.0 * kxy.mean())
    return float(values.mean()), float(values.std())


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every row of ``x`` to its k-th nearest other row."""
    from scipy.spatial.distance import cdist

    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be between 1 and n - 1 = {x.shape[0] - 1}, got {k}")
    d = cdist(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)


def precision_recall(real_feat: np.ndarray, fake_feat: np.ndarray, k: int = 5, *,
                     standardize: Standardize = True) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Precision: the fraction of fake samples inside the real manifold (the union of balls
    around real samples with radius the distance to their k-th nearest real neighbour);
    recall: the fraction of real samples inside the fake manifold.
    """
    from scipy.spatial.distance import cdist

    real = _as_features(real_feat, "real_feat")
    fake = _as_features(fake_feat, "fake_feat")
    real, fake = _standardized(real, fake, standardize)
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = cdist(real, fake)  # (n_real, n_fake)
    precision = float(np.mean(np.any(d <= r_real[:, None], axis=0)))
    recall = float(np.mean(np.any(d <= r_fake[None, :], axis=1)))
    return precision, recall


def density_coverage(real_feat: np.ndarray, fake_feat: np.ndarray, k: int = 5, *,
                     standardize: Standardize = True) -> Tuple[float, float]:
    """Density and coverage (Naeem et al. 2020).

    Density: how many real-sample k-NN balls contain each fake sample, divided by k and
    averaged (about 1 when the distributions match; can exceed 1). Coverage: the fraction of
    real samples whose k-NN ball contains at least one fake sample.
    """
    from scipy.spatial.distance import cdist

    real = _as_features(real_feat, "real_feat")
    fake = _as_features(fake_feat, "fake_feat")
    real, fake = _standardized(real, fake, standardize)
    radii = _knn_radii(real, k)
    inside = cdist(real, fake) <= radii[:, None]
    density = float(inside.sum() / (k * fake.shape[0]))
    coverage = float(np.mean(inside.any(axis=1)))
    return density, coverage


def hu_histogram_wasserstein(a: SlicesLike, b: SlicesLike, *, max_values: int = 1_000_000,
                             seed: int = 0) -> float:
    """Wasserstein-1 distance (in HU) between the HU value distributions of two sets of slices.

    Sets with more than ``max_values`` values are subsampled (seeded) to keep it fast.
    """
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(seed)
    values = []
    for name, x in (("a", a), ("b", b)):
        v = _as_slices(x, name).ravel()
        if v.size > max_values:
            v = v[rng.choice(v.size, max_values, replace=False)]
        values.append(v)
    return float(wasserstein_distance(values[0], values[1]))


# ---------------------------------------------------------------------------
# diversity and memorization
# ---------------------------------------------------------------------------
def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales for an image size: coarsest scale at least 16 px, at most 5."""
    s = 1
    while s < len(MS_SSIM_BETAS) and min(height, width) / 2 ** s >= 16:
        s += 1
    return s


def diversity_ms_ssim(slices: SlicesLike, n_pairs: int = 200, seed: int = 0, *,
                      window: Tuple[float, float] = WINDOW) -> float:
    """Mean MS-SSIM between random distinct pairs of slices (1 = all alike; lower = more diverse).

    Slices are clipped to ``window`` and mapped to [0, 1] (data range 1). torchmetrics'
    ``multiscale_structural_similarity_index_measure`` with a 7-px Gaussian kernel (sigma 1.5)
    and :func:`ms_ssim_scales` scales (3 for 64x64, 4 for 128x128; the first weights of
    Wang et al. 2003, renormalised), ``normalize="relu"``. All pairs are used when there are
    at most ``n_pairs`` of them.
    """
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    x = _as_slices(slices)
    n, h, w = x.shape
    if n < 2:
        raise ValueError("diversity needs at least 2 slices")
    scales = ms_ssim_scales(h, w)
    if min(h, w) < 16:
        raise ValueError(f"MS-SSIM needs slices of at least 16x16 pixels, got {h}x{w}")
    betas = np.asarray(MS_SSIM_BETAS[:scales])
    betas = tuple(float(b) for b in betas / betas.sum())

    all_pairs = n * (n - 1) // 2
    rng = np.random.default_rng(seed)
    if all_pairs <= n_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, size=int(n_pairs))
        j = (i + rng.integers(1, n, size=int(n_pairs))) % n  # j != i
    images = torch.from_numpy(_window01(x, window).astype(np.float32))[:, None]
    values = []
    with torch.no_grad():
        for start in range(0, len(i), 64):
            a = images[i[start:start + 64]]
            b = images[j[start:start + 64]]
            v = ms_ssim(a, b, gaussian_kernel=True, sigma=MS_SSIM_SIGMA, kernel_size=MS_SSIM_KERNEL,
                        reduction="none", data_range=1.0, betas=betas, normalize="relu")
            values.append(v.reshape(-1).double().numpy())
    return float(np.mean(np.concatenate(values)))


def _ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def memorization(samples: SlicesLike, training_slices: SlicesLike, *, window: Tuple[float, float] = WINDOW,
                 top_k: Optional[int] = 10, thumbnail: int = 16,
                 thresholds: Sequence[float] = (0.9, 0.95)) -> Dict[str, Any]:
    """For every sample, the SSIM to its nearest training slice (memorization check).

    Both are clipped to ``window`` (data range = its width, 2048 HU by default); SSIM as in
    ``QHQGANLib.metrics.ssim`` (Gaussian sigma 1.5). To be fast, the candidates are first the
    ``top_k`` training slices nearest in L2 distance on ``thumbnail``-pixel downsampled images;
    the exact SSIM is computed on those only (``top_k=None``: on all training slices).

    Returns:
        ``{"ssim": per-sample max SSIM (n,), "nearest": index of that training slice (n,),
        "max": ..., "mean": ..., "fraction_above_0.9": ..., "fraction_above_0.95": ...}``.
    """
    from scipy.spatial.distance import cdist
    from skimage.transform import resize

    s = _as_slices(samples, "samples")
    t = _as_slices(training_slices, "training_slices")
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"samples {s.shape[1:]} and training slices {t.shape[1:]} differ in size")
    if min(s.shape[1:]) < 7:
        raise ValueError(f"SSIM needs slices of at least 7x7 pixels, got {s.shape[1:]}")
    lo, hi = float(window[0]), float(window[1])
    sw, tw = np.clip(s, lo, hi), np.clip(t, lo, hi)
    if top_k is None or top_k >= t.shape[0]:
        candidates = np.broadcast_to(np.arange(t.shape[0]), (s.shape[0], t.shape[0]))
    else:
        size = (min(thumbnail, s.shape[1]), min(thumbnail, s.shape[2]))

        def small(x):
            return resize(x, (x.shape[0],) + size, order=1, anti_aliasing=True,
                          preserve_range=True).reshape(x.shape[0], -1)

        d = cdist(small(sw), small(tw), "sqeuclidean")
        candidates = np.argsort(d, axis=1, kind="stable")[:, :int(top_k)]
    best = np.empty(s.shape[0])
    nearest = np.empty(s.shape[0], dtype=np.int64)
    for n in range(s.shape[0]):
        values = [_ssim(sw[n], tw[c], hi - lo) for c in candidates[n]]
        k = int(np.argmax(values))
        best[n], nearest[n] = values[k], int(candidates[n][k])
    out: Dict[str, Any] = {"ssim": best, "nearest": nearest, "max": float(best.max()),
                           "mean": float(best.mean())}
    for threshold in thresholds:
        out[f"fraction_above_{threshold:g}"] = float(np.mean(best > threshold))
    return out


# ---------------------------------------------------------------------------
# FID with InceptionV3 (optional)
# ---------------------------------------------------------------------------
#: File names of torchvision's ImageNet InceptionV3 weights looked for in the torch hub cache.
INCEPTION_WEIGHT_FILES = ("inception_v3_google-0cc3c7bd.pth", "inception_v3_google-1a9a5a14.pth")


def find_inception_weights(extra_dirs: Sequence[Union[str, Path]] = ()) -> Optional[Path]:
    """A torchvision InceptionV3 weight file already on disk (torch hub cache), or None."""
    dirs = [Path(d) for d in extra_dirs]
    try:
        import torch

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    for d in dirs:
        for name in INCEPTION_WEIGHT_FILES:
            if (d / name).is_file():
                return d / name
    return None


def fid_inception(samples: SlicesLike, real: SlicesLike, *, window: Tuple[float, float] = WINDOW,
                  weights: Optional[Union[str, Path]] = None, batch_size: int = 32) -> Dict[str, Any]:
    """FID with torchvision's InceptionV3 (2048-d pool features), only if everything is on disk.

    Nothing is downloaded: without torchvision or without the weights file (``weights`` or
    the torch hub cache) the result is ``{"fid": None, "reason": ...}``. Slices are windowed
    to [0, 1], repeated to 3 channels, resized to 299x299 and ImageNet-normalised. Note that
    Inception features of CT are ImageNet features: the radiomic FRD is the primary metric.
    """
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return {"fid": None, "reason": "torchvision is not installed; FID with InceptionV3 is not available "
                                       "(nothing is downloaded)"}
    path = Path(weights) if weights is not None else find_inception_weights()
    if path is None or not path.is_file():
        return {"fid": None, "reason": "InceptionV3 weights are not on disk (looked for "
                                       f"{', '.join(INCEPTION_WEIGHT_FILES)} in the torch hub cache); "
                                       "nothing is downloaded"}
    feats = [_inception_features(_as_slices(x, name), path, window, batch_size)
             for name, x in (("samples", samples), ("real", real))]
    return {"fid": frechet_distance(feats[1], feats[0], standardize=False), "reason": None,
            "weights": str(path)}


def _inception_features(x: np.ndarray, path: Path, window, batch_size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = torch.from_numpy(_window01(x, window).astype(np.float32))[:, None]
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            b = F.interpolate(images[start:start + batch_size], size=(299, 299), mode="bilinear",
                              align_corners=False).repeat(1, 3, 1, 1)
            out.append(model((b - mean) / std).double().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------
# everything
# ---------------------------------------------------------------------------
def evaluate_synthetic(samples: SlicesLike, real_heldout: SlicesLike,
                       training_slices: Optional[SlicesLike] = None, seed: int = 0, *, k: int = 5,
                       kid_subset_size: int = 100, kid_subsets: int = 100, n_pairs: int = 200,
                       mask: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """All metrics of synthetic slices against held-out real slices, as a JSON-friendly dict.

    Keys: ``frd``, ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``density``,
    ``coverage`` (radiomic-style features, standardised with all real slices given: held-out and
    training), ``frd_real_reference`` / ``kid_real_reference`` (the same distances from the
    held-out to the training slices: what a generator as good as the data can expect; None
    without ``training_slices``), ``hu_wasserstein``
    (HU), ``diversity_samples`` and ``diversity_real`` (mean pairwise MS-SSIM; samples far above
    real = mode collapse), ``memorization`` (vs ``training_slices``, when given: ``max``,
    ``mean``, ``fraction_above_0.9``, ``fraction_above_0.95``, per-sample ``ssim`` and ``nearest``
    lists; ``memorization_heldout_reference``: the same summary for the held-out real slices, the
    level a generator that copies nothing can expect),
    ``fid_inception`` (value or None, with ``fid_inception_reason``), ``n_samples``,
    ``n_real``, ``settings``. ``k`` is capped below the smaller set size.
    """
    s = _as_slices(samples, "samples")
    r = _as_slices(real_heldout, "real_heldout")
    if s.shape[1:] != r.shape[1:]:
        raise ValueError(f"samples {s.shape[1:]} and real slices {r.shape[1:]} differ in size")
    fs = radiomic_features(s, mask)
    fr = radiomic_features(r, mask)
    t = None if training_slices is None else _as_slices(training_slices, "training_slices")
    if t is not None and t.shape[1:] != r.shape[1:]:
        raise ValueError(f"training slices {t.shape[1:]} and real slices {r.shape[1:]} differ in size")
    ft = None if t is None else radiomic_features(t, mask)
    # scale of every feature from all real slices at hand (a small held-out set alone can give
    # a feature a spread so small that it dominates the distances)
    scaler = feature_scaler(fr if ft is None else np.concatenate([fr, ft]))
    kk = max(1, min(int(k), s.shape[0] - 1, r.shape[0] - 1))
    kid_mean, kid_std = kid(fr, fs, kid_subset_size, kid_subsets, seed, standardize=scaler)
    precision, recall = precision_recall(fr, fs, kk, standardize=scaler)
    density, coverage = density_coverage(fr, fs, kk, standardize=scaler)
    report: Dict[str, Any] = {
        "n_samples": int(s.shape[0]), "n_real": int(r.shape[0]),
        "frd": frechet_distance(fr, fs, standardize=scaler), "kid_mean": kid_mean, "kid_std": kid_std,
        # the same distances between two real sets (training vs held-out): the level to expect
        # from a generator as good as the data (different slices of the same patients)
        "frd_real_reference": None if ft is None else frechet_distance(fr, ft, standardize=scaler),
        "kid_real_reference": None if ft is None else kid(fr, ft, kid_subset_size, kid_subsets, seed,
                                                          standardize=scaler)[0],
        "precision": precision, "recall": recall, "density": density, "coverage": coverage,
        "hu_wasserstein": hu_histogram_wasserstein(s, r, seed=seed),
        "diversity_samples": diversity_ms_ssim(s, n_pairs, seed),
        "diversity_real": diversity_ms_ssim(r, n_pairs, seed),
    }
    if t is not None:
        mem = memorization(s, t)
        report["memorization"] = {key: (value.tolist() if isinstance(value, np.ndarray) else value)
                                  for key, value in mem.items()}
        # the same check on held-out real slices: what a generator that never copies can expect
        # (neighbouring slices of one patient are alike, so real slices score high too)
        ref = memorization(r, t)
        report["memorization_heldout_reference"] = {key: value for key, value in ref.items()
                                                    if not isinstance(value, np.ndarray)}
    else:
        report["memorization"] = report["memorization_heldout_reference"] = None
    fid = fid_inception(s, r)
    report["fid_inception"] = fid["fid"]
    report["fid_inception_reason"] = fid["reason"]
    report["settings"] = {
        "features": "radiomic-style features computed with scikit-image (" + ", ".join(FEATURE_NAMES) + ")",
        "glcm": f"{GLCM_LEVELS} levels in [{WINDOW[0]:g}, {WINDOW[1]:g}] HU, distances {list(GLCM_DISTANCES)}, "
                "4 angles averaged",
        "standardization": "features standardised with the mean and std of all real slices given "
                           "(held-out and training)",
        "k": kk, "kid_subset_size": int(min(kid_subset_size, s.shape[0], r.shape[0])),
        "kid_subsets": int(kid_subsets), "kid_kernel": "(x.y/d + 1)^3",
        "ssim_window_hu": list(WINDOW), "ms_ssim_scales": ms_ssim_scales(*s.shape[1:]),
        "ms_ssim_kernel": MS_SSIM_KERNEL, "n_pairs": int(n_pairs), "seed": int(seed),
    }
    for key, value in report.items():
        if isinstance(value, float) and not math.isfinite(value):
            report[key] = None
    return report


__all__ = ["FEATURE_NAMES", "WINDOW", "radiomic_features", "feature_scaler", "frechet_distance", "kid", "precision_recall",
           "density_coverage", "hu_histogram_wasserstein", "diversity_ms_ssim", "ms_ssim_scales",
           "memorization", "find_inception_weights", "fid_inception", "evaluate_synthetic"]
