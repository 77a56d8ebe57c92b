"""Tests of the physics of QHQGANLib.physics.lowdose: noise law, mean preservation, electronic
noise under photon starvation, exactness at full dose, geometry of degrade_resolution,
and an integration test on real CT (skipped when ../shared/data is absent)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from QHQGANLib.physics.lowdose import Cancelled, ScannerModel, _ParallelBeam, simulate_low_dose
from QHQGANLib.physics.resolution import degrade_resolution
from QHQGANLib.core.volume import Volume

from conftest import shared_path


def cylinder(n=256, px=1.0, diameter=220.0, hu=0.0, nz=3, background=-1000.0):
    """Uniform disk of `hu` in air, repeated over nz slices; also returns the radius map (mm)."""
    c = (np.arange(n) - (n - 1) / 2.0) * px
    r = np.hypot(c[None, :], c[:, None])
    sl = np.where(r < diameter / 2.0, hu, background).astype(np.float32)
    return Volume(np.repeat(sl[None], nz, axis=0), spacing=(px, px, 2.0), origin=(-10.0, 5.0, 30.0)), r


def roi_noise(out: Volume, ref: Volume, mask: np.ndarray) -> float:
    """Std of the inserted noise (out - ref) in a 2D mask, averaged (in variance) over slices."""
    d = out.array.astype(np.float64) - ref.array
    return float(np.sqrt(np.mean([d[k][mask].var() for k in range(d.shape[0])])))


QUANTUM_ONLY = ScannerModel(electronic_noise_var=0.0, n_views=360)
#: A fixed photon count (no calibration to the input's own noise; these phantoms have none):
#: the physics law itself is tested here, the calibration in test_lowdose_calibration.py.
FIXED = 1e6


# --- physics ---------------------------------------------------------------------------

def test_noise_grows_like_sqrt_inverse_dose_minus_one_in_water():
    vol, r = cylinder(diameter=220.0, hu=0.0, nz=3)
    roi = r < 40.0
    sig = {}
    for a in (0.5, 0.25, 0.1):
        out = simulate_low_dose(vol, a, photons=FIXED, seed=11, scanner=QUANTUM_ONLY)
        sig[a] = roi_noise(out, vol, roi)
    normalised = {a: s / np.sqrt(1 / a - 1) for a, s in sig.items()}
    ref = normalised[0.5]
    print("noise std (HU):", sig, "sigma/sqrt(1/a-1):", normalised)
    for a, v in normalised.items():
        assert abs(v / ref - 1) < 0.15, (a, sig)
    assert sig[0.1] > sig[0.25] > sig[0.5] > 1.0


def test_full_dose_noise_level_scales_with_photons():
    vol, r = cylinder(diameter=220.0, nz=2)
    roi = r < 40.0
    s1 = roi_noise(simulate_low_dose(vol, 0.5, photons=FIXED, seed=1, scanner=QUANTUM_ONLY), vol, roi)
    s4 = roi_noise(simulate_low_dose(vol, 0.5, seed=1, scanner=QUANTUM_ONLY, photons=4e6), vol, roi)
    assert s1 / s4 == pytest.approx(2.0, rel=0.1)  # std ~ 1/sqrt(I0)


def test_mean_hu_preserved_in_soft_tissue():
    vol, r = cylinder(diameter=260.0, hu=40.0, nz=2)
    roi = r < 60.0
    for a in (0.25, 0.1):
        out = simulate_low_dose(vol, a, photons=FIXED, seed=5, scanner=ScannerModel(n_views=360))
        assert abs(float(out.array[:, roi].mean()) - 40.0) < 5.0
        assert abs(float(out.array[:, r > 150].mean()) + 1000.0) < 5.0  # air stays air


def test_electronic_noise_adds_more_noise_in_photon_starved_rays():
    # 340 mm of 300 HU tissue: ~300 counts per central ray at full dose, ~15 at 5 % dose
    vol, r = cylinder(n=256, px=1.5, diameter=340.0, hu=300.0, nz=2)
    roi = r < 40.0
    law = np.sqrt((1 / 0.05 - 1) / (1 / 0.5 - 1))
    ratios = {}
    for var_e in (0.0, 10.0):
        sc = ScannerModel(electronic_noise_var=var_e, n_views=360, incident_photons=1e6)
        hi = roi_noise(simulate_low_dose(vol, 0.5, photons=FIXED, seed=2, scanner=sc), vol, roi)
        lo = roi_noise(simulate_low_dose(vol, 0.05, photons=FIXED, seed=2, scanner=sc), vol, roi)
        ratios[var_e] = lo / hi
    print("std(5%)/std(50%):", ratios, "quantum law:", law)
    assert abs(ratios[0.0] / law - 1) < 0.15
    assert ratios[10.0] > 1.15 * law


def test_tube_current_modulation_reduces_noise_in_an_elliptical_body():
    """Same dose, photons moved to the lateral views (mA ~ sqrt(attenuation)): less noise and
    less photon-starvation bias in the centre of an oval body; a round one is unaffected."""
    n, px = 256, 1.6
    c = (np.arange(n) - (n - 1) / 2.0) * px
    inside = (c[None, :] / 190.0) ** 2 + (c[:, None] / 110.0) ** 2 < 1  # 380 x 220 mm oval
    sl = np.where(inside, 40.0, -1000.0).astype(np.float32)
    vol = Volume(np.repeat(sl[None], 2, 0), spacing=(px, px, 2.0))
    roi = np.hypot(c[None, :], c[:, None]) < 40
    res = {}
    for m in (0.0, 0.5):
        sc = ScannerModel(n_views=360, tube_current_modulation=m)
        out = simulate_low_dose(vol, 0.1, photons=FIXED, seed=8, scanner=sc)
        res[m] = (roi_noise(out, vol, roi), float(out.array[:, roi].mean()))
    print("oval, 10% dose, (noise, mean) without/with modulation:", res)
    assert res[0.5][0] < 0.95 * res[0.0][0]
    assert abs(res[0.5][1] - 40.0) < 5.0
    disk, r = cylinder(n=128, px=2.0, diameter=220.0, nz=1)
    a = simulate_low_dose(disk, 0.25, photons=FIXED,
                          seed=1, scanner=ScannerModel(n_views=180, tube_current_modulation=0))
    b = simulate_low_dose(disk, 0.25, photons=FIXED, seed=1, scanner=ScannerModel(n_views=180))
    assert roi_noise(b, disk, r < 50) == pytest.approx(roi_noise(a, disk, r < 50), rel=0.05)


def test_full_dose_returns_input_and_input_is_never_modified():
    vol, _ = cylinder(n=64, px=4.0, nz=2)
    vol.metadata["dicom"] = {"PatientID": "x"}
    before = vol.array.copy()
    same = simulate_low_dose(vol, 1.0, seed=0)
    np.testing.assert_array_equal(same.array, before)
    assert same.array is not vol.array and same.same_geometry(vol)
    low = simulate_low_dose(vol, 0.25, photons=FIXED, seed=0)
    np.testing.assert_array_equal(vol.array, before)
    assert low.same_geometry(vol) and low.array.dtype == np.float32
    assert "simulate_low_dose(dose_fraction=0.25" in low.metadata["history"][-1]
    assert "history" not in vol.metadata and low.metadata["dicom"] == {"PatientID": "x"}
    # near-full dose: tiny change (the noise vanishes continuously)
    near = simulate_low_dose(vol, 0.999, photons=FIXED, seed=0, scanner=ScannerModel(n_views=90))
    assert np.abs(near.array - before).max() < 20 and np.abs(near.array - before).std() < 1.0


def test_seeded_determinism():
    vol, _ = cylinder(n=64, px=4.0, nz=2)
    sc = ScannerModel(n_views=90)
    a = simulate_low_dose(vol, 0.25, photons=FIXED, seed=3, scanner=sc)
    b = simulate_low_dose(vol, 0.25, photons=FIXED, seed=3, scanner=sc)
    c = simulate_low_dose(vol, 0.25, photons=FIXED, seed=4, scanner=sc)
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)


def test_coarse_forward_projection_matches_exact_one():
    """The 2x-coarse projection that sets the noise variance agrees with ASTRA at full size,
    and the line integral through the cylinder's centre is mu_water x diameter."""
    vol, _ = cylinder(n=201, px=1.0, diameter=180.0, nz=1)  # odd size: padding path
    mu = np.clip(0.0192 * (1 + vol.array[0] / 1000.0), 0, None)
    exact = _ParallelBeam(201, 201, 180, "hann", 1).project_coarse(mu)
    coarse = _ParallelBeam(201, 201, 180, "hann", 2).project_coarse(mu)
    centre = exact.shape[1] // 2
    assert exact[:, centre].mean() == pytest.approx(0.0192 * 180.0, rel=0.01)
    inside = exact > 0.5
    assert np.median(np.abs(coarse - exact)[inside] / exact[inside]) < 0.01
    # same inserted-noise level either way
    vol2, r = cylinder(n=128, px=2.0, diameter=220.0, nz=2)
    sc = ScannerModel(n_views=180)
    s1 = roi_noise(simulate_low_dose(vol2, 0.25, photons=FIXED,
                                     seed=0, scanner=sc, projection_downsample=1), vol2, r < 50)
    s2 = roi_noise(simulate_low_dose(vol2, 0.25, photons=FIXED,
                                     seed=0, scanner=sc, projection_downsample=2), vol2, r < 50)
    assert s2 == pytest.approx(s1, rel=0.05)
    # non-square slices (rows != columns, odd sizes): the coarse grid stays aligned
    rect = Volume(vol2.array[:, 14:113, 4:124], spacing=(2.0, 2.0, 2.0))
    rr = r[14:113, 4:124] < 50
    s3 = roi_noise(simulate_low_dose(rect, 0.25, photons=FIXED, seed=0, scanner=sc, projection_downsample=1), rect, rr)
    s4 = roi_noise(simulate_low_dose(rect, 0.25, photons=FIXED, seed=0, scanner=sc), rect, rr)
    assert s4 == pytest.approx(s3, rel=0.05) and s3 == pytest.approx(s1, rel=0.1)
    mu_r = np.clip(0.0192 * (1 + rect.array[0] / 1000.0), 0, None)
    e_r = _ParallelBeam(99, 120, 90, "hann", 1).project_coarse(mu_r)
    c_r = _ParallelBeam(99, 120, 90, "hann", 2).project_coarse(mu_r)
    assert np.median(np.abs(c_r - e_r)[e_r > 0.5] / e_r[e_r > 0.5]) < 0.01


# --- callbacks, cancellation, validation -----------------------------------------------

def test_progress_is_monotonic_and_ends_at_one():
    vol, _ = cylinder(n=48, px=5.0, nz=4)
    seen = []
    simulate_low_dose(vol, 0.5, photons=FIXED,
                      seed=0, scanner=ScannerModel(n_views=60), progress=lambda f, m: seen.append((f, m)))
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[0] == 0.0 and fracs[-1] == 1.0 and len(fracs) == 5
    assert all(isinstance(m, str) for _, m in seen)
    seen.clear()
    degrade_resolution(vol, 2, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_cancel_before_and_during_a_slice():
    vol, _ = cylinder(n=48, px=5.0, nz=5)
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled, match="cancelled"):
        simulate_low_dose(vol, 0.5, photons=FIXED, cancel=ev)
    with pytest.raises(Cancelled):
        degrade_resolution(vol, 2, cancel=ev)

    class FlipsAfter:  # becomes set after n checks: inside the first slice
        def __init__(self, n):
            self.calls, self.n = 0, n

        def is_set(self):
            self.calls += 1
            return self.calls > self.n

    seen = []
    with pytest.raises(Cancelled):
        simulate_low_dose(vol, 0.5, photons=FIXED, cancel=FlipsAfter(2), progress=lambda f, m: seen.append(f),
                          scanner=ScannerModel(n_views=60))
    assert seen == [0.0]  # stopped before the first slice was finished
    # an Event set from the progress callback after slice 1: slice 2 never completes
    ev2, seen = threading.Event(), []

    def prog(f, m):
        seen.append(f)
        if f > 0:
            ev2.set()

    with pytest.raises(Cancelled):
        simulate_low_dose(vol, 0.5, photons=FIXED, cancel=ev2, progress=prog, scanner=ScannerModel(n_views=60))
    assert seen == [0.0, 0.2]


def test_invalid_inputs_raise_clear_errors():
    vol, _ = cylinder(n=32, px=5.0, nz=1)
    bad = vol.array.copy()
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        simulate_low_dose(vol.with_array(bad), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        degrade_resolution(vol.with_array(bad))
    for dose in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dose_fraction"):
            simulate_low_dose(vol, dose)
    with pytest.raises(ValueError, match="square"):
        simulate_low_dose(Volume(vol.array, spacing=(0.7, 0.9, 1.0)), 0.5)
    with pytest.raises(TypeError):
        simulate_low_dose(vol.array, 0.5)
    with pytest.raises(ValueError, match="incident_photons"):
        ScannerModel(incident_photons=0)
    with pytest.raises(ValueError, match="tube_current_modulation"):
        ScannerModel(tube_current_modulation=-1)
    with pytest.raises(ValueError, match="scale"):
        degrade_resolution(vol, 0)


# --- degrade_resolution ----------------------------------------------------------------

def _rotation():
    t = np.deg2rad(20.0)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def test_degrade_resolution_geometry():
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(0, 50, (3, 64, 48)).astype(np.float32), spacing=(0.7, 0.6, 2.5),
                 origin=(10.0, -20.0, 5.0), direction=_rotation())
    for scale in (2, 4):
        out = degrade_resolution(vol, scale)
        assert out.shape == (3, 64 // scale, 48 // scale)
        assert out.spacing == pytest.approx((0.7 * scale, 0.6 * scale, 2.5))
        lo, hi = vol.physical_extent()
        lo2, hi2 = out.physical_extent()
        np.testing.assert_allclose(lo2, lo, atol=1e-9)
        np.testing.assert_allclose(hi2, hi, atol=1e-9)
        # origin = centre of the first coarse voxel = centre of its first block
        expected = vol.index_to_physical(((scale - 1) / 2, (scale - 1) / 2, 0))
        np.testing.assert_allclose(out.origin, expected, atol=1e-9)
        np.testing.assert_allclose(out.origin, np.asarray(vol.origin) + vol.direction @ (
            (scale - 1) / 2 * np.array([0.7, 0.6, 0.0])), atol=1e-9)
        assert out.array.mean() == pytest.approx(vol.array.mean(), abs=0.5)
        assert "degrade_resolution(scale=" in out.metadata["history"][-1]
    # sizes not a multiple of the scale
    odd = Volume(np.zeros((1, 65, 49), np.float32), spacing=(1, 1, 1))
    assert degrade_resolution(odd, 2).shape == (1, 32, 24)
    assert degrade_resolution(odd, 2, remainder="pad").shape == (1, 33, 25)
    np.testing.assert_allclose(degrade_resolution(odd, 2).origin, (0.5, 0.5, 0.0))


def test_degrade_resolution_blurs_high_frequencies_and_keeps_the_mean():
    x = np.arange(64)
    edge = np.where(x < 32, -100.0, 100.0).astype(np.float32)  # sharp edge on a block border
    vol = Volume(np.broadcast_to(edge, (2, 64, 64)).copy(), spacing=(0.5, 0.5, 1.0))
    out = degrade_resolution(vol, 2)
    prof = out.array[0, 16]
    # plain 2x2 averaging would keep this edge perfectly sharp; the wider PSF blurs it
    assert np.sum(np.abs(prof) < 99) >= 2
    assert np.sum(np.abs(degrade_resolution(vol, 2, sigma_px=0).array[0, 16]) < 99) == 0
    assert out.array.mean() == pytest.approx(vol.array.mean(), abs=1e-3)
    noise = Volume(np.random.default_rng(1).normal(0, 100, (1, 128, 128)).astype(np.float32))
    coarse = degrade_resolution(noise, 2)
    assert coarse.array.std() < 0.5 * noise.array.std()  # more than block averaging alone
    assert degrade_resolution(noise, 2, sigma_px=0).array.std() == pytest.approx(50, rel=0.05)


# --- real CT -----------------------------------------------------------------------------

def _real_ct_slices(k0=9, nz=2) -> Volume:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(shared_path("abdomen-ct-totalseg/example_ct_dicom_20slices.nii.gz")))
    arr = sitk.GetArrayFromImage(img)[k0:k0 + nz].astype(np.float32)
    origin = img.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k0)))
    return Volume(arr, spacing=img.GetSpacing(), origin=origin,
                  direction=np.array(img.GetDirection()).reshape(3, 3))


def soft_tissue_mask(sl: np.ndarray) -> np.ndarray:
    """Homogeneous soft tissue (liver, spleen, muscle): local mean 20-90 HU, low local std."""
    from scipy.ndimage import binary_erosion, uniform_filter

    m = uniform_filter(sl.astype(np.float64), 11)
    s = np.sqrt(np.maximum(uniform_filter(sl.astype(np.float64) ** 2, 11) - m ** 2, 0))
    mask = (m > 20) & (m < 90) & (s < 30)
    return binary_erosion(mask, iterations=3)


def test_real_ct_soft_tissue_noise_and_mean():
    vol = _real_ct_slices()
    masks = [soft_tissue_mask(vol.array[k]) for k in range(vol.shape[0])]
    assert min(m.sum() for m in masks) > 2000, "no soft tissue region found"

    def inserted(out):
        d = out.array.astype(np.float64) - vol.array
        std = np.sqrt(np.mean([d[k][m].var() for k, m in enumerate(masks)]))
        return std, np.mean([d[k][m].mean() for k, m in enumerate(masks)])

    # quantum noise alone follows the sqrt(1/a - 1) law in a real body too
    q_half, _ = inserted(simulate_low_dose(vol, 0.5, photons=FIXED,
                                           seed=0, scanner=ScannerModel(electronic_noise_var=0)))
    q_quarter, _ = inserted(simulate_low_dose(vol, 0.25, photons=FIXED,
                                              seed=0, scanner=ScannerModel(electronic_noise_var=0)))
    # the default scanner (electronic noise on): mean kept, noise up, more than quantum alone
    low = simulate_low_dose(vol, 0.25, photons=FIXED, seed=0)
    e_quarter, shift = inserted(low)
    base = np.mean([vol.array[k][m].std() for k, m in enumerate(masks)])
    total = np.mean([low.array[k][m].std() for k, m in enumerate(masks)])
    print(f"real CT soft tissue: inserted quantum-only {q_half:.1f} (a=0.5) {q_quarter:.1f} (a=0.25); "
          f"with electronic {e_quarter:.1f}; mean shift {shift:.2f}; std in {base:.1f} -> out {total:.1f}")
    assert q_quarter / q_half == pytest.approx(np.sqrt(3.0), rel=0.15)
    assert abs(shift) < 5.0
    assert e_quarter >= q_quarter
    assert total > np.hypot(base, 0.8 * q_quarter)
