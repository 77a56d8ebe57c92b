"""Distances between real and synthetic feature sets: FRD, KID, precision/recall, density/coverage, HU Wasserstein.

Console usage::

    >>> from QHQGANLib.metrics.distances import frechet_distance, kid
    >>> frechet_distance(real_features, fake_features), kid(real_features, fake_features)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .features import SlicesLike, Standardize, _as_features, _as_slices, _standardized


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
