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


def test_a_disk_cache_rebuilds_the_same_pool_without_simulating_and_shares_work(ct_small_path, monkeypatch, tmp_path):
    """A resumed run (a fresh process: empty memory caches) reads its realisations back from the disk
    cache bit for bit; a realisation another live process is simulating is left to it (and waited for),
    one whose process died is taken over."""
    import os
    import subprocess
    import sys

    monkeypatch.setattr(pairs, "_SIMULATIONS", pairs.OrderedDict())
    monkeypatch.setattr(pairs, "_PHOTONS", {})
    monkeypatch.setattr(pairs, "_DISK", None)
    pairs.use_disk_cache(tmp_path / "sims")
    ct = read_volume(ct_small_path)
    first = pairs.PairPool([ct], _config(), context=1, seed_key=[0, 0])
    kept = sorted(p.name for p in (tmp_path / "sims").iterdir())
    assert len(kept) == 3 and all(n.endswith(".npy") for n in kept)  # the calibration and two realisations

    monkeypatch.setattr(pairs, "_SIMULATIONS", pairs.OrderedDict())
    monkeypatch.setattr(pairs, "_PHOTONS", {})

    def refuse(*args, **kwargs):
        raise AssertionError("simulated although the disk cache holds it")

    real = pairs.simulate_low_dose
    monkeypatch.setattr(pairs, "simulate_low_dose", refuse)
    again = pairs.PairPool([ct], _config(), context=1, seed_key=[0, 0])
    for a, b in zip(first.inputs[0], again.inputs[0]):
        np.testing.assert_array_equal(a, b)
        assert not b.flags.writeable

    # another seed: two new realisations; one is claimed by a live process (this test's parent shell
    # stands in), the other by a process that has exited
    monkeypatch.setattr(pairs, "simulate_low_dose", real)
    fresh = pairs.PairPool.__new__(pairs.PairPool)
    fresh.cfg, fresh.seed_key, fresh.volumes, fresh._keys = _config(), [5, 0], [ct], [pairs._volume_key(ct)]
    assert fresh._simulate(0, 0, None, wait=False) is not None  # the photons are on disk already
    names = set(os.listdir(tmp_path / "sims"))
    assert len(names) == 4
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    r = np.random.default_rng([5, 0, 1, 0, 1])
    dose = float(r.uniform(0.1, 0.5))
    key = fresh._keys[0] + (dose, int(r.integers(2**31)), pairs._PHOTONS[fresh._keys[0] + (0,)], "hann")
    from QHQGANLib.core.outputs import _claim_path

    claim = _claim_path(tmp_path / "sims" / (pairs.hashlib.sha1(repr(key).encode()).hexdigest() + ".npy"))
    claim.write_text(str(os.getppid()))
    assert fresh._simulate(0, 1, None, wait=False) is None  # a live claim: left to its process
    claim.write_text(dead.stdout.strip())
    assert fresh._simulate(0, 1, None, wait=False) is not None  # a dead one: taken over
    assert not claim.exists() and len(os.listdir(tmp_path / "sims")) == 5
    pairs.use_disk_cache(None)
