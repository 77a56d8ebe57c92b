"""Statistics for comparing two methods on the same items, and for the spread over training seeds.

``paired_difference(a, b)`` compares two methods scored on the same items (slices, patients):
the per-item differences ``a - b`` are resampled with SciPy's ``scipy.stats.bootstrap``
(BCa by default), which gives a confidence interval of their mean. The verdict says
"A better" or "B better" only when the interval excludes 0; otherwise "no measurable
difference" (with ``higher_is_better`` saying which sign is better: PSNR and SSIM higher,
RMSE and noise lower). Pairing matters: the variation between items (an easy slice is easy
for both methods) cancels in the difference.

``patient_interval(values, patients, seeds=None)`` is the procedure of every benchmark verdict
(issue #27): patients are the unit. Item scores (per slice, per seed) are averaged within each
(patient, seed), then over seeds within each patient, and the interval is Student's t over the
patient means with n - 1 degrees of freedom; with an interval holding 0 the verdict is "not
resolvable with N patients", never "no difference". Slices of one patient are near copies, so an
interval over slices would claim far more certainty than the data hold (``Testing/test_statistics.py``
measures both coverages at the benchmark's structure).

``seed_difference(a, b)`` compares two methods over independent training runs (one score per
seed each) with Welch's t interval. ``seed_summary(values)`` summarises one figure over
training seeds (mean, sample std, min, max, n); ``markdown_row`` writes a paired or a seed
result as a row of a markdown table (headers in ``PAIRED_HEADER`` and ``SEED_HEADER``).

Console usage::

    >>> from QHQGANLib.metrics.statistics import PAIRED_HEADER, markdown_row, paired_difference, seed_summary
    >>> model, bm3d = [30.1, 31.0, 29.5, 32.2, 30.8], [29.0, 30.2, 29.1, 31.0, 30.5]   # PSNR per slice
    >>> r = paired_difference(model, bm3d)
    >>> round(r["mean_difference"], 2), round(r["ci_low"], 2), round(r["ci_high"], 2), r["verdict"]
    (0.76, 0.44, 1.06, 'A better')
    >>> print(PAIRED_HEADER); print(markdown_row("HQGAN vs BM3D, PSNR (dB)", r))
    | comparison | n | mean difference (A - B) | CI | verdict |
    |---|---|---|---|---|
    | HQGAN vs BM3D, PSNR (dB) | 5 | +0.76 | [0.44, 1.06] (95 % BCa) | A better |
    >>> round(seed_summary([31.2, 31.5, 30.9])["std"], 3)   # also n, mean, min, max
    0.3
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

VERDICTS = ("A better", "B better", "no measurable difference")

PAIRED_HEADER = ("| comparison | n | mean difference (A - B) | CI | verdict |\n"
                 "|---|---|---|---|---|")
SEED_HEADER = ("| result | n seeds | mean | std | min | max |\n"
               "|---|---|---|---|---|---|")


def _as_scores(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1D sequence of per-item scores, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf)")
    return arr


def _verdict(low: float, high: float, higher_is_better: bool) -> str:
    if low <= 0.0 <= high:
        return "no measurable difference"
    a_higher = low > 0.0
    return "A better" if a_higher == higher_is_better else "B better"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = 10000, seed: Optional[int] = 0, method: str = "BCa",
                      higher_is_better: bool = True) -> Dict[str, Any]:
    """Bootstrap confidence interval of the mean paired difference ``a - b`` and a verdict.

    Args:
        a, b: the two methods' scores on the same items, in the same order (equal length >= 2).
        confidence: the interval's confidence level, in (0, 1).
        n_resamples: bootstrap resamples (``scipy.stats.bootstrap``).
        seed: the resampling seed (None: not reproducible).
        method: ``"BCa"`` (default), ``"percentile"`` or ``"basic"``.
        higher_is_better: True for PSNR/SSIM, False for errors and noise.

    Returns:
        ``{"n", "mean_difference", "std_difference", "ci_low", "ci_high", "confidence",
        "method", "higher_is_better", "verdict", "note"}``. When all differences are equal
        (e.g. two identical methods) there is nothing to resample: the interval is that one
        value, ``method`` is ``"degenerate"`` and ``note`` says so.

    Raises:
        ValueError: unequal lengths, fewer than 2 pairs, non-finite scores, bad options.

    Console usage::

        >>> paired_difference([0.30, 0.41, 0.28], [0.35, 0.44, 0.33], higher_is_better=False)["verdict"]
        'A better'
    """
    from scipy.stats import bootstrap

    xa, xb = _as_scores(a, "a"), _as_scores(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired scores need equal lengths: a has {xa.size}, b has {xb.size}")
    if xa.size < 2:
        raise ValueError(f"a paired comparison needs at least 2 items, got {xa.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if method not in ("BCa", "percentile", "basic"):
        raise ValueError(f"method must be 'BCa', 'percentile' or 'basic', got {method!r}")
    if int(n_resamples) != n_resamples or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100, got {n_resamples!r}")
    d = xa - xb
    mean = float(d.mean())
    note = ""
    if np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):
        low = high = mean
        used = "degenerate"
        note = f"all {d.size} paired differences equal {mean:g}: no spread to resample"
    else:
        import inspect

        generator = np.random.default_rng(seed)  # SciPy >= 1.15 names it rng, older ones random_state
        seeding = {"rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state": generator}
        res = bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=int(n_resamples),
                        method=method, vectorized=True, **seeding)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        used = method
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"the {method} bootstrap gave no interval for these {d.size} differences "
                             "(too few distinct values); try method='percentile' or more items")
    return {
        "n": int(d.size),
        "mean_difference": mean,
        "std_difference": float(d.std(ddof=1)),
        "ci_low": low,
        "ci_high": high,
        "confidence": float(confidence),
        "method": used,
        "higher_is_better": bool(higher_is_better),
        "verdict": _verdict(low, high, higher_is_better),
        "note": note,
    }


def t_interval(values: Sequence[float], confidence: float = 0.95):
    """``(mean, low, high)``: Student's t interval of the mean of independent values (n - 1 degrees of
    freedom); low and high are NaN for a single value (no interval).

    Console usage::

        >>> [round(x, 2) for x in t_interval([1.0, 2.0, 3.0])]
        [2.0, -0.48, 4.48]
    """
    from scipy import stats

    x = _as_scores(values, "values")
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def patient_interval(values: Sequence[float], patients: Sequence[Any], seeds: Optional[Sequence[Any]] = None,
                     confidence: float = 0.95, higher_is_better: bool = True) -> Dict[str, Any]:
    """Patients as the unit: item scores (e.g. per-slice PSNR differences) averaged within each
    (patient, seed), then over seeds per patient, then a t interval over the patient means.

    Returns ``{"n_patients", "mean", "ci_low", "ci_high", "confidence", "patient_means", "ahead",
    "verdict"}``; ``ahead`` counts the patients whose mean is on the better side of 0; ``verdict`` is
    "A better" / "B better" when the interval excludes 0, else "not resolvable with N patients".

    Console usage::

        >>> r = patient_interval([0.9, 1.0, 1.1, 0.2, 0.4], ["p1", "p1", "p1", "p2", "p3"])
        >>> r["n_patients"], round(r["mean"], 2), r["verdict"]
        (3, 0.53, 'not resolvable with 3 patients')
    """
    x = _as_scores(values, "values")
    labels = list(patients)
    runs = [0] * len(labels) if seeds is None else list(seeds)
    if not (len(labels) == len(runs) == x.size):
        raise ValueError(f"values, patients and seeds need equal lengths: {x.size}, {len(labels)}, {len(runs)}")
    cells: Dict[Any, Dict[Any, list]] = {}
    for value, patient, seed in zip(x, labels, runs):
        cells.setdefault(patient, {}).setdefault(seed, []).append(float(value))
    means = {p: float(np.mean([np.mean(v) for v in by_seed.values()])) for p, by_seed in cells.items()}
    mean, low, high = t_interval(list(means.values()), confidence)
    n = len(means)
    if n >= 2 and (low > 0 or high < 0):
        verdict = "A better" if (low > 0) == higher_is_better else "B better"
    else:
        verdict = f"not resolvable with {n} patient{'s' if n != 1 else ''}"
    ahead = sum((m > 0) if higher_is_better else (m < 0) for m in means.values())
    return {"n_patients": n, "mean": mean, "ci_low": low, "ci_high": high, "confidence": float(confidence),
            "patient_means": means, "ahead": int(ahead), "verdict": verdict}


def seed_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                    higher_is_better: bool = True) -> Dict[str, Any]:
    """Two methods compared over independent training runs (one score per seed each, not paired):
    the difference of means ``mean(a) - mean(b)`` with Welch's t interval (unequal variances,
    ``scipy.stats.ttest_ind(equal_var=False)``) and the same verdict as ``paired_difference``.

    Console usage::

        >>> r = seed_difference([199.0, 184.0, 208.0], [171.0, 169.0, 174.0], higher_is_better=False)  # FRD
        >>> round(r["mean_difference"], 1), r["verdict"]
        (25.7, 'no measurable difference')
    """
    from scipy import stats

    x, y = _as_scores(a, "a"), _as_scores(b, "b")
    if x.size < 2 or y.size < 2:
        raise ValueError(f"Welch's interval needs at least 2 seeds on each side, got {x.size} and {y.size}")
    test = stats.ttest_ind(x, y, equal_var=False)
    ci = test.confidence_interval(confidence_level=confidence)
    low, high = float(ci.low), float(ci.high)
    return {"n_a": int(x.size), "n_b": int(y.size), "mean_difference": float(x.mean() - y.mean()),
            "ci_low": low, "ci_high": high, "confidence": confidence, "p_value": float(test.pvalue),
            "method": "Welch t", "higher_is_better": bool(higher_is_better),
            "verdict": _verdict(low, high, higher_is_better)}


def seed_summary(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, sample standard deviation (ddof=1; NaN for one seed), min, max and n of per-seed results.

    Console usage::

        >>> round(seed_summary([31.2, 31.5, 30.9])["std"], 3)
        0.3
    """
    x = _as_scores(values, "values")
    if x.size == 0:
        raise ValueError("seed_summary needs at least one value")
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else float("nan"),
        "min": float(x.min()),
        "max": float(x.max()),
    }


def _fmt(value: float, digits: int) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def markdown_row(label: str, result: Dict[str, Any], digits: int = 2) -> str:
    """One markdown table row of a ``paired_difference`` (under ``PAIRED_HEADER``) or a
    ``seed_summary`` result (under ``SEED_HEADER``).

    Console usage::

        >>> markdown_row("HQGAN, PSNR (dB)", seed_summary([31.2, 31.5, 30.9]))
        '| HQGAN, PSNR (dB) | 3 | 31.20 | 0.30 | 30.90 | 31.50 |'
    """
    label = str(label).replace("|", "/")
    if "verdict" in result:
        pct = f"{100 * result['confidence']:g} %"
        ci = f"[{_fmt(result['ci_low'], digits)}, {_fmt(result['ci_high'], digits)}] ({pct} {result['method']})"
        mean = f"{result['mean_difference']:+.{digits}f}"
        return f"| {label} | {result['n']} | {mean} | {ci} | {result['verdict']} |"
    if {"mean", "std", "min", "max", "n"} <= set(result):
        cells = [_fmt(result[k], digits) for k in ("mean", "std", "min", "max")]
        return f"| {label} | {result['n']} | " + " | ".join(cells) + " |"
    raise ValueError(f"not a paired_difference or seed_summary result: keys {sorted(result)}")
