"""Statistics of a reader study: scores per method, paired tests, agreement between readers, 2AFC preferences.

The input is the unblinded readings of a study (``QHQGANLib.tasks.reading_session.load_readings``):
one dict per answered item, ``{"reader", "case", "method", <question>: value}`` for single-image
studies, ``{"reader", "case", "left", "right", "preferred"}`` for pairs. Nothing here is a
hand-written test: SciPy, scikit-learn and the ``krippendorff`` package compute them.

* **Scores per method** (each 1-5 question): mean and median of all readings, with 95 % intervals
  from ``scipy.stats.bootstrap`` resampling *cases* (a cluster bootstrap: the readings of one case by
  several readers are not independent). Yes/no questions: the proportion "yes" with a Wilson interval
  (``scipy.stats.binomtest(...).proportion_ci``).
* **Against a reference method**: per case, the mean over readers of the paired differences
  (method - reference, same reader, same case); ``scipy.stats.wilcoxon`` (signed-rank) on those case
  differences, and the BCa interval of their mean (:func:`QHQGANLib.metrics.statistics.paired_difference`);
  p values also adjusted for the number of comparisons (Benjamini-Hochberg, ``false_discovery_control``).
* **Agreement between readers** (unit: the item): quadratic-weighted Cohen's kappa
  (``sklearn.metrics.cohen_kappa_score``) for two readers (the mean over pairs for more), and
  Krippendorff's alpha (ordinal for scales, nominal for yes/no and preferences) for two or more.
* **2AFC**: for each pair of methods, how often the first was preferred, with an exact binomial test
  against 50 % and a Wilson interval (over readings: readers of one case are counted separately).
* Before any of it, :func:`check_readings` refuses an answer off its question's scale (99 on 1-5,
  "maybe" for yes/no) and an item read twice by one reader, naming the reader, item and value.

Console usage::

    >>> from QHQGANLib.metrics.reader_stats import analyze_readings
    >>> results = analyze_readings(load_readings("study1"), reference="low-dose")
    >>> results["questions"]["acceptability"]["comparisons"][0]      # {'method': 'hqgan', 'p_wilcoxon': ...}
"""
from __future__ import annotations

import inspect
import itertools
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .statistics import paired_difference

Reading = Mapping[str, Any]


def _seeding(function, seed: Optional[int]) -> Dict[str, Any]:
    """SciPy >= 1.15 names the generator ``rng``, older ones ``random_state``."""
    name = "rng" if "rng" in inspect.signature(function).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def score_matrix(readings: Sequence[Reading], question: str, method: str,
                 cases: Sequence[str], readers: Sequence[str]) -> np.ndarray:
    """(cases x readers) scores of ``method`` for ``question``; NaN where a reader did not read a case."""
    matrix = np.full((len(cases), len(readers)), np.nan)
    row = {c: i for i, c in enumerate(cases)}
    col = {r: j for j, r in enumerate(readers)}
    for reading in readings:
        value = reading.get(question)
        if reading.get("method") == method and value not in (None, "") and reading["case"] in row:
            matrix[row[reading["case"]], col[reading["reader"]]] = float(value)
    return matrix


def cluster_bootstrap_ci(matrix: np.ndarray, statistic: str = "mean", confidence: float = 0.95,
                         n_resamples: int = 9999, seed: Optional[int] = 0) -> Tuple[float, float, str]:
    """Interval of the mean (BCa) or median (percentile) of all values of ``matrix`` (cases x readers),
    resampling whole cases (rows) with ``scipy.stats.bootstrap``. Returns (low, high, method)."""
    from scipy.stats import bootstrap

    matrix = matrix[~np.all(np.isnan(matrix), axis=1)]
    values = matrix[~np.isnan(matrix)]
    if values.size == 0:
        return math.nan, math.nan, "none"
    func = np.nanmean if statistic == "mean" else np.nanmedian
    if matrix.shape[0] < 2 or np.ptp(values) == 0:
        point = float(func(values))
        return point, point, "degenerate"

    def stat(index, axis=-1):
        picked = matrix[np.asarray(index, dtype=int)]  # (..., n cases, readers)
        return func(picked.reshape(picked.shape[:-2] + (-1,)), axis=-1)

    method = "BCa" if statistic == "mean" else "percentile"
    for used in (method, "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap((np.arange(matrix.shape[0]),), stat, vectorized=True, confidence_level=confidence,
                            n_resamples=int(n_resamples), method=used, **_seeding(bootstrap, seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, used
    return math.nan, math.nan, "failed"


def score_summary(readings: Sequence[Reading], question: str, methods: Sequence[str], confidence: float = 0.95,
                  n_resamples: int = 9999, seed: Optional[int] = 0) -> List[Dict[str, Any]]:
    """Per method: n readings and cases, mean and median with cluster-bootstrap intervals, mean reading time."""
    cases, readers = _cases_and_readers(readings)
    rows = []
    for method in methods:
        m = score_matrix(readings, question, method, cases, readers)
        values = m[~np.isnan(m)]
        mean_ci = cluster_bootstrap_ci(m, "mean", confidence, n_resamples, seed)
        median_ci = cluster_bootstrap_ci(m, "median", confidence, n_resamples, seed)
        seconds = [r["seconds"] for r in readings if r.get("method") == method and "seconds" in r]
        rows.append({"method": method, "n_readings": int(values.size),
                     "n_cases": int((~np.all(np.isnan(m), axis=1)).sum()),
                     "mean": float(values.mean()) if values.size else math.nan,
                     "mean_ci": mean_ci[:2], "mean_ci_method": mean_ci[2],
                     "median": float(np.median(values)) if values.size else math.nan,
                     "median_ci": median_ci[:2], "median_ci_method": median_ci[2],
                     "mean_seconds": float(np.mean(seconds)) if seconds else math.nan})
    return rows


def proportion_summary(readings: Sequence[Reading], question: str, methods: Sequence[str],
                       confidence: float = 0.95) -> List[Dict[str, Any]]:
    """Per method: how many readings answered "yes", the proportion and its Wilson interval."""
    from scipy.stats import binomtest

    rows = []
    for method in methods:
        answers = [str(r.get(question)) for r in readings if r.get("method") == method and r.get(question)]
        k, n = sum(a == "yes" for a in answers), len(answers)
        ci = binomtest(k, n).proportion_ci(confidence, method="wilson") if n else None
        rows.append({"method": method, "n_readings": n, "yes": k, "proportion": k / n if n else math.nan,
                     "ci": (float(ci.low), float(ci.high)) if ci else (math.nan, math.nan)})
    return rows


def compare_with_reference(readings: Sequence[Reading], question: str, methods: Sequence[str], reference: str,
                           confidence: float = 0.95, n_resamples: int = 9999,
                           seed: Optional[int] = 0) -> List[Dict[str, Any]]:
    """Each method against ``reference`` on the cases both were read on (see the module docstring)."""
    from scipy.stats import false_discovery_control, wilcoxon

    cases, readers = _cases_and_readers(readings)
    ref = score_matrix(readings, question, reference, cases, readers)
    rows = []
    for method in methods:
        if method == reference:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # cases without a common reader: NaN, dropped
            d = np.nanmean(score_matrix(readings, question, method, cases, readers) - ref, axis=1)
        d = d[np.isfinite(d)]
        row: Dict[str, Any] = {"method": method, "reference": reference, "n_cases": int(d.size)}
        if d.size < 2:
            row.update(mean_difference=float(d.mean()) if d.size else math.nan, ci=(math.nan, math.nan),
                       p_wilcoxon=math.nan, note="fewer than 2 cases read with both methods by one reader")
            rows.append(row)
            continue
        if np.all(d == 0):
            p, note = 1.0, "every paired difference is 0"
        else:
            p, note = float(wilcoxon(d).pvalue), ""
        diff = paired_difference(d, np.zeros_like(d), confidence=confidence, n_resamples=n_resamples, seed=seed)
        row.update(mean_difference=diff["mean_difference"], ci=(diff["ci_low"], diff["ci_high"]),
                   ci_method=diff["method"], p_wilcoxon=p, note=note or diff["note"],
                   verdict=_verdict(diff["ci_low"], diff["ci_high"]))
        rows.append(row)
    tested = [r for r in rows if math.isfinite(r["p_wilcoxon"])]
    if tested:
        adjusted = false_discovery_control([r["p_wilcoxon"] for r in tested])
        for r, q in zip(tested, np.atleast_1d(adjusted)):
            r["p_adjusted"] = float(q)
    return rows


def reader_agreement(readings: Sequence[Reading], question: str, kind: str = "scale",
                     values: Optional[Sequence[Any]] = None, unit: str = "item") -> Dict[str, Any]:
    """Agreement between readers on ``question`` over the units (items) they read in common.

    Args:
        kind: ``"scale"`` (ordinal: quadratic-weighted kappa, ordinal alpha) or ``"nominal"``.
        values: the possible answers in order (e.g. 1..5, or ["no", "yes"]).

    Returns:
        ``{"n_readers", "n_units", "kappa", "kappa_pairs", "alpha", "level"}``; kappa is Cohen's for
        two readers, the mean of the pairwise ones for more; NaN where undefined (e.g. one reader
        gave a single answer to everything).
    """
    try:
        import krippendorff
        from sklearn.metrics import cohen_kappa_score
    except ImportError as exc:
        raise ImportError(f"the reader-study analysis needs {exc.name}: "
                          'python -m pip install "QHQGANLib[reading]"') from None

    readers = sorted({r["reader"] for r in readings if r.get(question) not in (None, "")})
    units = sorted({r[unit] for r in readings if r.get(question) not in (None, "")})
    if values is None:
        values = sorted({r[question] for r in readings if r.get(question) not in (None, "")})
    code = {v: i for i, v in enumerate(values)}
    data = np.full((len(readers), len(units)), np.nan)
    ri, ui = {r: i for i, r in enumerate(readers)}, {u: j for j, u in enumerate(units)}
    for r in readings:
        if r.get(question) not in (None, "") and r[question] in code:
            data[ri[r["reader"]], ui[r[unit]]] = code[r[question]]
    level = "ordinal" if kind == "scale" else "nominal"
    out: Dict[str, Any] = {"n_readers": len(readers), "n_units": len(units), "level": level,
                           "kappa": math.nan, "kappa_pairs": [], "alpha": math.nan}
    if len(readers) < 2:
        out["note"] = "agreement needs at least two readers"
        return out
    if np.unique(data[~np.isnan(data)]).size < 2:
        out["note"] = "every reading gave the same answer: agreement is undefined"
        return out
    weights = "quadratic" if kind == "scale" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in itertools.combinations(range(len(readers)), 2):
            both = ~np.isnan(data[a]) & ~np.isnan(data[b])
            kappa = math.nan
            if both.sum() >= 2:
                kappa = float(cohen_kappa_score(data[a, both].astype(int), data[b, both].astype(int),
                                                weights=weights, labels=list(range(len(values)))))
            out["kappa_pairs"].append({"readers": (readers[a], readers[b]), "n_units": int(both.sum()),
                                       "kappa": kappa})
        finite = [p["kappa"] for p in out["kappa_pairs"] if math.isfinite(p["kappa"])]
        out["kappa"] = float(np.mean(finite)) if finite else math.nan
        try:
            out["alpha"] = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                                    value_domain=list(range(len(values)))))
        except (ValueError, ZeroDivisionError) as exc:  # e.g. a single answer value overall
            out["note"] = f"Krippendorff's alpha undefined: {exc}"
    out["kappa_weights"] = weights or "none"
    return out


def preference_rates(readings: Sequence[Reading], methods: Sequence[str],
                     confidence: float = 0.95) -> List[Dict[str, Any]]:
    """For each pair of methods shown together: readings preferring the first, rate, Wilson CI, binomial p."""
    from scipy.stats import binomtest

    rows = []
    for a, b in itertools.combinations(methods, 2):
        shown = [r for r in readings if {r.get("left"), r.get("right")} == {a, b} and r.get("preferred")]
        n = len(shown)
        if not n:
            continue
        k = sum(r["preferred"] == a for r in shown)
        test = binomtest(k, n, 0.5)
        ci = test.proportion_ci(confidence, method="wilson")
        rows.append({"method_a": a, "method_b": b, "n_readings": n, "n_cases": len({r["case"] for r in shown}),
                     "a_preferred": k, "rate_a": k / n, "ci": (float(ci.low), float(ci.high)),
                     "p_binomial": float(test.pvalue),
                     "verdict": f"{a} preferred" if ci.low > 0.5 else f"{b} preferred" if ci.high < 0.5
                     else "no measurable preference"})
    return rows


def analyze_readings(data: Mapping[str, Any], reference: Optional[str] = None, confidence: float = 0.95,
                     n_resamples: int = 9999, seed: Optional[int] = 0) -> Dict[str, Any]:
    """Every statistic of the module for the readings of one study (``load_readings``'s result)."""
    readings, methods = list(data["readings"]), list(data["methods"])
    if not readings:
        raise ValueError("no answered items yet: nothing to analyse")
    check_readings(readings, data["questions"])
    if reference is None:
        reference = data.get("reference") or next((m for m in ("low-dose", "normal-dose") if m in methods),
                                                  methods[0])
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not in this study ({', '.join(methods)})")
    readers = sorted({r["reader"] for r in readings})
    out: Dict[str, Any] = {"mode": data["mode"], "methods": methods, "reference": reference, "readers": readers,
                           "n_readings": len(readings), "n_cases": len({r["case"] for r in readings}),
                           "n_items": data.get("n_items"), "confidence": confidence,
                           "skipped_rows": data.get("skipped_rows", 0), "questions": {}, "preferences": []}
    for q in data["questions"]:
        key = q["key"]
        if q["type"] == "scale":
            scale = list(range(q["min"], q["max"] + 1))
            out["questions"][key] = {
                "text": q["text"], "type": "scale", "min": q["min"], "max": q["max"],
                "summary": score_summary(readings, key, methods, confidence, n_resamples, seed),
                "comparisons": compare_with_reference(readings, key, methods, reference, confidence,
                                                      n_resamples, seed),
                "agreement": reader_agreement(readings, key, "scale", scale)}
        elif q["type"] == "yesno":
            out["questions"][key] = {"text": q["text"], "type": "yesno",
                                     "summary": proportion_summary(readings, key, methods, confidence),
                                     "agreement": reader_agreement(readings, key, "nominal", ["no", "yes"])}
        elif q["type"] == "choice":
            out["preferences"] = preference_rates(readings, methods, confidence)
            out["questions"][key] = {"text": q["text"], "type": "choice",
                                     "agreement": reader_agreement(readings, key, "nominal", q["choices"])}
    return out


def check_readings(readings: Sequence[Reading], questions: Sequence[Mapping[str, Any]]) -> None:
    """Refuse (ValueError, one line naming the reader, item and value) a reading off its question's scale
    (a 1-5 question answered 99, 3.5 or "four"; yes/no answered "maybe"; a choice not offered) and a
    reader who read one item twice (each reading would count)."""
    seen = set()
    for r in readings:
        who = f"reader {r.get('reader')}, item {r.get('item')}"
        if r.get("item") is not None:
            if (r.get("reader"), r["item"]) in seen:
                raise ValueError(f"{who}: read twice; one reading per reader and item")
            seen.add((r.get("reader"), r["item"]))
        for q in questions:
            value = r.get(q["key"])
            if value is None or (isinstance(value, str) and not value):
                continue
            if q["type"] == "scale":
                ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
                    and math.isfinite(value) and float(value).is_integer() and q["min"] <= value <= q["max"]
                if not ok:
                    raise ValueError(f"{who}: {q['text']}: a whole number from {q['min']} to {q['max']}, "
                                     f"got {value!r}")
            elif q["type"] == "yesno" and value not in ("yes", "no"):
                raise ValueError(f"{who}: {q['text']}: yes or no, got {value!r}")
            elif q["type"] == "choice" and value not in q.get("choices", ()):
                raise ValueError(f"{who}: {q['text']}: one of {q.get('choices')}, got {value!r}")


def _cases_and_readers(readings: Sequence[Reading]) -> Tuple[List[str], List[str]]:
    return sorted({r["case"] for r in readings}), sorted({r["reader"] for r in readings})


def _verdict(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high:
        return "no measurable difference"
    return "higher than the reference" if low > 0 else "lower than the reference"
