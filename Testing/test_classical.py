"""The non-learned references: bicubic upsampling (grid, values) and BM3D denoising (noise level,
``sigma_hu``, progress, cancel, the wavelet fallback) on real CT."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import shared_path

from QHQGANLib import Volume, read_volume
from QHQGANLib.core.constants import HU_MAX, HU_MIN
from QHQGANLib.core.progress import OperationCancelled
from QHQGANLib.metrics.image import noise_in_uniform_regions, psnr, uniform_region_mask
from QHQGANLib.tasks.classical import bicubic_upsample, bm3d_denoise
from QHQGANLib.tasks.geometry import super_resolved_geometry

HU_WIDTH = HU_MAX - HU_MIN  # BM3D works on [HU_MIN, HU_MAX] mapped to [0, 1]


@pytest.fixture(scope="module")
def ct_small():
    from pydicom.data import get_testdata_file

    return read_volume(get_testdata_file("CT_small.dcm"))


# ---------------------------------------------------------------------------
# bicubic upsampling
# ---------------------------------------------------------------------------
def cubic_convolution_matrix(n_in: int, scale: int, a: float = -0.75) -> np.ndarray:
    """(n_in * scale, n_in) weights of Keys' cubic convolution (parameter ``a``) resampling onto a
    ``scale``-times finer grid over the same extent (pixel centres at (i + 0.5) / scale - 0.5 old
    pixels), border pixels repeated: an implementation independent of torch."""

    def kernel(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        near = ((a + 2) * t - (a + 3)) * t * t + 1
        far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        return np.where(t <= 1, near, np.where(t < 2, far, 0.0))

    m = np.zeros((n_in * scale, n_in))
    for i in range(n_in * scale):
        x = (i + 0.5) / scale - 0.5
        base = int(np.floor(x))
        for j in range(base - 1, base + 3):
            m[i, min(max(j, 0), n_in - 1)] += kernel(np.array(x - j))
    return m


def test_bicubic_grid_covers_the_same_region(ct_small):
    vol = Volume(ct_small.array, (0.7, 0.55, 5.0), ct_small.origin,
                 np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # rotated, non-square pixels
    up = bicubic_upsample(vol, 2)
    assert up.shape == (1, 256, 256)
    np.testing.assert_allclose(up.spacing, (0.35, 0.275, 5.0))
    spacing, origin = super_resolved_geometry(vol, 2)
    np.testing.assert_allclose(up.spacing, spacing)
    np.testing.assert_allclose(up.origin, origin)
    np.testing.assert_allclose(up.direction, vol.direction)
    for a, b in zip(vol.physical_extent(), up.physical_extent()):
        np.testing.assert_allclose(a, b, atol=1e-9)
    # the centre of old pixel (i, j) is the mean of the centres of its 2x2 new pixels
    old = vol.index_to_physical((40, 70, 0))
    new = np.mean([up.index_to_physical((80 + p, 140 + q, 0)) for p in (0, 1) for q in (0, 1)], axis=0)
    np.testing.assert_allclose(old, new, atol=1e-9)
    assert up.metadata["history"][-1] == "bicubic x2"
    x3 = bicubic_upsample(vol, 3)
    assert x3.shape == (1, 384, 384)
    for a, b in zip(vol.physical_extent(), x3.physical_extent()):
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_bicubic_is_cubic_convolution(ct_small):
    """Equal to torch's bicubic interpolation onto the target size, and to Keys' cubic convolution
    (a = -0.75, torch's choice) computed here independently; values are clipped to the CT range first."""
    import torch
    import torch.nn.functional as F

    image = ct_small.array[0].astype(np.float64)
    up = bicubic_upsample(ct_small, 2).array[0]
    direct = F.interpolate(torch.from_numpy(ct_small.array)[:, None], size=(256, 256), mode="bicubic",
                           align_corners=False)[0, 0].numpy()
    np.testing.assert_array_equal(up, direct)
    m = cubic_convolution_matrix(128, 2)
    np.testing.assert_allclose(up, m @ image @ m.T, rtol=0, atol=0.01)  # HU; float32 rounding only
    # out-of-range values are clipped before interpolation: a 5000 HU block reads HU_MAX
    hot = ct_small.array.copy()
    hot[:, 40:80, 40:80] = 5000.0
    up_hot = bicubic_upsample(Volume(hot, ct_small.spacing), 2).array
    np.testing.assert_allclose(up_hot[0, 90:150, 90:150], HU_MAX, atol=1e-3)


def test_bicubic_keeps_the_hu_of_uniform_tissue(ct_small):
    up = bicubic_upsample(ct_small, 2).array
    mask = uniform_region_mask(ct_small.array)
    assert mask.sum() > 500
    blocks = up.reshape(1, 128, 2, 128, 2).mean(axis=(2, 4))  # the 4 new pixels of each old one
    difference = blocks[mask] - ct_small.array[mask]
    # measured: mean -0.36 HU, mean absolute 2.2 HU (the image's own noise is ~20 HU)
    assert abs(float(difference.mean())) < 2.0
    assert float(np.abs(difference).mean()) < 5.0


# ---------------------------------------------------------------------------
# BM3D
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soft_tissue_pair():
    """(normal, quarter-dose) 128x128 crops of abdominal soft tissue (an evaluation-only patient):
    the dose is simulated on the whole slice, then cropped so that BM3D stays quick."""
    from QHQGANLib.physics.lowdose import simulate_low_dose

    normal = read_volume(shared_path("abdomen-ct-pancreas/PANCREAS_0001.dcm"))
    # a fixed photon count: the thresholds below were measured at this noise level (19 HU)
    low = simulate_low_dose(normal, 0.25, seed=0, photons=1e6)
    crop = (slice(None), slice(160, 288), slice(160, 288))
    return (Volume(normal.array[crop], normal.spacing), Volume(low.array[crop], normal.spacing))


@pytest.fixture
def bm3d_calls(monkeypatch):
    """The ``sigma_psd`` of every call of ``bm3d.bm3d`` (which still runs)."""
    bm3d = pytest.importorskip("bm3d")
    calls = []
    real = bm3d.bm3d

    def spy(image, sigma_psd, *args, **kwargs):
        calls.append(float(sigma_psd))
        return real(image, sigma_psd, *args, **kwargs)

    monkeypatch.setattr(bm3d, "bm3d", spy)
    return calls


def test_bm3d_removes_noise_at_the_estimated_level(soft_tissue_pair, bm3d_calls):
    normal, low = soft_tissue_pair
    mask = uniform_region_mask(normal.array)
    assert mask.sum() > 1000
    noise_low = noise_in_uniform_regions(low.array, mask)  # measured 19.0 HU (normal dose: 12.9 HU)
    out = bm3d_denoise(low)
    assert out.shape == low.shape and out.same_geometry(low)
    assert out.metadata["history"][-1] == "BM3D denoised"
    # the blind estimate reads the image's own noise level (measured 18.5 HU vs 19.0 HU)
    (sigma,) = bm3d_calls
    assert sigma * HU_WIDTH == pytest.approx(noise_low, rel=0.15)
    # measured: noise 19.0 -> 8.4 HU; PSNR (abdomen window) 28.39 -> 28.75 dB against normal dose
    assert noise_in_uniform_regions(out.array, mask) < 0.6 * noise_low
    assert psnr(out, normal, window="abdomen") > psnr(low, normal, window="abdomen") + 0.1
    assert abs(float(out.array[mask].mean() - low.array[mask].mean())) < 3.0  # no HU shift


def test_bm3d_honours_sigma_hu(soft_tissue_pair, bm3d_calls):
    normal, low = soft_tissue_pair
    mask = uniform_region_mask(normal.array)
    gentle = bm3d_denoise(low, sigma_hu=1.0)
    strong = bm3d_denoise(low, sigma_hu=40.0)
    assert bm3d_calls == pytest.approx([1.0 / HU_WIDTH, 40.0 / HU_WIDTH])
    # 1 HU of assumed noise leaves the image almost untouched (measured 0.02 HU mean change)
    assert float(np.abs(gentle.array - low.array).mean()) < 0.2
    # 40 HU (twice the real noise) flattens uniform tissue: measured 1.9 HU left of 19.0 HU
    assert noise_in_uniform_regions(strong.array, mask) < 0.25 * noise_in_uniform_regions(low.array, mask)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="sigma_hu"):
            bm3d_denoise(low, sigma_hu=bad)


def test_bm3d_progress_and_cancel(soft_tissue_pair, bm3d_calls):
    _, low = soft_tissue_pair
    two = Volume(np.stack([low.array[0, :64, :64], low.array[0, 64:, 64:]]), low.spacing)
    seen = []
    out = bm3d_denoise(two, sigma_hu=20.0, progress=lambda f, m: seen.append(f))
    assert seen == [0.5, 1.0] and out.shape == two.shape
    assert len(bm3d_calls) == 2

    stop = threading.Event()
    stop.set()
    with pytest.raises(OperationCancelled):
        bm3d_denoise(two, sigma_hu=20.0, cancel=stop)
    assert len(bm3d_calls) == 2  # BM3D never ran

    stop.clear()
    with pytest.raises(OperationCancelled):
        bm3d_denoise(two, sigma_hu=20.0, progress=lambda f, m: stop.set(), cancel=stop)
    assert len(bm3d_calls) == 3  # the first slice ran, the second did not


def test_bm3d_without_soft_tissue_uses_the_wavelet_estimate(bm3d_calls, monkeypatch):
    """A quarter-dose crop of lung (no uniform soft tissue) is denoised with scikit-image's
    wavelet noise estimate instead, without error."""
    import skimage.restoration
    from QHQGANLib.physics.lowdose import simulate_low_dose

    normal = read_volume(shared_path("abdomen-ct-dcmqi/01.dcm"))
    low = simulate_low_dose(normal, 0.25, seed=0)
    lung = Volume(low.array[:, 352:400, 336:384], low.spacing)
    assert float(lung.array.mean()) < -700 and not uniform_region_mask(lung.array).any()

    estimates = []
    real = skimage.restoration.estimate_sigma

    def spy(image, *args, **kwargs):
        estimates.append(float(real(image, *args, **kwargs)))
        return estimates[-1]

    monkeypatch.setattr(skimage.restoration, "estimate_sigma", spy)
    out = bm3d_denoise(lung)
    assert len(estimates) == 1 and bm3d_calls == pytest.approx(estimates)
    # measured 17.6 HU: a plausible CT noise level, not 0 and not the lung's contrast
    assert 3.0 < estimates[0] * HU_WIDTH < 60.0
    assert np.isfinite(out.array).all()
    change = np.abs(out.array - lung.array)
    assert 0.5 < float(change.mean()) < 3 * estimates[0] * HU_WIDTH
    assert abs(float(out.array.mean() - lung.array.mean())) < 5.0

    # a soft-tissue slice does not call the wavelet estimator
    estimates.clear()
    tissue = Volume(normal.array[:, 160:224, 160:224], normal.spacing)  # liver
    assert uniform_region_mask(tissue.array).any()
    bm3d_denoise(tissue)
    assert estimates == []
