"""The image-domain evaluation noise (``physics/image_noise.py``): level, texture (NPS), seeding, geometry.

The noise power spectrum is measured as in a CT NPS measurement: noise added to a uniform
water phantom (0 HU), ``|FFT|^2 / (nx ny)`` averaged over slices and over rings of equal
radial frequency, and compared with the stated design ``NPS(f) ~ f * Hann(f / cutoff)^2``
written out here independently of the module.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from QHQGANLib import Volume, read_volume
from QHQGANLib.physics.image_noise import add_ct_noise

N = 256


def _water_phantom(n_slices: int = 16, size: int = N) -> Volume:
    return Volume(np.zeros((n_slices, size, size), np.float32), spacing=(0.8, 0.8, 2.0), origin=(-100, -100, 30))


def _radial_profile(power: np.ndarray, edges: np.ndarray):
    """Mean of ``power`` (a 2D FFT plane) in rings of radial frequency (units of Nyquist), and the ring index."""
    ny, nx = power.shape
    f = np.sqrt((np.fft.fftfreq(ny)[:, None] / 0.5) ** 2 + (np.fft.fftfreq(nx)[None, :] / 0.5) ** 2)
    ring = np.digitize(f.ravel(), edges) - 1
    prof = np.array([power.ravel()[ring == i].mean() for i in range(len(edges) - 1)])
    return prof, f, ring


def _measured_nps(noise: np.ndarray) -> np.ndarray:
    """2D NPS in HU^2 per (1/pixel^2) units: sums to the variance times the number of pixels."""
    return (np.abs(np.fft.fft2(noise.astype(np.float64))) ** 2).mean(axis=0) / (noise.shape[1] * noise.shape[2])


def _hann_ramp(f: np.ndarray, cutoff: float) -> np.ndarray:
    return np.where(f < cutoff, f * (0.5 + 0.5 * np.cos(np.pi * f / cutoff)) ** 2, 0.0)


@pytest.mark.shared_data
@pytest.mark.parametrize("std_hu", [20.0, 40.0, 80.0])
def test_std_on_a_real_abdomen_region(std_hu):
    ct = read_volume(shared_path("abdomen-ct-kits/CT26.dcm"))
    noisy = add_ct_noise(ct, std_hu, seed=7)
    added = noisy.array.astype(np.float64) - ct.array
    region = added[0, 156:356, 156:356]  # 140 mm square inside the abdomen
    assert abs(region.std() / std_hu - 1) < 0.02
    assert abs(region.mean()) < 0.02 * std_hu
    assert abs(added.std() / std_hu - 1) < 1e-4  # exact over the whole slice
    assert abs(added.mean()) < 1e-3
    # the soft tissue really is there: the region's clean std is anatomy (tens of HU), not padding
    assert -200 < np.median(ct.array[0, 156:356, 156:356]) < 200


def test_ramp_nps_rises_linearly_and_vanishes_at_the_cutoff():
    noise = add_ct_noise(_water_phantom(), 40.0, seed=1).array
    nps = _measured_nps(noise)
    assert nps.sum() / (N * N) == pytest.approx(40.0 ** 2, rel=1e-5)  # Parseval: integral of NPS = variance
    edges = np.linspace(0.0, 1.4, 29)
    prof, f, ring = _radial_profile(nps, edges)
    design2d = _hann_ramp(f, 1.0)
    design = np.array([design2d.ravel()[ring == i].mean() for i in range(len(edges) - 1)])
    design *= nps.sum() / design2d.sum()  # same total power
    centre = 0.5 * (edges[1:] + edges[:-1])
    main = (centre > 0.05) & (centre < 0.85)
    np.testing.assert_allclose(prof[main], design[main], rtol=0.10)
    # ramp: at low frequencies the power grows in proportion to f (times the Hann factor, ~1 there)
    p_at = {round(c, 3): p for c, p in zip(centre, prof)}
    assert p_at[0.125] / p_at[0.075] == pytest.approx(
        _hann_ramp(np.array([0.125]), 1)[0] / _hann_ramp(np.array([0.075]), 1)[0], rel=0.1)
    peak = prof.max()
    assert 0.2 < centre[prof.argmax()] < 0.45  # the Hann-apodised ramp peaks near 1/3 of the cutoff
    assert prof[centre > 0.95].max() < 0.01 * peak  # ~0 at the cutoff
    assert prof[centre > 1.0].max() < 1e-9 * peak  # nothing above it


def test_lower_cutoff_moves_the_zero_and_keeps_the_level():
    noise = add_ct_noise(_water_phantom(8), 20.0, seed=2, cutoff=0.5).array
    assert noise.std() == pytest.approx(20.0, rel=1e-4)
    edges = np.linspace(0.0, 1.4, 29)
    prof, _, _ = _radial_profile(_measured_nps(noise), edges)
    centre = 0.5 * (edges[1:] + edges[:-1])
    assert prof[centre > 0.5].max() < 1e-9 * prof.max()
    assert prof[(centre > 0.1) & (centre < 0.3)].min() > 0.3 * prof.max()


def test_white_noise_is_flat_and_uncorrelated():
    noise = add_ct_noise(_water_phantom(), 40.0, seed=3, nps="white").array.astype(np.float64)
    edges = np.linspace(0.0, 1.4, 29)
    prof, _, _ = _radial_profile(_measured_nps(noise), edges)
    flat = prof[1:]  # the first ring holds the removed zero frequency
    assert np.all(np.abs(flat / 1600.0 - 1) < 0.10)
    r = np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]
    assert abs(r) < 0.01
    ramp = add_ct_noise(_water_phantom(), 40.0, seed=3).array.astype(np.float64)
    r_ramp = np.corrcoef(ramp[:, :, :-1].ravel(), ramp[:, :, 1:].ravel())[0, 1]
    # the ramp's grain spans a few pixels: the neighbour correlation is the design NPS's cosine transform at lag 1
    fx = np.fft.fftfreq(N)[None, :]
    design = _hann_ramp(np.sqrt((np.fft.fftfreq(N)[:, None] / 0.5) ** 2 + (fx / 0.5) ** 2), 1.0)
    expected = float((design * np.cos(2 * np.pi * fx)).sum() / design.sum())
    assert 0.4 < expected < 0.7
    assert r_ramp == pytest.approx(expected, abs=0.02)


def test_seeded_reproducible_and_recorded(ct_small_path):
    ct = read_volume(ct_small_path)
    a = add_ct_noise(ct, 40, seed=5)
    b = add_ct_noise(ct, 40, seed=5)
    c = add_ct_noise(ct, 40, seed=6)
    np.testing.assert_array_equal(a.array, b.array)
    assert np.abs(a.array - c.array).max() > 10
    fresh = add_ct_noise(ct, 40)  # seed None: fresh entropy, recorded so it can be reproduced
    again = add_ct_noise(ct, 40, seed=fresh.metadata["image_noise"]["seed"])
    np.testing.assert_array_equal(fresh.array, again.array)
    assert a.metadata["image_noise"] == {"std_hu": 40.0, "nps": "ramp", "seed": 5, "cutoff": 1.0}
    assert "add_ct_noise(std_hu=40" in a.metadata["history"][-1]


def test_geometry_and_input_unchanged(ct_small_path):
    ct = read_volume(ct_small_path)
    before = ct.array.copy()
    metadata_before = dict(ct.metadata)
    noisy = add_ct_noise(ct, 20, seed=0)
    assert noisy is not ct and noisy.same_geometry(ct)
    np.testing.assert_array_equal(ct.array, before)
    assert ct.metadata == metadata_before and "image_noise" not in ct.metadata
    assert noisy.metadata["source"] == ct.metadata["source"]
    assert noisy.array.dtype == np.float32
    assert (noisy.array.astype(np.float64) - before).std() == pytest.approx(20, rel=1e-4)
    zero = add_ct_noise(ct, 0.0, seed=0)
    np.testing.assert_array_equal(zero.array, before)


def test_refuses_bad_input(ct_small_path):
    ct = read_volume(ct_small_path)
    broken = ct.copy()
    broken.array[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        add_ct_noise(broken, 20)
    with pytest.raises(ValueError, match="std_hu"):
        add_ct_noise(ct, -1)
    with pytest.raises(ValueError, match="nps"):
        add_ct_noise(ct, 20, nps="pink")
    with pytest.raises(ValueError, match="cutoff"):
        add_ct_noise(ct, 20, cutoff=0)
    with pytest.raises(TypeError):
        add_ct_noise(ct.array, 20)
