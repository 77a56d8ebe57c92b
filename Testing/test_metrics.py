"""PSNR and SSIM in HU on a real CT slice with known, physically meaningful perturbations."""
from __future__ import annotations

import numpy as np
import pytest

from QHQGANLib import psnr, read_volume, ssim
from QHQGANLib.metrics.image import resolve_window


@pytest.fixture
def ct(ct_small_path):
    return read_volume(ct_small_path)


def test_identical_images(ct):
    assert psnr(ct, ct) == float("inf")
    assert ssim(ct, ct) == pytest.approx(1.0)


def test_psnr_of_known_gaussian_noise_matches_theory(ct):
    rng = np.random.default_rng(0)
    sigma = 20.0
    # keep the reference inside the window so clipping does not change the noise
    reference = np.clip(ct.array, -1000, 3000)
    noisy = reference + rng.normal(0, sigma, reference.shape)
    expected = 20 * np.log10(4095.0 / sigma)
    assert psnr(noisy, reference) == pytest.approx(expected, abs=0.1)
    # the abdomen window is 400 HU wide: the same noise costs 20*log10(4095/400) dB more
    inside = (reference > -160 + 4 * sigma) & (reference < 240 - 4 * sigma)
    assert inside.mean() > 0.2
    noisy_soft = np.where(inside, noisy, reference)
    mse = np.mean((noisy_soft - reference) ** 2)
    assert psnr(noisy_soft, reference, window="abdomen") == pytest.approx(10 * np.log10(400**2 / mse), abs=0.2)


def test_ssim_falls_as_noise_grows(ct):
    rng = np.random.default_rng(1)
    values = [ssim(ct.array + rng.normal(0, s, ct.shape), ct) for s in (5, 20, 80)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0


def test_window_ignores_differences_outside_it(ct):
    changed = ct.array.copy()
    changed[ct.array < -500] = -1024  # all air set to one value: invisible in the abdomen window
    assert psnr(changed, ct, window="abdomen") == float("inf")
    assert psnr(changed, ct, window="full") < 80


def test_bad_inputs(ct):
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(ct.array[:, :64], ct)
    with pytest.raises(ValueError, match="unknown window"):
        resolve_window("brain-ish")
    bad = ct.array.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ssim(bad, ct)
