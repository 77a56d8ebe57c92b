"""The numpy fallback projector (QHQGANLib.physics.projector) against ASTRA (issue #11, item 2).

Where ASTRA has no wheel (macOS; Windows with Slicer 5.8's Python 3.9), ``simulate_low_dose``
runs on :class:`NumpyParallelBeam`. These tests compare the two where both exist: the same
sinogram of a phantom, the same FBP, and the same inserted noise from ``simulate_low_dose``.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import QHQGANLib as q
from QHQGANLib.physics import projector
from QHQGANLib.physics.projector import NumpyParallelBeam, fbp_filter, make_parallel_beam

astra = pytest.importorskip("astra", reason="the comparison needs ASTRA (Linux x86_64, Windows AMD64)")
from QHQGANLib.physics.lowdose import _ParallelBeam  # noqa: E402


def phantom(ny=96, nx=120):
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    body = (((y - 50) / 40.0) ** 2 + ((x - 58) / 52.0) ** 2) < 1
    bone = (((y - 40) / 8.0) ** 2 + ((x - 70) / 10.0) ** 2) < 1
    return body * 0.019 + bone * 0.02  # attenuation per pixel


@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("recon_filter", ["hann", "ram-lak", "shepp-logan"])
def test_sinogram_and_fbp_agree_with_astra(downsample, recon_filter):
    img = phantom()
    ref = _ParallelBeam(96, 120, 90, recon_filter, downsample)
    ours = NumpyParallelBeam(96, 120, 90, recon_filter, downsample)
    try:
        sa, sb = ref.project_coarse(img), ours.project_coarse(img)
        assert sa.shape == sb.shape
        assert np.abs(sa - sb).max() < 1e-3 * sa.max(), "line integrals differ from ASTRA's"
        ra, rb = ref.fbp(sa), ours.fbp(sa)
        assert np.linalg.norm(ra - rb) / np.linalg.norm(ra) < 1e-3, "FBP differs from ASTRA's"
        noise = np.random.default_rng(0).normal(size=sa.shape)
        na, nb = ref.fbp(noise), ours.fbp(noise)
        assert abs(nb.std() / na.std() - 1) < 1e-3, "the FBP of noise has another level"
        assert np.corrcoef(na.ravel(), nb.ravel())[0, 1] > 0.9999, "the FBP of noise has another texture"
    finally:
        ref.close()


def test_padded_canvas_agrees_with_astra():
    ny, nx, pad = 96, 120, (6, 8)
    wide = np.pad(phantom(ny, nx), ((pad[0], pad[0]), (pad[1], pad[1])), mode="edge")
    ref = _ParallelBeam(ny, nx, 60, "hann", 2, pad)
    try:
        sa, sb = ref.project_coarse(wide), NumpyParallelBeam(ny, nx, 60, "hann", 2, pad).project_coarse(wide)
        assert np.abs(sa - sb).max() < 1e-3 * sa.max()
    finally:
        ref.close()


def test_filter_is_astras():
    filt, n = fbp_filter(100, "hann")
    assert n == 256 and filt.shape == (129,)
    assert 0 < filt[0] < filt[1] and filt[-1] == pytest.approx(0.0, abs=1e-6)  # hann: zero at Nyquist
    ramp, _ = fbp_filter(100, "ram-lak")
    assert ramp[-1] == pytest.approx(1.0, rel=5e-3)  # 2 x the sampled Ram-Lak kernel's ~0.5 at Nyquist
    with pytest.raises(ValueError, match="recon_filter"):
        fbp_filter(100, "sharp")


def test_the_fallback_is_chosen_when_astra_cannot_be_imported(monkeypatch):
    assert make_parallel_beam(_ParallelBeam, 32, 32, 16, "hann").backend == "astra"
    monkeypatch.setitem(sys.modules, "astra", None)  # what an install without the wheel looks like
    assert not projector.astra_available()
    assert isinstance(make_parallel_beam(_ParallelBeam, 32, 32, 16, "hann"), NumpyParallelBeam)
    with pytest.raises(ValueError, match="backend"):
        make_parallel_beam(_ParallelBeam, 32, 32, 16, "hann", backend="gpu")


@pytest.mark.parametrize("calibrated", [True, False])
def test_simulate_low_dose_inserts_the_same_noise_with_either_backend(ct_small_path, monkeypatch, calibrated):
    ct = q.read_volume(ct_small_path)
    options = {} if calibrated else {"photons": 1e5}
    results = {}
    for backend in ("astra", "numpy"):
        monkeypatch.setenv("QHQGAN_PROJECTOR", backend)
        low = q.simulate_low_dose(ct, 0.25, seed=0, **options)
        results[backend] = low.metadata["low_dose"]["inserted_noise_hu"]
        assert low.same_geometry(ct)
    assert results["numpy"] == pytest.approx(results["astra"], rel=0.10), results
    if calibrated:  # both reach the noise law's target: sqrt(1/d - 1) x the scan's own noise
        target = q.simulate_low_dose(ct, 0.25, seed=0).metadata["low_dose"]["target_inserted_noise_hu"]
        assert results["numpy"] == pytest.approx(target, rel=0.10)
