"""Fidelity, diversity and memorization metrics of synthetic slices, on known inputs.

Real CT: pydicom's CT_small.dcm (always available) and the abdomen CT of ../shared/data
(resized to 64x64; the tests that need it skip when it is absent). Identical sets must
give distances ~0, shifted/blurred/noisy sets clearly larger ones.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_path

from QHQGANLib import read_volume
from QHQGANLib.metrics import synthetic as sm


@pytest.fixture(scope="module")
def abdomen():
    """96 axial slices of the abdomen CT, 64x64, in HU: (train = even, held-out = odd)."""
    from skimage.transform import resize

    volume = read_volume(shared_path("abdomen-ct-totalseg/example_ct.nii.gz"))
    slices = np.stack([resize(s.astype(np.float64), (64, 64), order=1, anti_aliasing=True, preserve_range=True)
                       for s in volume.array[10:106]])
    return slices[0::2], slices[1::2]


@pytest.fixture(scope="module")
def abdomen_features(abdomen):
    train, heldout = abdomen
    return sm.radiomic_features(train), sm.radiomic_features(heldout)


@pytest.fixture
def ct_small(ct_small_path):
    return read_volume(ct_small_path).array.astype(np.float64)


# --- features ---------------------------------------------------------------
def test_radiomic_features_on_known_inputs(ct_small):
    names = list(sm.FEATURE_NAMES)
    f = sm.radiomic_features(ct_small)
    assert f.shape == (1, len(names)) and np.all(np.isfinite(f))
    values = ct_small[0]
    assert f[0, names.index("mean")] == pytest.approx(values.mean())
    assert f[0, names.index("std")] == pytest.approx(values.std())
    assert f[0, names.index("p50")] == pytest.approx(np.median(values))

    shifted = sm.radiomic_features(ct_small + 100.0)[0]
    for name in ("mean", "p10", "p50", "p90"):
        assert shifted[names.index(name)] == pytest.approx(f[0, names.index(name)] + 100.0)
    for name in ("std", "skewness", "kurtosis"):
        assert shifted[names.index(name)] == pytest.approx(f[0, names.index(name)])

    flat = sm.radiomic_features(np.full((2, 32, 32), 40.0))
    assert np.all(np.isfinite(flat))
    assert flat[0, names.index("std")] == 0 and flat[0, names.index("entropy")] == 0
    assert flat[0, names.index("glcm_contrast_d1")] == 0 and flat[0, names.index("glcm_homogeneity_d2")] == 1
    assert flat[0, names.index("gradient_mean")] == pytest.approx(0, abs=1e-9)

    # a mask restricts the statistics to its pixels
    mask = values > -200  # the body, without air
    masked = sm.radiomic_features(ct_small, mask)[0]
    assert masked[names.index("mean")] == pytest.approx(values[mask].mean())
    assert masked[names.index("p10")] == pytest.approx(np.percentile(values[mask], 10))
    assert not np.allclose(masked, f[0])

    with pytest.raises(ValueError, match="NaN"):
        sm.radiomic_features(np.where(np.eye(32, dtype=bool), np.nan, 0.0))


# --- distances on feature sets with known answers ------------------------------
def test_frechet_distance_matches_the_closed_form():
    import scipy.linalg

    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real)
    assert sm.frechet_distance(a, b, standardize=False) == pytest.approx(reference, rel=1e-6)
    assert sm.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    # standardised with the real set's statistics: independent of feature units
    assert sm.frechet_distance(a * 1000, b * 1000) == pytest.approx(sm.frechet_distance(a, b), rel=1e-6)
    # fewer samples than features (singular covariances): still real and >= 0
    assert sm.frechet_distance(a[:4], a[:4]) == pytest.approx(0, abs=1e-6)


def test_kid_is_unbiased_and_detects_a_shift():
    rng = np.random.default_rng(2)
    real, same = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    mean, std = sm.kid(real, same, subset_size=100, n_subsets=50, seed=0)
    assert std > 0 and abs(mean) < 3 * std
    shifted_mean, _ = sm.kid(real, same + 1.0, subset_size=100, n_subsets=50, seed=0)
    assert shifted_mean > 20 * max(abs(mean), std)
    assert sm.kid(real, same, 100, 5, seed=3) == sm.kid(real, same, 100, 5, seed=3)  # seeded

    # one subset holding the whole sets equals the direct unbiased MMD^2
    x, y = real[:50], same[:50] + 0.3
    mu, sd = x.mean(0), x.std(0)
    xs, ys = (x - mu) / sd, (y - mu) / sd
    k = lambda p, q: (p @ q.T / p.shape[1] + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(xs, xs), k(ys, ys), k(xs, ys)
    direct = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (50 * 49) - 2 * kxy.mean()
    assert sm.kid(x, y, subset_size=50, n_subsets=1)[0] == pytest.approx(direct, rel=1e-9)


def test_precision_recall_density_coverage_on_known_sets():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 5))
    assert sm.precision_recall(real, real, k=5) == (1.0, 1.0)
    density, coverage = sm.density_coverage(real, real, k=5)
    assert coverage == 1.0 and density >= 1.0
    far = real + 50.0
    assert sm.precision_recall(real, far, k=5) == (0.0, 0.0)
    assert sm.density_coverage(real, far, k=5) == (0.0, 0.0)
    # a collapsed generator: precise (inside the real manifold) but with poor recall and coverage
    collapsed = real[:5].repeat(40, axis=0)
    precision, recall = sm.precision_recall(real, collapsed, k=5)
    assert precision == 1.0 and recall < 0.3
    assert sm.density_coverage(real, collapsed, k=5)[1] < 0.3
    with pytest.raises(ValueError, match="k must be"):
        sm.precision_recall(real[:3], real[:3], k=5)


# --- real CT -----------------------------------------------------------------
@pytest.mark.shared_data
def test_fidelity_on_real_ct_identical_vs_altered_sets(abdomen, abdomen_features):
    from scipy.ndimage import gaussian_filter

    train, heldout = abdomen
    f_train, f_heldout = abdomen_features
    assert sm.frechet_distance(f_heldout, f_heldout) == pytest.approx(0, abs=1e-6)
    assert sm.precision_recall(f_heldout, f_heldout) == (1.0, 1.0)
    frd_real = sm.frechet_distance(f_heldout, f_train)  # neighbouring slices: close, not identical
    kid_same = sm.kid(f_heldout, f_heldout, subset_size=24, n_subsets=20, seed=0)[0]
    kid_real = sm.kid(f_heldout, f_train, subset_size=24, n_subsets=20, seed=0)[0]

    rng = np.random.default_rng(0)
    altered = {
        "+200 HU": train + 200.0,
        "blurred": np.stack([gaussian_filter(s, 1.5) for s in train]),
        "noise": train + rng.normal(scale=60.0, size=train.shape),
    }
    for name, slices in altered.items():
        f = sm.radiomic_features(slices)
        frd = sm.frechet_distance(f_heldout, f)
        kid_mean = sm.kid(f_heldout, f, subset_size=24, n_subsets=20, seed=0)[0]
        precision, _ = sm.precision_recall(f_heldout, f)
        assert frd > 50 * max(frd_real, 1e-3), name
        assert kid_mean > 50 * max(abs(kid_same), abs(kid_real), 1e-3), name
        assert precision < 0.5, name


@pytest.mark.shared_data
def test_hu_histogram_wasserstein(abdomen, ct_small):
    train, heldout = abdomen
    assert sm.hu_histogram_wasserstein(train, train) == 0.0
    assert sm.hu_histogram_wasserstein(train, train + 100.0) == pytest.approx(100.0, abs=1e-6)
    # subsampled (seeded) when large: still ~100
    assert sm.hu_histogram_wasserstein(train, train + 100.0, max_values=20_000) == pytest.approx(100.0, abs=15)
    assert sm.hu_histogram_wasserstein(ct_small, ct_small - 100.0) == pytest.approx(100.0, abs=1e-6)


@pytest.mark.shared_data
def test_memorization_copy_and_noise(abdomen):
    train, heldout = abdomen
    rng = np.random.default_rng(4)
    noise = rng.uniform(-1000, 1000, size=(3, 64, 64))
    copy = sm.memorization(train[[7, 20]], train)
    assert np.allclose(copy["ssim"], 1.0) and list(copy["nearest"]) == [7, 20]
    assert copy["max"] == pytest.approx(1.0)
    assert copy["fraction_above_0.9"] == 1.0 and copy["fraction_above_0.95"] == 1.0

    unrelated = sm.memorization(noise, train)
    assert unrelated["max"] < 0.3
    assert unrelated["fraction_above_0.9"] == 0.0 and unrelated["fraction_above_0.95"] == 0.0

    mixed = sm.memorization(np.concatenate([train[[3]], noise]), train)
    assert mixed["fraction_above_0.9"] == pytest.approx(0.25)
    # the L2 prefilter finds the same nearest slices as the exhaustive search here
    exhaustive = sm.memorization(heldout[:6], train, top_k=None)
    prefiltered = sm.memorization(heldout[:6], train, top_k=10)
    assert np.allclose(exhaustive["ssim"], prefiltered["ssim"])


@pytest.mark.shared_data
def test_diversity_ms_ssim(abdomen, ct_small):
    train, _ = abdomen
    assert sm.ms_ssim_scales(64, 64) == 3 and sm.ms_ssim_scales(128, 128) == 4
    identical = np.repeat(train[:1], 8, axis=0)
    assert sm.diversity_ms_ssim(identical, n_pairs=20, seed=0) == pytest.approx(1.0, abs=1e-4)
    varied = sm.diversity_ms_ssim(train, n_pairs=40, seed=0)
    assert varied < 0.9
    noise = np.random.default_rng(5).uniform(-1000, 1000, size=(8, 64, 64))
    assert sm.diversity_ms_ssim(noise, n_pairs=20, seed=0) < varied
    assert sm.diversity_ms_ssim(train, n_pairs=40, seed=0) == varied  # seeded
    # 128x128 (4 scales) works too
    assert sm.diversity_ms_ssim(np.repeat(ct_small, 3, axis=0), n_pairs=3) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.shared_data
def test_fid_inception_is_never_downloaded(abdomen):
    train, heldout = abdomen
    result = sm.fid_inception(train[:4], heldout[:4])
    if result["fid"] is None:
        assert result["reason"] and "nothing is downloaded" in result["reason"]
    else:  # torchvision and the weights are on this machine
        assert result["fid"] >= 0


@pytest.mark.shared_data
def test_evaluate_synthetic_report(abdomen):
    train, heldout = abdomen
    samples = np.concatenate([train[:4], heldout[:12] + np.random.default_rng(6).normal(scale=20, size=(12, 64, 64))])
    report = sm.evaluate_synthetic(samples, heldout, train, seed=0, kid_subsets=10, n_pairs=20,
                                   c2st_options={"epochs": 2, "min_steps": 10})  # a cheap C2ST: keys only
    json.dumps(report)  # JSON-friendly
    for key in ("frd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "hu_wasserstein",
                "diversity_samples", "diversity_real"):
        assert isinstance(report[key], float), key
    assert report["n_samples"] == 16 and report["n_real"] == 48
    assert report["memorization"]["max"] == pytest.approx(1.0)  # 4 samples are training copies
    assert report["memorization"]["fraction_above_0.95"] >= 0.25
    assert len(report["memorization"]["ssim"]) == 16
    assert 0 <= report["memorization_heldout_reference"]["max"] <= 1
    assert report["fid_inception"] is None or report["fid_inception"] >= 0
    assert "scikit-image" in report["settings"]["features"]
    # the classifier two-sample test: 16 samples vs 16 of the 48 held-out slices, 24 vs 24 halves for the reference
    assert 0.0 <= report["c2st_accuracy"] <= 1.0 and 0.0 <= report["c2st_reference"] <= 1.0
    assert report["c2st"]["n_per_class"] == 16 and report["c2st"]["reference"]["n_per_class"] == 24
    assert report["c2st_reason"] is None
    without = sm.evaluate_synthetic(samples, heldout, seed=0, kid_subsets=2, n_pairs=5, c2st=False)
    assert without["memorization"] is None
    assert without["c2st_accuracy"] is None and without["c2st_reference"] is None and without["c2st"] is None
    # too few slices for 5 folds: no C2ST, and the reason
    few = sm.evaluate_synthetic(samples[:4], heldout, seed=0, kid_subsets=2, n_pairs=5)
    assert few["c2st_accuracy"] is None and "at least 5 slices" in few["c2st_reason"]


def test_feature_scaler_from_all_real_slices_keeps_one_feature_from_dominating(abdomen, abdomen_features):
    train_feat, held_feat = abdomen_features
    small = held_feat[:6]  # a small held-out set: some features barely vary within it
    mu, sd = sm.feature_scaler(np.concatenate([small, train_feat]))
    # the distance of the real training slices to the small held-out set: with the small set's own
    # scale it is inflated by the features it happens not to spread; with all real slices it is not
    alone = sm.frechet_distance(small, train_feat)
    pooled = sm.frechet_distance(small, train_feat, standardize=(mu, sd))
    assert pooled < alone
    assert sm.frechet_distance(small, small, standardize=(mu, sd)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="scaler"):
        sm.frechet_distance(small, small, standardize=(mu[:3], sd[:3]))


def test_evaluate_synthetic_reports_the_real_to_real_reference(abdomen):
    train, heldout = abdomen
    copies = sm.evaluate_synthetic(train, heldout, train, seed=0, kid_subsets=5, n_pairs=10, c2st=False)
    # samples that are the training slices score exactly the real-to-real reference
    assert copies["frd"] == pytest.approx(copies["frd_real_reference"])
    noisy = train + np.random.default_rng(1).normal(scale=60, size=train.shape)
    worse = sm.evaluate_synthetic(noisy, heldout, train, seed=0, kid_subsets=5, n_pairs=10, c2st=False)
    assert worse["frd"] > 3 * copies["frd_real_reference"]
    assert worse["frd_real_reference"] == pytest.approx(copies["frd_real_reference"])
