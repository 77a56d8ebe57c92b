"""Training pairs: each volume's photon count is calibrated once, and realisations are reused, never confused."""
from __future__ import annotations

import numpy as np

from QHQGANLib import read_volume
from QHQGANLib.training import pairs
from QHQGANLib.training.enhancement import TrainConfig


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"patch_size": 32, "pool_size": 2, "dose_range": (0.1, 0.5), **changes})


def test_the_same_pool_is_built_once_and_a_different_volume_is_simulated_anew(ct_small_path, monkeypatch):
    monkeypatch.setattr(pairs, "_SIMULATIONS", pairs.OrderedDict())
    monkeypatch.setattr(pairs, "_PHOTONS", {})
    calls = []
    real = pairs.simulate_low_dose

    def counting(volume, dose, **kwargs):
        calls.append((dose, kwargs.get("photons")))
        return real(volume, dose, **kwargs)

    monkeypatch.setattr(pairs, "simulate_low_dose", counting)
    ct = read_volume(ct_small_path)
    first = pairs.PairPool([ct], _config(), context=1, seed_key=[0, 0])
    n_first = len(calls)
    assert n_first == 1 + 2  # one calibration, then the two realisations with its photon count
    photons = {p for _, p in calls[1:]}
    assert len(photons) == 1 and None not in photons  # every dose of one scan: the same calibrated photons
    second = pairs.PairPool([ct.copy()], _config(), context=1, seed_key=[0, 0])  # equal content, other object
    assert len(calls) == n_first
    for a, b in zip(first.inputs[0], second.inputs[0]):
        np.testing.assert_array_equal(a, b)
        assert not a.flags.writeable  # shared realisations cannot be changed by a pool
    other = ct.with_array(ct.array + 1.0)  # different voxels: simulated anew, never a stale hit
    pairs.PairPool([other], _config(), context=1, seed_key=[0, 0])
    assert len(calls) == n_first + 3
    assert np.abs(ct.array - read_volume(ct_small_path).array).max() == 0  # the input is untouched


def test_recon_filters_set_the_noise_texture():
    """Issue #26: a pool may draw its realisations' reconstruction filters; a sharp filter inserts finer
    noise (higher NPS mean frequency, measured where the normal-dose slice is uniform tissue) than the
    default smooth one, and one filter alone rebuilds the pool the default config builds."""
    import pytest

    from QHQGANLib.physics.noise_texture import estimate_nps
    from conftest import shared_path

    ct = read_volume(shared_path("abdomen-ct-kits/CT26.dcm"))
    pixel = ct.spacing[0]

    def inserted_mean_frequency(filters):
        pool = pairs.PairPool([ct], _config(patch_size=64, pool_size=1, recon_filters=filters), context=1,
                              seed_key=[0, 0])
        noise = pool.inputs[0][0] - pool.targets[0]
        return estimate_nps(noise, pixel_mm=pixel, where=pool.targets[0]).mean_frequency(), pool

    smooth, default_pool = inserted_mean_frequency(("hann",))
    sharp, _ = inserted_mean_frequency(("ram-lak",))
    assert sharp > 1.3 * smooth
    plain = pairs.PairPool([ct], _config(patch_size=64, pool_size=1), context=1, seed_key=[0, 0])
    np.testing.assert_array_equal(plain.inputs[0][0], default_pool.inputs[0][0])
    with pytest.raises(ValueError, match="recon_filters"):
        pairs.PairPool([ct], _config(recon_filters=("bilateral",)), context=1, seed_key=[0, 0])
