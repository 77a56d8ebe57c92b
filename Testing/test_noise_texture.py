"""A scan's own noise texture (issue #26): the NPS measured in uniform tissue, and noise drawn with it.

Known textures (white, the FBP ramp) added to a real slice are measured back at their known mean
frequency; noise drawn from a texture has that texture and level; on real scans the sharp kernel's
noise is measured finer than the smooth kernel's of the same scan, and the water phantom's real noise
level is the few HU of a standard-dose water scan.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import shared_path
from QHQGANLib.core.io import read_volume
from QHQGANLib.physics.image_noise import add_ct_noise, noise_filter, radial_frequency
from QHQGANLib.physics.noise_texture import NoiseTexture, estimate_nps, ramp_texture


def _mean_frequency_of(h: np.ndarray) -> float:
    f = 0.5 * radial_frequency(h.shape)
    return float(np.sum(f * h ** 2) / np.sum(h ** 2))


@pytest.fixture(scope="module")
def smooth_slice():
    """A real abdomen slice with its own noise smoothed away (3-pixel Gaussian), so added noise dominates."""
    ct = read_volume(shared_path("abdomen-ct-kits/CT26.dcm"))
    return ct.with_array(ndi.gaussian_filter(ct.array, (0, 3, 3)))


@pytest.mark.parametrize("nps", ["white", "ramp"])
def test_a_known_texture_is_measured_back(smooth_slice, nps):
    noisy = add_ct_noise(smooth_slice, 30.0, seed=1, nps=nps)
    texture = estimate_nps(noisy)
    expected = _mean_frequency_of(noise_filter((128, 128), nps=nps))  # white 0.383, ramp 0.214 cycles/pixel
    assert texture.n_rois >= 8
    assert texture.mean_frequency() == pytest.approx(expected, rel=0.15)
    assert texture.std_hu == pytest.approx(30.0, rel=0.15)


def test_drawn_noise_has_the_texture_and_level():
    texture = ramp_texture(25.0)
    noise = texture.sample((64, 64, 64), np.random.default_rng(0))
    assert noise.dtype == np.float32 and noise.std() == pytest.approx(25.0, rel=0.03)
    spectrum = np.mean(np.abs(np.fft.fft2(noise)) ** 2, axis=0)
    assert _mean_frequency_of(np.sqrt(spectrum)) == pytest.approx(texture.mean_frequency(), rel=0.03)
    # a texture measured from that noise (no anatomy) is the same texture
    measured = estimate_nps(noise[:, None].reshape(64, 64, 64) + 40.0, pixel_mm=1.0)
    assert measured.mean_frequency() == pytest.approx(texture.mean_frequency(), rel=0.1)
    # same rng seed, same noise; a level can be given per draw
    again = texture.sample((64, 64, 64), np.random.default_rng(0), std_hu=50.0)
    assert np.allclose(again, 2.0 * noise, atol=1e-3)


def test_real_scans_sharp_kernel_noise_is_finer_than_smooth():
    smooth = estimate_nps(read_volume(shared_path("chest-ct-lungdx/A0001-kernel-B")))
    sharp = estimate_nps(read_volume(shared_path("chest-ct-lungdx/A0001-kernel-L")))
    assert smooth.n_rois >= 50 and sharp.n_rois >= 50
    assert sharp.mean_frequency() > 1.3 * smooth.mean_frequency()
    assert sharp.std_hu > 3.0 * smooth.std_hu  # the sharp kernel is much noisier (README of the data)


def test_water_phantom_noise():
    texture = estimate_nps(read_volume(shared_path("noise-phantom-ge/imgA.dcm")))
    assert texture.n_rois >= 100
    assert 3.0 < texture.std_hu < 8.0  # a standard-dose water scan: about 5 HU (data README)
    assert 0.15 < texture.mean_frequency() < 0.30  # STANDARD kernel: FBP-like, between smooth and sharp


def test_too_little_tissue_falls_back_to_the_ramp():
    air = np.full((1, 40, 40), -1000.0) + np.random.default_rng(0).normal(0, 10, (1, 40, 40))
    texture = estimate_nps(air, pixel_mm=1.0, std_hu=10.0)
    assert texture.n_rois == 0 and texture.mean_frequency() == pytest.approx(ramp_texture(1).mean_frequency())
    with pytest.raises(ValueError, match="cannot be measured"):
        estimate_nps(air, pixel_mm=1.0)
    assert isinstance(texture, NoiseTexture)
