"""Fidelity, diversity and memorization metrics for synthetic 2D CT slices (values in HU).

Every function takes stacks of 2D slices in Hounsfield units, shape ``(n, H, W)``
(a single ``(H, W)`` slice or a :class:`~QHQGANLib.core.volume.Volume` is accepted too).

* **Radiomic-style features computed with scikit-image** (:func:`radiomic_features`,
  :mod:`QHQGANLib.metrics.features`).
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
* **Classifier two-sample test**: :func:`~QHQGANLib.metrics.c2st.c2st_accuracy`, the
  cross-validated accuracy of a small CNN telling samples from real slices (0.5 =
  indistinguishable, 1.0 = always told apart), with the same test between two halves of the real
  slices as reference (:mod:`QHQGANLib.metrics.c2st`).
* :func:`fid_inception`: FID with InceptionV3, only when torchvision and the Inception
  weights are already on disk (nothing is downloaded); otherwise ``None`` and the reason.
* :func:`evaluate_synthetic`: all of the above in one JSON-friendly dict.

Windows: MS-SSIM and memorization SSIM clip HU to ``WINDOW`` = [-1024, 1024] and use its
width (2048 HU) as the data range (MS-SSIM maps it to [0, 1]).

Console usage::

    >>> from QHQGANLib.metrics.synthetic import evaluate_synthetic
    >>> report = evaluate_synthetic(samples, real_heldout, training_slices, seed=0)
    >>> report["frd"], report["kid_mean"], report["memorization"]["max"]
    >>> report["c2st_accuracy"], report["c2st_reference"]     # e.g. 0.89 and 0.47
    >>> evaluate_synthetic(samples, real_heldout, c2st=False)  # skip the CNN (a few seconds)
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from .c2st import c2st_accuracy
from .distances import (density_coverage, frechet_distance, hu_histogram_wasserstein, kid,  # noqa: F401
                        precision_recall)
from .features import (FEATURE_NAMES, GLCM_DISTANCES, GLCM_LEVELS, WINDOW, SlicesLike, _as_slices,  # noqa: F401
                       feature_scaler, radiomic_features)
from .inception import fid_inception, find_inception_weights  # noqa: F401
from .similarity import MS_SSIM_KERNEL, diversity_ms_ssim, memorization, ms_ssim_scales  # noqa: F401


# ---------------------------------------------------------------------------
# everything
# ---------------------------------------------------------------------------
def evaluate_synthetic(samples: SlicesLike, real_heldout: SlicesLike,
                       training_slices: Optional[SlicesLike] = None, seed: int = 0, *, k: int = 5,
                       kid_subset_size: int = 100, kid_subsets: int = 100, n_pairs: int = 200,
                       mask: Optional[np.ndarray] = None, c2st: bool = True,
                       c2st_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
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

    With ``c2st`` (default): ``c2st_accuracy`` (cross-validated accuracy of a small CNN telling the
    samples from the held-out real slices; 0.5 = indistinguishable), ``c2st_reference`` (the same
    test between two random halves of the held-out real slices, ~0.5) and ``c2st`` (the full
    result of :func:`~QHQGANLib.metrics.c2st.c2st_accuracy`: per-fold accuracies, 95 % interval,
    p-value, AUC, settings). ``c2st_options`` go to ``c2st_accuracy`` (``folds``, ``epochs``,
    ``device``, ...). Without ``c2st``, or when the sets are too small for it, the three are None
    and ``c2st_reason`` says why.
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
    report["c2st_accuracy"] = report["c2st_reference"] = report["c2st"] = None
    report["c2st_reason"] = "not asked for (c2st=False)"
    if c2st:
        try:
            result = c2st_accuracy(s, r, seed=seed, reference=True, **dict(c2st_options or {}))
        except ValueError as exc:  # too few slices for the folds
            report["c2st_reason"] = str(exc)
        else:
            report["c2st_accuracy"] = result["accuracy"]
            report["c2st_reference"] = result["reference"]["accuracy"]
            report["c2st"] = result
            report["c2st_reason"] = None
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
           "memorization", "find_inception_weights", "fid_inception", "c2st_accuracy", "evaluate_synthetic"]
