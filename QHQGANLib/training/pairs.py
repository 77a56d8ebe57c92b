"""Training pairs for enhancement and super-resolution, made from normal-dose CT by the physics simulator.

A pool of low-dose realisations (dose fractions drawn from ``dose_range``, reconstruction filters,
i.e. noise textures, from ``recon_filters``; each volume's photon count calibrated once to the
scan's own noise with the default filter, :mod:`QHQGANLib.physics.calibration`, so a sharper filter
at the same dose gives finer and stronger noise, as a sharper clinical kernel does) or, for
super-resolution, ``degrade_resolution`` copies, from which random patches are cut, flipped
and rotated. The pool is partly re-simulated every ``refresh_every`` steps, so the network
keeps seeing new noise.

Console usage::

    >>> from QHQGANLib.training.pairs import PairPool
    >>> pool = PairPool([ct], TrainConfig(), context=1, seed_key=[0, 0])
    >>> x, y = pool.batch(16)        # (16, 3, 64, 64) low-dose stacks, (16, 1, 64, 64) targets, HU
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.constants import HU_MAX, HU_MIN
from ..core.outputs import claim_output
from ..core.progress import check_cancel, report
from ..core.volume import Volume, slab
from ..physics.lowdose import ScannerModel, simulate_low_dose
from ..physics.resolution import degrade_resolution


#: Low-dose realisations and photon counts already simulated in this process, keyed by the volume's
#: identity and the simulation's arguments: the runs of a learning-rate sweep (same volumes, same
#: seeds) build the same pool, and each realisation costs seconds per 512x512 slice.
_SIMULATIONS: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_PHOTONS: Dict[tuple, float] = {}
_CACHE_SIZE = 48
#: A folder where realisations and calibrations are kept as well (:func:`use_disk_cache`), or None.
_DISK: Optional[Path] = None
#: The simulator's reconstruction filters a training pool may draw (ASTRA's FBP filters, smooth to sharp).
RECON_FILTERS = ("hann", "hamming", "cosine", "shepp-logan", "ram-lak")


def _volume_key(volume: Volume) -> tuple:
    """The voxels' content hash and the geometry the simulation depends on (not the object's identity,
    which Python may reuse for another volume)."""
    digest = hashlib.sha1(memoryview(np.ascontiguousarray(volume.array)).cast("B")).hexdigest()
    return (digest, volume.shape, tuple(round(s, 6) for s in volume.spacing))


def use_disk_cache(folder) -> None:
    """Keep every low-dose realisation and photon calibration in ``folder`` too (None: memory only).

    A realisation is a pure function of its key, so the runs of one training queue (several methods,
    resumed runs, processes running side by side) share them: a pool of a few hundred 512x512 slices
    costs tens of minutes of simulation and seconds to read back. Processes building pools at the same
    time split the work: each claims a realisation before simulating it (the claim every output takes,
    :func:`~QHQGANLib.core.outputs.claim_output`: a dead or reused process's claim is taken over) and reads
    those the others made.
    """
    global _DISK
    _DISK = None if folder is None else Path(folder)
    if _DISK is not None:
        _DISK.mkdir(parents=True, exist_ok=True)


def _on_disk(key: tuple, compute: Callable[[], np.ndarray], wait: bool) -> Optional[np.ndarray]:
    """``compute()``, or its copy in the disk cache; None when another process is computing it and
    ``wait`` is False. Processes take turns through the project's output claims (:func:`claim_output`)."""
    if _DISK is None:
        return compute()
    path = _DISK / (hashlib.sha1(repr(key).encode()).hexdigest() + ".npy")
    while not path.exists():
        try:
            with claim_output(path):  # held by another live process: FileExistsError
                if path.exists():  # made while this process waited
                    break
                array = np.asarray(compute())
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    np.save(f, array, allow_pickle=False)
                os.replace(tmp, path)
                return array
        except FileExistsError:
            if not wait:
                return None
            time.sleep(1.0)
    return np.load(path, allow_pickle=False)


class PairPool:
    """Normal-dose volumes and their degraded copies, from which patch pairs are drawn.

    Every low-dose realisation is a pure function of (seed, rank, slot, step), so a
    run resumed at ``start_step`` rebuilds exactly the pool a straight run had then.
    """

    def __init__(self, volumes: Sequence[Volume], cfg, context: int, seed_key: Sequence[int],
                 start_step: int = 0, progress: Optional[Callable[[float, str], None]] = None, cancel=None):
        if not volumes:
            raise ValueError("no training volumes given")
        for v in volumes:
            if min(v.shape[1:]) < cfg.patch_size:
                raise ValueError(f"a training slice of {v.shape[1:]} is smaller than the patch size {cfg.patch_size}")
        if not cfg.recon_filters or not set(cfg.recon_filters) <= set(RECON_FILTERS):
            raise ValueError(f"recon_filters must be a non-empty choice of {RECON_FILTERS}, got {list(cfg.recon_filters)}")
        self.cfg, self.context, self.seed_key = cfg, context, list(seed_key)
        self.rng = np.random.default_rng(self.seed_key)  # replaced by the training stream
        self.volumes = list(volumes)
        self._keys = [_volume_key(v) for v in self.volumes] if cfg.task != "super-resolve" else []
        self.targets = [np.clip(v.array, HU_MIN, HU_MAX) for v in volumes]
        self.inputs: List[List[np.ndarray]] = []
        if cfg.task == "super-resolve":
            for i, v in enumerate(volumes):
                low = degrade_resolution(v, cfg.scale)
                s = cfg.scale
                self.targets[i] = self.targets[i][:, : low.shape[1] * s, : low.shape[2] * s]
                self.inputs.append([low.array])
                report(progress, (i + 1) / len(volumes), "degrading resolution")
        else:
            # which generation each slot holds at start_step: the initial one, or the last refresh
            latest = {(i, j): None for i in range(len(volumes)) for j in range(cfg.pool_size)}
            if cfg.refresh_every:
                for step in range(cfg.refresh_every, start_step + 1, cfg.refresh_every):
                    latest[self._refresh_slot(step)] = step
            total, done = len(latest), 0
            self.inputs = [[None] * cfg.pool_size for _ in volumes]
            # with a disk cache, first what no other process is simulating, then wait for the rest
            for wait in (False, True):
                for (i, j), step in sorted(latest.items()):
                    if self.inputs[i][j] is not None:
                        continue
                    check_cancel(cancel)
                    self.inputs[i][j] = self._simulate(i, j, step, wait)
                    if self.inputs[i][j] is not None:
                        done += 1
                        report(progress, done / total, "simulating low-dose training pairs")
        self.weights = np.array([t.size for t in self.targets], float)
        self.weights /= self.weights.sum()

    def _refresh_slot(self, step: int) -> Tuple[int, int]:
        r = np.random.default_rng(self.seed_key + [2, step])
        return int(r.integers(len(self.volumes))), int(r.integers(self.cfg.pool_size))

    def _photons(self, i: int, wait: bool = True) -> Optional[float]:
        """The incident photon count of volume ``i``'s scan, calibrated once to its own noise.

        A dose reduction scales the photons of one scanner and patient, so every realisation of a
        volume, whatever its dose, uses the same calibrated count (the same for every rank and
        on resume: the calibration is seeded by the volume's index alone).
        """
        key = self._keys[i] + (i,)
        if key not in _PHOTONS:
            photons = _on_disk(("photons",) + key, lambda: np.float64(
                simulate_low_dose(self.volumes[i], 0.25, seed=i).metadata["low_dose"]["photons"]), wait)
            if photons is None:
                return None
            _PHOTONS[key] = float(photons)
        return _PHOTONS[key]

    def _simulate(self, i: int, j: int, step: Optional[int], wait: bool = True) -> Optional[np.ndarray]:
        key = self.seed_key + ([1, i, j] if step is None else [3, step])
        r = np.random.default_rng(key)
        dose = float(r.uniform(*self.cfg.dose_range))
        seed, photons = int(r.integers(2**31)), self._photons(i, wait)
        if photons is None:
            return None
        # the noise texture: one of the configured reconstruction filters (a single one draws nothing, so
        # runs configured before there was a choice rebuild exactly the pool they had)
        filters = tuple(self.cfg.recon_filters)
        recon = filters[int(r.integers(len(filters)))] if len(filters) > 1 else filters[0]
        key = self._keys[i] + (dose, seed, photons, recon)
        if key in _SIMULATIONS:
            _SIMULATIONS.move_to_end(key)
            return _SIMULATIONS[key]
        scanner = None if recon == "hann" else ScannerModel().with_(recon_filter=recon)
        array = _on_disk(key, lambda: simulate_low_dose(self.volumes[i], dose, seed=seed, photons=photons,
                                                        scanner=scanner).array, wait)
        if array is None:
            return None
        array.setflags(write=False)  # shared between pools: never modified
        _SIMULATIONS[key] = array
        while len(_SIMULATIONS) > _CACHE_SIZE:
            _SIMULATIONS.popitem(last=False)
        return array

    def refresh(self, step: int) -> None:
        """Re-simulate the realisation that ``step`` picks (enhancement only)."""
        if self.cfg.task != "enhance":
            return
        i, j = self._refresh_slot(step)
        self.inputs[i][j] = self._simulate(i, j, step)

    def batch(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(inputs (n, 2c+1, p_in, p_in), targets (n, 1, p, p)) in HU, augmented."""
        cfg = self.cfg
        s = cfg.scale if cfg.task == "super-resolve" else 1
        p_out, p_in = cfg.patch_size, cfg.patch_size // s
        xs, ys = [], []
        for _ in range(n):
            i = int(self.rng.choice(len(self.targets), p=self.weights))
            source = self.inputs[i][int(self.rng.integers(len(self.inputs[i])))]
            k = int(self.rng.integers(source.shape[0]))
            y0 = int(self.rng.integers(source.shape[1] - p_in + 1))
            x0 = int(self.rng.integers(source.shape[2] - p_in + 1))
            x = slab(source, k, self.context)[:, y0:y0 + p_in, x0:x0 + p_in]
            y = self.targets[i][k:k + 1, y0 * s:y0 * s + p_out, x0 * s:x0 * s + p_out]
            rot, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            x, y = np.rot90(x, rot, axes=(1, 2)), np.rot90(y, rot, axes=(1, 2))
            if flip:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ys)).float()
