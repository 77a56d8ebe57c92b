"""Paired bootstrap comparisons and per-seed summaries (``metrics/statistics.py``).

The synthetic data mimic a benchmark: per-slice PSNR values that vary a lot between slices
(30 +- 3 dB: easy and hard slices) and two methods whose scores on the same slice differ by
a small amount plus measurement scatter. Coverage is measured by simulation: over 200
independent data sets the 95 % interval must contain the true difference about 95 % of the
time -- neither much less (overconfident: false "better" verdicts) nor ~always (uselessly wide).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from QHQGANLib.metrics.statistics import (PAIRED_HEADER, SEED_HEADER, markdown_row, paired_difference,
                                          patient_interval, seed_difference, seed_summary, t_interval)


def _psnr_pairs(rng: np.random.Generator, n: int, shift: float, scatter: float = 0.5):
    slice_difficulty = rng.normal(30.0, 3.0, n)
    return slice_difficulty + shift + rng.normal(0, scatter, n), slice_difficulty + rng.normal(0, scatter, n)


def test_large_known_shift_is_found_and_bracketed():
    rng = np.random.default_rng(1)
    a, b = _psnr_pairs(rng, 30, shift=1.0)
    r = paired_difference(a, b)
    assert r["n"] == 30 and r["method"] == "BCa" and r["confidence"] == 0.95
    assert r["mean_difference"] == pytest.approx(float(np.mean(a - b)))
    assert 0 < r["ci_low"] < 1.0 < r["ci_high"]
    assert r["verdict"] == "A better"
    # a lower-is-better figure (e.g. RMSE) with the same numbers: B is the better method
    assert paired_difference(a, b, higher_is_better=False)["verdict"] == "B better"
    assert paired_difference(b, a)["verdict"] == "B better"
    # the interval agrees with the classical t interval of the mean difference for normal data
    d = a - b
    half_t = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    assert (r["ci_high"] - r["ci_low"]) / (2 * half_t) == pytest.approx(1.0, abs=0.15)
    # pairing matters: the slice-to-slice spread (3 dB) swamps a 1 dB shift in an unpaired view
    assert stats.ttest_ind(a, b).pvalue > 0.05


def test_seeded_and_wider_at_higher_confidence():
    a, b = _psnr_pairs(np.random.default_rng(2), 20, shift=0.3)
    assert paired_difference(a, b, seed=4) == paired_difference(a, b, seed=4)
    r95, r99 = paired_difference(a, b), paired_difference(a, b, confidence=0.99)
    assert r99["ci_low"] < r95["ci_low"] and r99["ci_high"] > r95["ci_high"]
    pct = paired_difference(a, b, method="percentile")
    assert pct["method"] == "percentile" and pct["ci_low"] < pct["mean_difference"] < pct["ci_high"]


def test_zero_shift_gives_no_measurable_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(2024)
    verdicts = [paired_difference(*_psnr_pairs(rng, 30, shift=0.0), seed=i)["verdict"] for i in range(200)]
    rate = verdicts.count("no measurable difference") / len(verdicts)
    # nominal 0.95; binomial sd over 200 sets is 0.015 and BCa at n=30 undercovers slightly (~0.94)
    assert 0.90 <= rate <= 0.985, rate
    wrong = verdicts.count("A better"), verdicts.count("B better")
    assert abs(wrong[0] - wrong[1]) <= 8  # false alarms fall on both sides


def test_coverage_of_a_skewed_true_difference():
    """Exponential (skewed) differences of mean 0.3: the interval holds 0.3 in ~92 % (measured over 2000)."""
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(200):
        base = rng.normal(30.0, 3.0, 30)
        diff = rng.exponential(1.0, 30) - 0.7
        r = paired_difference(base + diff, base, seed=i, n_resamples=4000)
        hits += r["ci_low"] <= 0.3 <= r["ci_high"]
    assert 0.87 <= hits / 200 <= 0.985


def test_degenerate_differences_give_a_clear_result():
    same = [31.2, 29.8, 33.0, 30.4]
    r = paired_difference(same, same)
    assert r["method"] == "degenerate" and "equal" in r["note"]
    assert (r["mean_difference"], r["ci_low"], r["ci_high"]) == (0.0, 0.0, 0.0)
    assert r["verdict"] == "no measurable difference"
    up = paired_difference(np.add(same, 0.5), same)  # every slice exactly 0.5 dB better
    assert up["ci_low"] == pytest.approx(0.5) and up["ci_high"] == pytest.approx(0.5)
    assert up["verdict"] == "A better" and up["method"] == "degenerate"
    assert "n/a" not in markdown_row("constant", up)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [2.0])
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [0.0, 0.5], confidence=95)
    with pytest.raises(ValueError, match="method"):
        paired_difference([1.0, 2.0], [0.0, 0.5], method="jackknife")
    with pytest.raises(ValueError, match="1D"):
        paired_difference([[1.0, 2.0]], [[0.0, 0.5]])


def test_seed_summary_and_markdown_rows():
    s = seed_summary([31.2, 31.5, 30.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(31.2) and s["std"] == pytest.approx(0.3)
    assert (s["min"], s["max"]) == (30.9, 31.5)
    assert markdown_row("hqgan-enhance, PSNR (dB)", s) == "| hqgan-enhance, PSNR (dB) | 3 | 31.20 | 0.30 | 30.90 | 31.50 |"
    one = seed_summary([30.0])
    assert math.isnan(one["std"]) and markdown_row("one seed", one).count("n/a") == 1
    with pytest.raises(ValueError):
        seed_summary([])
    for header, row in ((SEED_HEADER, markdown_row("x", s)),
                        (PAIRED_HEADER, markdown_row("a|b", paired_difference([3.0, 4.0, 5.5], [1.0, 1.5, 2.0])))):
        n_columns = header.splitlines()[0].count("|")
        assert row.count("|") == n_columns and row.startswith("| ") and row.endswith(" |")
    paired = markdown_row("A vs B", paired_difference([3.0, 4.0, 5.5], [1.0, 1.5, 2.0]))
    assert "| 3 | +2.67 |" in paired and "(95 % BCa)" in paired and paired.endswith("| A better |")
    with pytest.raises(ValueError):
        markdown_row("?", {"foo": 1})


def test_seed_difference_is_welchs_interval_and_covers_the_truth():
    """Three seeds per method (the benchmarks' case): the interval is Welch's, written out by hand
    (Welch-Satterthwaite degrees of freedom), and over 300 simulated pairs of runs with unequal
    spreads it contains the true difference about 95 % of the time."""
    a, b = [199.0, 184.0, 208.0], [171.0, 169.0, 174.0]  # FRD per seed: lower is better
    r = seed_difference(a, b, higher_is_better=False)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert r["mean_difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((r["mean_difference"] - half, r["mean_difference"] + half))
    assert r["verdict"] == "no measurable difference"  # 3 seeds with a spread of 12: the 26 apart is not shown
    far = seed_difference([250.0, 252.0, 251.0], b, higher_is_better=False)
    assert far["verdict"] == "B better" and far["ci_low"] > 0
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(300):
        x, y = rng.normal(10.0, 2.0, 3), rng.normal(8.0, 0.5, 4)
        d = seed_difference(x, y)
        hits += d["ci_low"] <= 2.0 <= d["ci_high"]
    assert 0.90 <= hits / 300 <= 0.99
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_difference([1.0], [2.0, 3.0])


# --- patients as the unit (issue #27 item 2), at the structure of BENCHMARKS.md "realnoise" -------------
#: slices per evaluation patient there: 99000 three near-copy slices, Lung_Dx-A0002 ten slices in two
#: kernels (20 near copies), the other three patients one slice each; three training seeds per method
REALNOISE_SLICES = {"99000": 3, "LCTSC-Test-S1-101": 1, "PANCREAS_0001": 1, "CQ500-CT-310": 1, "Lung_Dx-A0002": 20}


def _benchmark_like(rng, true_gain=0.5, patient_sd=1.0, seed_sd=0.3, slice_sd=0.15, slice_corr=0.95, seeds=3,
                    skewed=False):
    """Per-slice gains: true gain + patient effect (the dominant term: +3.7 vs +0.3 dB in the issue) +
    a patient-by-seed term + slice scatter that is mostly shared within a patient (near copies)."""
    values, patients, runs = [], [], []
    for patient, n in REALNOISE_SLICES.items():
        u = rng.exponential(patient_sd) - patient_sd if skewed else rng.normal(0, patient_sd)
        for seed in range(seeds):
            shared = rng.normal(0, slice_sd * math.sqrt(slice_corr))
            own = rng.normal(0, slice_sd * math.sqrt(1 - slice_corr), n)
            values += list(true_gain + u + rng.normal(0, seed_sd) + shared + own)
            patients += [patient] * n
            runs += [seed] * n
    return np.array(values), patients, runs


def _coverage(n_sets, **kw):
    rng = np.random.default_rng(2026)
    by_patient = by_slice = 0
    for _ in range(n_sets):
        values, patients, runs = _benchmark_like(rng, **kw)
        r = patient_interval(values, patients, runs)
        by_patient += r["ci_low"] <= 0.5 <= r["ci_high"]
        _, low, high = t_interval(values)  # slices (and seeds) treated as independent items
        by_slice += low <= 0.5 <= high
    return by_patient / n_sets, by_slice / n_sets


def test_patient_interval_covers_at_the_benchmarks_structure_where_a_slice_interval_does_not():
    """Measured over 4000 sets: 0.948 by patient, 0.12 by slice. The procedure the benchmarks use holds
    its 95 %; treating the 26 near-copy slices (x 3 seeds) as independent would claim a precision that
    is not there (the issue's n = 6 simulation gave 70 %)."""
    by_patient, by_slice = _coverage(1500)
    assert 0.93 <= by_patient <= 0.97
    assert by_slice < 0.5


def test_patient_interval_with_skewed_patient_effects_is_somewhat_overconfident():
    """With 5 patients and exponential (skewed) patient effects the t interval covers ~0.90, not 0.95
    (4000 sets: 0.898): the reason BENCHMARKS.md says "not resolvable" rather than reading the edge of an
    interval as a difference."""
    by_patient, _ = _coverage(1500, skewed=True)
    assert 0.85 <= by_patient <= 0.94


def test_patient_interval_averages_slices_then_seeds_then_patients():
    # patient a: seed 0 slices (1, 3) -> 2, seed 1 slice (4) -> 4: patient mean 3; patient b: 1; c: -1
    r = patient_interval([1.0, 3.0, 4.0, 1.0, -1.0], ["a", "a", "a", "b", "c"], [0, 0, 1, 0, 0])
    assert r["patient_means"] == {"a": 3.0, "b": 1.0, "c": -1.0}
    assert r["mean"] == pytest.approx(1.0) and r["n_patients"] == 3 and r["ahead"] == 2
    half = stats.t.ppf(0.975, 2) * 2.0 / math.sqrt(3)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(1.0 - half), pytest.approx(1.0 + half))
    assert r["verdict"] == "not resolvable with 3 patients"
    clear = patient_interval([2.0, 2.2, 1.9, 2.1], ["a", "b", "c", "d"])
    assert clear["verdict"] == "A better"
    lower = patient_interval([2.0, 2.2, 1.9, 2.1], ["a", "b", "c", "d"], higher_is_better=False)
    assert lower["verdict"] == "B better" and lower["ahead"] == 0
    one = patient_interval([0.4, 0.6], ["a", "a"])
    assert one["n_patients"] == 1 and math.isnan(one["ci_low"]) and one["verdict"] == "not resolvable with 1 patient"
    with pytest.raises(ValueError, match="equal lengths"):
        patient_interval([1.0, 2.0], ["a"])
