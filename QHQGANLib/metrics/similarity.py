"""Diversity (mean MS-SSIM among samples) and memorization (SSIM to the nearest training slice).

Console usage::

    >>> from QHQGANLib.metrics.similarity import diversity_ms_ssim, memorization
    >>> diversity_ms_ssim(samples), memorization(samples, training)["max"]
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .features import WINDOW, SlicesLike, _as_slices, _window01

#: MS-SSIM weights of Wang et al. 2003 (finest scale first); fewer scales use the first ones, renormalised.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 7
MS_SSIM_SIGMA = 1.5


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
    ``QHQGANLib.metrics.image.ssim`` (Gaussian sigma 1.5). To be fast, the candidates are first the
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
