"""Physics-based low-dose CT simulation and resolution degradation.

``simulate_low_dose`` turns a normal-dose CT into the CT the same scanner would
have produced at a fraction of the dose; ``degrade_resolution`` mimics a coarser
acquisition. Both return a new :class:`~QHQGANLib.core.volume.Volume` and never modify
their input.

Method (noise insertion in the projection domain)
-------------------------------------------------
The input image already carries the noise of its full-dose acquisition, so only the
*extra* noise a lower dose brings is inserted, as in Yu et al., "Development and
validation of a practical lower-dose-simulation tool for optimizing CT scan
protocols", Med Phys 39(8):4710, 2012, and Zeng et al., "A simple low-dose x-ray CT
simulation from high-dose scan", IEEE TNS 62(5):2226, 2015. For every axial slice:

1. HU -> linear attenuation ``mu = mu_water * (1 + HU/1000)`` (clipped at 0, so air and
   the padding outside the scan circle attenuate nothing). Padding recorded by DICOM
   (``metadata["padding_hu"]``, :mod:`QHQGANLib.core.padding`) is simulated as air, marks the
   edge of the field of view for the truncation model, and is put back unchanged: no noise.
2. Forward projection (parallel beam, ASTRA's CPU projector) gives the line integrals
   ``p`` and the expected full-dose counts ``lam = I0 * exp(-p)`` of every ray (``I0``
   varies with the view angle under tube-current modulation, ``ScannerModel``).
3. Full-dose counts ``I_fd = Poisson(lam) + N(0, sigma_e^2)`` and the matching low-dose
   counts by binomial thinning of the *same* photons,
   ``I_ld = Binomial(Poisson(lam), a) + a * e_fd + N(0, (1 - a^2) sigma_e^2)``.
   ``Binomial(Poisson(lam), a) ~ Poisson(a*lam)``, so ``I_ld`` is exactly a low-dose
   measurement (quantum ``Poisson(a I0 e^-p)`` plus electronic variance ``sigma_e^2``),
   and it is *correlated* with ``I_fd`` the way a real dose reduction is: both are
   clipped at ``ScannerModel.min_counts`` and log-transformed,
   ``p_fd = -log(I_fd / I0)``, ``p_ld = -log(I_ld / (a I0))``.
4. ``delta = p_ld - p_fd`` has (to first order) the variance
   ``(1/a - 1)/lam + (1/a^2 - 1) sigma_e^2/lam^2``: the extra variance only, so the
   inserted image noise grows like ``sqrt(1/a - 1)`` while quantum noise dominates and
   faster in photon-starved rays, where the electronic term takes over (as on a real
   scanner). ``delta`` is reconstructed by filtered back-projection (ASTRA ``FBP``) and
   added to the input, converted to HU (``1000 * dmu / mu_water``).

Because FBP is linear, only the noise sinogram is reconstructed; the image itself is
never re-reconstructed, so dose 1.0 returns the input exactly and the sharpness, the
kernel and the artefacts of the original reconstruction are kept. The forward
projection only sets the noise variance per ray, so by default it runs on a 2x coarser
grid (half the views, bins and pixels; ``projection_downsample``) and is interpolated
back: eight times cheaper, and the variance map it gives differs from the exact one only
at sharp edges.

Noise level: calibrated to the scan's own noise
-----------------------------------------------
Dose ``a`` adds noise of std ``sqrt(1/a - 1) x sigma_own`` to a quantum-limited scan, so the
photon count ``I0`` is *solved for*: ``sigma_own`` is estimated from the image (or given),
and a pilot on a few slices finds the ``I0`` that inserts that much noise in their uniform
soft tissue (:mod:`QHQGANLib.physics.calibration`). ``photons=`` fixes ``I0`` instead;
``photons=1e6`` (the old default) gives ~14 HU of full-dose noise in the centre of a 320 mm
water cylinder on 0.8 mm pixels (``Testing/Benchmarks/bench_lowdose.py``). ``I0`` is per
detector element of width ``detector_bin_mm``; the simulator's bins (one per pixel) get
``I0 * pixel / detector_bin_mm``. A patient larger than the field of view is continued for
the forward projection (:mod:`QHQGANLib.physics.truncation`).

Console usage::

    >>> import QHQGANLib as q
    >>> low = q.simulate_low_dose(ct, dose_fraction=0.25, seed=0)    # quarter dose
    >>> low.metadata["low_dose"]["inserted_noise_hu"], low.metadata["low_dose"]["reference_noise_hu"]
    >>> fixed = q.simulate_low_dose(ct, 0.25, seed=0, photons=1e6)    # a fixed photon count
    >>> low10 = q.simulate_low_dose(ct, 0.1, scanner=q.ScannerModel(n_views=1160))
    >>> coarse = q.degrade_resolution(ct, scale=2)                    # 2x coarser pixels
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.orientation import to_axial
from ..core.padding import as_air, padding_mask, padding_value, restore_padding
from ..core.progress import OperationCancelled, check_cancel, report
from ..core.volume import Volume, require_finite
from .calibration import (calibrate_photons, pilot_slices, positive_or_none, reference_noise, rms_in_masks,
                          sample_slices)
from .projector import _block_mean_local as _block_mean  # mean over f x f blocks (edge-padded)
from .projector import make_parallel_beam  # ASTRA, or the numpy fallback where ASTRA has no wheel
from .truncation import MODES as TRUNCATION_MODES, plan_extension

ProgressCallback = Callable[[float, str], None]


# the shared cancellation error (QHQGANLib.core.progress); ``Cancelled`` kept as a short alias
Cancelled = OperationCancelled

#: Seed of the calibration pilot's own random stream (combined with ``seed``): deterministic.
PILOT_SEED = 0x10D05E


@dataclass(frozen=True)
class ScannerModel:
    """Acquisition parameters of the simulated scanner (defaults: a 120 kVp clinical CT).

    Attributes
    ----------
    incident_photons:
        ``I0``, unattenuated photons per detector element (of width ``detector_bin_mm``) per
        view at full dose (mean over views). Used only when ``simulate_low_dose`` cannot
        measure the input's own noise (otherwise ``I0`` is calibrated, or ``photons=`` fixes
        it). 1e6 gives ~14 HU noise in a 320 mm water cylinder at 0.8 mm pixels; clinical body
        scans are 1e5-1e6 (Zeng 2015); noise std scales as ``1/sqrt(I0)``.
    electronic_noise_var:
        ``sigma_e^2`` in counts^2: variance of the detector's electronic noise per
        measurement. Yu et al. 2012 measured about 10-11 counts^2 on Siemens Definition
        scanners; 0 switches it off (pure quantum noise).
    n_views:
        Projection angles over 180 degrees (parallel beam); 720 match ~1440 fan-beam views
        per rotation (clinical: ~1000-2300). More views: finer noise texture, more time.
    detector_bin_mm:
        Width at the isocentre of the detector element ``I0`` refers to (Siemens Definition:
        ~0.55 mm); the default 1.0 mm is a round reference width.
    mu_water:
        Attenuation of water (1/mm): 0.0192 at ~70 keV (NIST XCOM), a 120 kVp beam's effective energy.
    recon_filter:
        ASTRA FBP filter of the inserted noise ('ram-lak', 'shepp-logan', 'cosine', 'hamming',
        'hann'...): 'hann' approximates a soft-tissue kernel; sharper ones give finer noise.
    min_counts:
        Counts are clipped below at this value before the log (as a scanner does).
    tube_current_modulation:
        Exponent ``m`` of angular tube-current modulation (automatic exposure control):
        the incident photons of view ``theta`` scale as ``exp(m * p_max(theta))``,
        normalised to the same mean (same dose), ``p_max`` being the largest line integral
        of the view. ``m = 0.5`` is the noise-optimal ``mA ~ sqrt(attenuation)`` rule (Gies
        et al., Med Phys 26:2235, 1999) that clinical AEC approximates: lateral views of a
        patient get more photons, which limits photon starvation. 0 = constant tube
        current. A round phantom is unaffected (all views alike).
    """

    incident_photons: float = 1.0e6
    electronic_noise_var: float = 10.0
    n_views: int = 720
    detector_bin_mm: float = 1.0
    mu_water: float = 0.0192
    recon_filter: str = "hann"
    min_counts: float = 1.0
    tube_current_modulation: float = 0.5

    def __post_init__(self) -> None:
        for name in ("incident_photons", "detector_bin_mm", "mu_water", "min_counts"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"ScannerModel.{name} must be a positive number, got {value!r}")
        if not (np.isfinite(self.electronic_noise_var) and self.electronic_noise_var >= 0):
            raise ValueError(f"ScannerModel.electronic_noise_var must be >= 0, got {self.electronic_noise_var!r}")
        if not (np.isfinite(self.tube_current_modulation) and 0 <= self.tube_current_modulation <= 1):
            raise ValueError(f"ScannerModel.tube_current_modulation must be in [0, 1], got {self.tube_current_modulation!r}")
        if int(self.n_views) != self.n_views or self.n_views < 8:
            raise ValueError(f"ScannerModel.n_views must be an integer >= 8, got {self.n_views!r}")

    def with_(self, **changes) -> "ScannerModel":
        """A copy with some parameters changed, e.g. ``ScannerModel().with_(n_views=360)``."""
        return replace(self, **changes)


# --- helpers -------------------------------------------------------------------------

class _ParallelBeam:
    """ASTRA 2D parallel-beam projector + FBP for one slice size, in units of image pixels.

    The volume is centred on the origin with unit pixels; ``n_det`` unit bins cover the
    image diagonal. ``project_coarse`` returns the line integrals (in pixel lengths) on the
    full (views, bins) grid, computed on an ``f``-times coarser grid and interpolated.
    """

    def __init__(self, ny: int, nx: int, n_views: int, recon_filter: str, downsample: int = 2,
                 pad: Tuple[int, int] = (0, 0)):
        import astra

        self.astra = astra
        self.ny, self.nx, self.n_views = ny, nx, n_views
        py, px = pad  # the forward projection sees (ny + 2 py, nx + 2 px) pixels: a truncation model
        self.n_det = int(math.ceil(math.hypot(ny, nx))) + 2
        self.angles = np.linspace(0.0, np.pi, n_views, endpoint=False)
        self.vol_geom = astra.create_vol_geom(ny, nx)
        self.proj_geom = astra.create_proj_geom("parallel", 1.0, self.n_det, self.angles)
        self.projector = astra.create_projector("linear", self.proj_geom, self.vol_geom)
        self.fwd_projector = self.projector
        if py or px:  # rays through the padded canvas, detector unchanged
            ext_geom = astra.create_vol_geom(ny + 2 * py, nx + 2 * px, -nx / 2.0 - px, nx / 2.0 + px,
                                             -ny / 2.0 - py, ny / 2.0 + py)
            self.fwd_projector = astra.create_projector("linear", self.proj_geom, ext_geom)
        self.recon_filter = recon_filter
        # coarse forward projector: same physical extent, f-times larger pixels and bins
        self.f = max(1, int(downsample))
        f = self.f
        self.cny, self.cnx = -(-(ny + 2 * py) // f), -(-(nx + 2 * px) // f)
        self.c_views = -(-n_views // f)
        self.c_det = int(math.ceil(self.n_det / f)) + 2
        ext_y, ext_x = self.cny * f, self.cnx * f  # padded extent (pixels of the fine grid)
        # the fine grid spans x in [-nx/2 - px, nx/2 + px] (column 0 at min x) and y likewise
        # (row 0 at max y); the coarse grid is padded at the last row and column
        x0, y1 = -nx / 2.0 - px, ny / 2.0 + py
        self.c_vol_geom = astra.create_vol_geom(self.cny, self.cnx, x0, x0 + ext_x, y1 - ext_y, y1)
        self.c_angles = self.angles[::f]
        self.c_proj_geom = astra.create_proj_geom("parallel", float(f), self.c_det, self.c_angles)
        self.c_projector = astra.create_projector("linear", self.c_proj_geom, self.c_vol_geom)
        # detector coordinates (fine bins) expressed as coarse-bin indices
        t = np.arange(self.n_det) - (self.n_det - 1) / 2.0
        self._t_idx = t / f + (self.c_det - 1) / 2.0

    def close(self) -> None:
        self.astra.projector.delete(list({self.projector, self.fwd_projector, self.c_projector}))

    def project_coarse(self, img: np.ndarray) -> np.ndarray:
        astra = self.astra
        f = self.f
        if f == 1:
            sid, sino = astra.create_sino(np.ascontiguousarray(img, np.float32), self.fwd_projector)
            astra.data2d.delete(sid)
            return sino.astype(np.float64)
        coarse = _block_mean(img, f).astype(np.float32)
        sid, sino = astra.create_sino(coarse, self.c_projector)
        astra.data2d.delete(sid)
        sino = sino.astype(np.float64)
        # interpolate bins (linear, zero outside)
        ci = self._t_idx
        i0 = np.clip(np.floor(ci).astype(int), 0, self.c_det - 2)
        w = ci - i0
        sino = sino[:, i0] * (1 - w) + sino[:, i0 + 1] * w
        # interpolate views, using p(theta + pi, t) = p(theta, -t) to close the circle
        wrapped = np.concatenate([sino, sino[:1, ::-1]], axis=0)
        pos = np.arange(self.n_views) / f  # fine view index in coarse-view units
        j0 = np.floor(pos).astype(int)
        wv = (pos - j0)[:, None]
        # the coarse views are exact multiples of f fine steps except the wrap (pi)
        j1 = j0 + 1
        step_last = (np.pi - self.c_angles[-1]) / (np.pi / self.n_views) / f  # may differ from 1
        last = j0 == self.c_views - 1
        wv[last, 0] = (pos[last] - j0[last]) / step_last
        return np.clip(wrapped[j0] * (1 - wv) + wrapped[j1] * wv, 0.0, None)

    def fbp(self, sino: np.ndarray) -> np.ndarray:
        astra = self.astra
        sid = astra.data2d.create("-sino", self.proj_geom, np.ascontiguousarray(sino, np.float32))
        rid = astra.data2d.create("-vol", self.vol_geom)
        cfg = astra.astra_dict("FBP")
        cfg["ProjectorId"] = self.projector
        cfg["ProjectionDataId"] = sid
        cfg["ReconstructionDataId"] = rid
        cfg["FilterType"] = self.recon_filter
        alg = astra.algorithm.create(cfg)
        try:
            astra.algorithm.run(alg)
            return astra.data2d.get(rid)
        finally:
            astra.algorithm.delete(alg)
            astra.data2d.delete([sid, rid])


def _view_weights(p: np.ndarray, scanner: ScannerModel) -> np.ndarray:
    """Relative photons of every view under tube-current modulation, mean 1 (same dose): (views, 1)."""
    if scanner.tube_current_modulation <= 0:
        return np.ones((p.shape[0], 1))
    w = scanner.tube_current_modulation * p.max(axis=1)
    w = np.exp(w - w.max())
    return (w / w.mean())[:, None]


def _noise_sinogram(p: np.ndarray, a: float, scanner: ScannerModel, i0: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``p_ld - p_fd`` for line integrals ``p`` (dimensionless): the extra noise of dose ``a``."""
    if scanner.tube_current_modulation > 0:  # per-view photons, same mean (same dose)
        i0 = i0 * _view_weights(p, scanner)
    lam = i0 * np.exp(-p)
    quanta = rng.poisson(lam)
    sigma_e = math.sqrt(scanner.electronic_noise_var)
    c = scanner.min_counts
    e_fd = rng.normal(0.0, sigma_e, size=p.shape) if sigma_e > 0 else 0.0
    i_fd = quanta + e_fd  # float64 either way
    thinned = rng.binomial(quanta, a)
    i_ld = thinned + a * e_fd
    if sigma_e > 0 and a < 1:
        i_ld = i_ld + rng.normal(0.0, sigma_e * math.sqrt(1.0 - a * a), size=p.shape)
    p_fd = -np.log(np.maximum(i_fd, c) / i0)
    p_ld = -np.log(np.maximum(i_ld, c) / (a * i0))
    return p_ld - p_fd


def _in_plane_spacing(volume: Volume, what: str) -> float:
    dx, dy = volume.spacing[0], volume.spacing[1]
    if abs(dx - dy) > 1e-3 * max(dx, dy):
        raise ValueError(
            f"{what} needs square in-plane pixels, got spacing x={dx} mm, y={dy} mm; "
            "resample the volume to square pixels first")
    return 0.5 * (dx + dy)


# --- public API ----------------------------------------------------------------------

def simulate_low_dose(volume: Volume, dose_fraction: float, seed: Optional[int] = None,
                      scanner: Optional[ScannerModel] = None,
                      progress: Optional[ProgressCallback] = None, cancel=None,
                      projection_downsample: int = 2, reference_noise_hu: Optional[float] = None,
                      photons: Optional[float] = None, truncation: str = "auto") -> Volume:
    """Simulate the same scan at ``dose_fraction`` of its dose (new Volume, same grid).

    Parameters
    ----------
    volume:
        Normal-dose CT in HU (its own noise is the full-dose noise).
    dose_fraction:
        ``a`` in (0, 1]: 0.25 is a quarter-dose scan. 1.0 returns an identical copy.
    seed:
        Seed of the random generator (``numpy.random.default_rng``); same seed, same result.
    scanner:
        :class:`ScannerModel` (default: ``ScannerModel()``, 120 kVp clinical CT). Its
        ``incident_photons`` is used only with ``photons`` unset and an unmeasurable noise.
    progress:
        Optional ``progress(fraction, message)`` called after the calibration and after each
        slice, fraction non-decreasing from 0 to exactly 1. Silent by default.
    cancel:
        Optional object with ``is_set()`` (e.g. ``threading.Event``), checked several times
        per slice; when set, :class:`Cancelled` is raised.
    projection_downsample:
        Grid coarsening of the forward projection that sets the noise variance (1 =
        exact, 2 = default, ~8x cheaper). The FBP of the noise is always at full size.
    reference_noise_hu:
        The input's own noise (HU, std in soft tissue); default: estimated from the image
        (:func:`QHQGANLib.physics.calibration.estimate_noise`).
    photons:
        A fixed incident photon count (the unit of ``ScannerModel.incident_photons``): no
        calibration. ``photons=1e6`` is the behaviour before calibration existed.
    truncation:
        ``"auto"``: a patient cut by the field of view is continued for the forward projection
        (:mod:`QHQGANLib.physics.truncation`); ``"off"``: the image alone.

    Returns a new Volume (same geometry, metadata plus a ``history`` note) with
    ``metadata["low_dose"]``: ``dose_fraction``, ``reference_noise_hu`` and its
    ``reference_noise_source`` ("estimated", "given", "none" with ``photons``, "unmeasurable":
    no measurable noise, ``scanner.incident_photons`` used, with a warning), ``photons``,
    ``target_inserted_noise_hu``, ``inserted_noise_hu`` (measured: RMS of output minus input in
    the soft tissue of ``measured_on_slices``), ``calibration``, ``truncation``. ~1.3 s per
    512x512 slice (one CPU core, 720 views), plus ~1 s per pilot slice (at most 3).
    """
    require_finite(volume, "simulate_low_dose")
    axial, undo = to_axial(volume)  # a scanner acquires axial planes: a coronal or sagittal storage is simulated
    if axial is not volume:         # on its axial planes and stored back in its own order (issue #28)
        return undo(simulate_low_dose(axial, dose_fraction, seed, scanner, progress, cancel, projection_downsample,
                                      reference_noise_hu, photons, truncation))
    scanner = ScannerModel() if scanner is None else scanner
    if not isinstance(scanner, ScannerModel):
        raise TypeError(f"scanner must be a ScannerModel, got {type(scanner).__name__}")
    try:
        a = float(dose_fraction)
    except (TypeError, ValueError):
        raise TypeError(f"dose_fraction must be a number in (0, 1], got {dose_fraction!r}") from None
    if not (np.isfinite(a) and 0.0 < a <= 1.0):
        raise ValueError(f"dose_fraction must be in (0, 1] (1 = full dose, 0.25 = quarter dose), got {dose_fraction!r}")
    reference = positive_or_none("reference_noise_hu", reference_noise_hu)
    photons = positive_or_none("photons", photons)
    if reference is not None and photons is not None:
        raise ValueError("give reference_noise_hu (calibrate to it) or photons (a fixed count), not both")
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
    pixel_mm = _in_plane_spacing(volume, "simulate_low_dose")
    nz, ny, nx = volume.shape
    check_cancel(cancel)
    report(progress, 0.0, "simulating low dose")
    record: Dict[str, object] = {"dose_fraction": a}
    if a == 1.0:
        out = volume.with_array(volume.array, note=f"simulate_low_dose(dose_fraction=1, seed={seed}): unchanged")
        out.metadata["low_dose"] = dict(record, inserted_noise_hu=0.0)
        report(progress, 1.0, "done (full dose: unchanged)")
        return out

    f = max(1, int(projection_downsample))
    pad = padding_mask(volume)  # the scanner's padding (core.padding): air here, put back unchanged at the end
    source = as_air(volume.array, pad)
    ext = plan_extension(source, pixel_mm, truncation, multiple=f, outside=pad)
    hu_px = 1000.0 / scanner.mu_water / pixel_mm  # HU per (1/pixel) of reconstructed attenuation
    bin_ratio = pixel_mm / scanner.detector_bin_mm  # simulated bins get I0 * pixel / detector_bin photons

    def line_integrals(g: _ParallelBeam, k: int) -> np.ndarray:
        sl = source[k].astype(np.float64)
        mu_px = np.clip(scanner.mu_water * (1.0 + sl / 1000.0), 0.0, None) * pixel_mm  # 1/pixel
        return g.project_coarse(ext.attenuation(k, sl, mu_px, scanner.mu_water * pixel_mm))

    measured_on: Optional[Tuple[List[int], List[np.ndarray]]] = None
    done = 0.0
    record.update(reference_noise_hu=None, reference_noise_source="none")
    if photons is None:
        reference, origin, candidates, why = reference_noise(source, pixel_mm, reference)
        record.update(reference_noise_hu=reference, reference_noise_source=origin)
        if reference is None:
            warnings.warn(f"simulate_low_dose: {why}; using the scanner's fixed {scanner.incident_photons:g} "
                          "photons (pass reference_noise_hu= or photons=)", RuntimeWarning, stacklevel=2)
            photons = scanner.incident_photons
        else:
            target = math.sqrt(1.0 / a - 1.0) * reference
            measured_on = pilot_slices(source, pixel_mm, reference, candidates)
            n_pilot = min(scanner.n_views, max(60, scanner.n_views // 4))
            pilot = make_parallel_beam(_ParallelBeam, ny, nx, n_pilot, scanner.recon_filter, f, ext.pad)
            try:
                sinos = [line_integrals(pilot, k) for k in measured_on[0]]
                i0_bin, details = calibrate_photons(
                    sinos, measured_on[1], lambda s: pilot.fbp(s) * hu_px, lambda p: _view_weights(p, scanner),
                    lambda p, i0, r: _noise_sinogram(p, a, scanner, i0, r), a, target,
                    scanner.electronic_noise_var, n_pilot / scanner.n_views,
                    np.random.default_rng([PILOT_SEED, 0 if seed is None else int(seed)]),
                    check=lambda: check_cancel(cancel))
            finally:
                pilot.close()
            photons = i0_bin / bin_ratio
            first = details.pop("first_order_photons_per_ray") / bin_ratio
            record.update(target_inserted_noise_hu=target, calibration=dict(
                details, first_order_photons=first, pilot_slices=measured_on[0], pilot_views=n_pilot))
            done = 0.75 * len(measured_on[0]) / (0.75 * len(measured_on[0]) + nz)
            report(progress, done, f"calibrated: {photons:.3g} photons for +{target:.1f} HU")

    rng = np.random.default_rng(seed)
    i0_bin = photons * bin_ratio
    note = (f"simulate_low_dose(dose_fraction={a:g}, seed={seed}, I0={photons:.4g}, reference noise "
            f"{'none' if reference is None else f'{reference:.2f} HU'} ({record['reference_noise_source']}), "
            f"sigma_e^2={scanner.electronic_noise_var:g}, views={scanner.n_views}, filter={scanner.recon_filter}, "
            f"tcm={scanner.tube_current_modulation:g}, truncation={truncation})")
    geom = make_parallel_beam(_ParallelBeam, ny, nx, scanner.n_views, scanner.recon_filter, f, ext.pad)
    out = np.empty_like(volume.array)
    try:
        for k in range(nz):
            check_cancel(cancel)
            p = line_integrals(geom, k)  # dimensionless line integrals
            check_cancel(cancel)
            delta = _noise_sinogram(p, a, scanner, i0_bin, rng)
            check_cancel(cancel)
            out[k] = source[k] + (geom.fbp(delta) * hu_px).astype(np.float32)
            report(progress, done + (1.0 - done) * (k + 1) / nz, f"slice {k + 1}/{nz}")
    finally:
        geom.close()
    check_cancel(cancel)
    if measured_on is None:
        measured_on = pilot_slices(source, pixel_mm, None, sample_slices(nz, ny * nx))
    diffs = [out[k].astype(np.float64) - source[k] for k in measured_on[0]]
    record.update(photons=float(photons), inserted_noise_hu=rms_in_masks(diffs, measured_on[1]),
                  measured_on_slices=list(measured_on[0]), truncation=ext.info)
    low = restore_padding(volume.with_array(out, note=note), pad, padding_value(volume))
    low.metadata["low_dose"] = record
    return low
