"""A scan's own noise, and the photon count that makes a simulated dose reduction match it.

Reducing the dose of a quantum-limited scan to a fraction ``d`` multiplies its noise variance
by ``1/d``, so the noise a simulation must *add* has the standard deviation
``sqrt(1/d - 1) x sigma_own``, where ``sigma_own`` is the noise the scan already has. This
module estimates ``sigma_own`` from the image (:func:`estimate_noise`) and solves for the
incident photon count that makes :func:`QHQGANLib.physics.lowdose.simulate_low_dose` insert
exactly that much (:func:`photons_for_target`, :func:`refine_photons`).

The noise estimator
-------------------
``sigma_own`` is the standard deviation of the noise in homogeneous soft tissue (-100 to
200 HU), measured in a way that ignores anatomy as far as possible:

1. **Where**: pixels whose value after a light Gaussian smoothing (1.5 mm) lies in
   [-100, 200] HU and whose smoothed gradient is below 15 HU/mm (raised automatically
   for very noisy images, so noise alone never empties the mask): fat, muscle and organ
   parenchyma away from edges, vessels and bone (:func:`soft_tissue_mask`).
2. **What**: second differences at a lag of ``k`` pixels along both axes,
   ``x[i-k] - 2 x[i] + x[i+k]``, with ``k = round(2.5 mm / pixel)`` (at least 1), using only
   triples that lie entirely in the mask. A second difference cancels any constant or
   linear trend of the anatomy, and for noise whose correlation has died out after ``k``
   pixels its mean square is exactly ``6 sigma^2``. CT noise from filtered back-projection
   decorrelates within ~2 mm (its noise power spectrum rises from zero like a ramp), so 2.5 mm
   is beyond its correlation length on any pixel size; on coarse images (3 mm pixels) the
   lag is one pixel and the noise is nearly white anyway.
3. **Robust summary**: the mean square of those differences in windows of about 8 mm
   (5 to 15 pixels), kept where the window is at least 80 % inside the mask, gives a local
   noise level per pixel; the estimate is the *median* of the local levels over all masked
   pixels of the sampled slices. Windows that still hold structure (a small vessel, an
   organ boundary below the gradient limit) lie in the upper tail and do not move the
   median.

Bias (measured on real slices smoothed by a 3-pixel Gaussian, plus noise of a known level:
``Testing/test_lowdose_calibration.py``): within 2 % on 512x512 abdomen and head slices for
white, Gaussian-correlated (0.7 pixel) and FBP noise (the simulator's own) of 15 and 40 HU;
up to +10 % on the dense anatomy of the 85 mm ``CT_small`` crop. Upwards: anatomy that curves
within 2.5 mm and survives the mask (organ texture, small vessels; on coarse pixels, the
pixel-scale texture of muscle and fat: 10-17 HU on the neck slices of the 3.2 mm VTK head,
against 2.6-3 HU on its brain slices and 4.3 HU over the whole volume). Downwards: noise
correlated beyond ~2.5 mm (a very smooth kernel: Gaussian-correlated noise of 1 pixel on 1 mm
pixels reads ~10 % low). On a non-uniform noise field (a body's centre is noisier than its
periphery) the median of local levels is within a few per cent of the root mean square.
Quantised (integer) HU add ``1/12 HU^2`` of variance: negligible above ~1 HU.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.physics.calibration import estimate_noise, soft_tissue_mask
    >>> ct = q.read_volume("abdomen-ct-kits/CT20.dcm")
    >>> est = estimate_noise(ct)
    >>> est.noise_hu, est.lag_px, est.window_px, est.n_pixels      # (18.0, 4, 13, 68633)
    >>> mask = soft_tissue_mask(ct.array[0], pixel_mm=ct.spacing[0])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.volume import Volume

#: Soft tissue (fat to enhanced organ), HU: where the noise is measured.
SOFT_TISSUE_HU: Tuple[float, float] = (-100.0, 200.0)
#: Lag of the second differences (mm): beyond the correlation length of CT noise.
LAG_MM = 2.5
#: Side of the windows of the local noise levels (mm; 5 to 15 pixels).
WINDOW_MM = 8.0
#: Largest smoothed gradient (HU/mm) of a pixel counted as uniform tissue.
MAX_GRADIENT_HU_PER_MM = 15.0
#: Below this (HU) a scan counts as noise-free: there is nothing to calibrate against.
NOISE_FLOOR_HU = 0.5
#: Fewest masked pixels for an estimate.
MIN_PIXELS = 200


@dataclass(frozen=True)
class NoiseEstimate:
    """The result of :func:`estimate_noise`.

    ``noise_hu``: the estimated standard deviation of the scan's own noise in soft tissue
    (NaN when fewer than ``MIN_PIXELS`` pixels qualify); ``lag_px``, ``window_px``: the
    second-difference lag and window side used; ``n_pixels``: masked pixels with a local
    level; ``slices``: the slice indices sampled.
    """

    noise_hu: float
    lag_px: int
    window_px: int
    n_pixels: int
    slices: Tuple[int, ...]

    @property
    def ok(self) -> bool:
        """Whether the estimate is usable (enough tissue and above the noise floor)."""
        return bool(np.isfinite(self.noise_hu) and self.noise_hu >= NOISE_FLOOR_HU)


def sample_slices(nz: int, slice_pixels: int, budget: int = 2_000_000) -> List[int]:
    """Evenly spaced slice indices whose pixels fit ``budget`` (all slices when they fit).

    512x512 slices: 7 of them; 64x64 slices: up to 488.
    """
    n = min(nz, max(1, budget // max(1, slice_pixels)))
    if n >= nz:
        return list(range(nz))
    return sorted({int(round(v)) for v in np.linspace(0, nz - 1, n + 2)[1:-1]})


def _smoothed(image: np.ndarray, pixel_mm: float) -> Tuple[np.ndarray, np.ndarray, float]:
    from scipy import ndimage as ndi

    s = max(0.5, 1.5 / pixel_mm)
    smooth = ndi.gaussian_filter(image, s)
    gy = ndi.gaussian_filter(image, s, order=(1, 0))
    gx = ndi.gaussian_filter(image, s, order=(0, 1))
    return smooth, np.hypot(gx, gy) / pixel_mm, s


def soft_tissue_mask(image: np.ndarray, pixel_mm: float, hu_range: Tuple[float, float] = SOFT_TISSUE_HU,
                     max_gradient: float = MAX_GRADIENT_HU_PER_MM, noise_hu: Optional[float] = None) -> np.ndarray:
    """Uniform soft tissue of one 2D slice: smoothed HU within ``hu_range`` and smoothed gradient
    below ``max_gradient`` HU/mm.

    ``noise_hu`` (when known) raises the gradient limit to 4x the gradient that white noise of
    that level leaves after the smoothing, so a very noisy image keeps its tissue.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"soft_tissue_mask takes one 2D slice, got shape {image.shape}")
    smooth, grad, s = _smoothed(image, pixel_mm)
    if noise_hu is not None and np.isfinite(noise_hu):
        max_gradient = max(max_gradient, 4.0 * noise_hu / (math.sqrt(8 * math.pi) * s * s) / pixel_mm)
    return (smooth > hu_range[0]) & (smooth < hu_range[1]) & (grad < max_gradient)


def _window_mean_square(image: np.ndarray, mask: np.ndarray, lag: int, window: int) -> Tuple[np.ndarray, np.ndarray]:
    """Window means of the squared second differences at ``lag`` (both axes) / 6, and the window
    fill (fraction of the possible differences that lie entirely in ``mask``)."""
    from scipy import ndimage as ndi

    acc = np.zeros_like(image)
    cnt = np.zeros_like(image)
    for axis in (0, 1):
        if image.shape[axis] <= 2 * lag:
            continue
        lo, mid, hi = [slice(None)] * 2, [slice(None)] * 2, [slice(None)] * 2
        lo[axis], mid[axis], hi[axis] = slice(0, -2 * lag), slice(lag, -lag), slice(2 * lag, None)
        lo, mid, hi = tuple(lo), tuple(mid), tuple(hi)
        ok = mask[lo] & mask[mid] & mask[hi]
        acc[mid] += np.where(ok, (image[lo] - 2.0 * image[mid] + image[hi]) ** 2 / 6.0, 0.0)
        cnt[mid] += ok
    count = ndi.uniform_filter(cnt, window, mode="constant")
    return ndi.uniform_filter(acc, window, mode="constant") / np.maximum(count, 1e-12), count / 2.0


def _local_levels(image: np.ndarray, mask: np.ndarray, lag: int, window: int) -> np.ndarray:
    """Local noise levels (HU) of the masked pixels whose window is mostly (80 %) inside the mask."""
    ms, fill = _window_mean_square(image, mask, lag, window)
    return np.sqrt(ms[mask & (fill >= 0.8)])


def slice_stack(volume: Union[Volume, np.ndarray], pixel_mm: Optional[float], what: str) -> Tuple[np.ndarray, float]:
    """``(z, y, x)`` array and in-plane pixel size (mm) of a Volume, or of a 2D/3D array with ``pixel_mm`` given."""
    if isinstance(volume, Volume):
        array = volume.array
        pixel_mm = float(pixel_mm if pixel_mm is not None else 0.5 * (volume.spacing[0] + volume.spacing[1]))
    else:
        array = np.asarray(volume)
        if pixel_mm is None:
            raise ValueError(f"{what} needs pixel_mm for a plain array")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{what} takes a 2D slice or a (z, y, x) volume, got shape {array.shape}")
    return array, float(pixel_mm)


def estimate_noise(volume: Union[Volume, np.ndarray], pixel_mm: Optional[float] = None,
                   slices: Optional[Sequence[int]] = None) -> NoiseEstimate:
    """Estimate the standard deviation (HU) of a CT's own noise in uniform soft tissue.

    ``volume``: a :class:`Volume` or an array (2D slice or ``(z, y, x)``; then give
    ``pixel_mm``). ``slices``: the slice indices to use (default: up to 8 evenly spaced, more
    when slices are small). Method and bias: see the module docstring. ~0.05 s per 512x512 slice.
    """
    array, pixel_mm = slice_stack(volume, pixel_mm, "estimate_noise")
    nz, ny, nx = array.shape
    chosen = list(slices) if slices is not None else sample_slices(nz, ny * nx)
    lag = max(1, int(round(LAG_MM / pixel_mm)))
    window = int(np.clip(2 * round(WINDOW_MM / pixel_mm / 2) + 1, 5, 15))

    def pooled(noise_hu: Optional[float]) -> np.ndarray:
        levels = []
        for k in chosen:
            sl = array[k].astype(np.float64)
            levels.append(_local_levels(sl, soft_tissue_mask(sl, pixel_mm, noise_hu=noise_hu), lag, window))
        return np.concatenate(levels) if levels else np.zeros(0)

    levels = pooled(None)
    if levels.size >= MIN_PIXELS:  # second pass: a gradient limit that the noise itself cannot exceed
        levels = pooled(float(np.median(levels)))
    noise = float(np.median(levels)) if levels.size >= MIN_PIXELS else float("nan")
    return NoiseEstimate(noise, lag, window, int(levels.size), tuple(int(k) for k in chosen))


def positive_or_none(name: str, value) -> Optional[float]:
    """``value`` as a positive float, or None; a TypeError/ValueError naming ``name`` otherwise."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def reference_noise(array: np.ndarray, pixel_mm: float,
                    given: Optional[float] = None) -> Tuple[Optional[float], str, List[int], str]:
    """The reference (own) noise of ``array`` (z, y, x) for a calibration.

    Returns ``(noise_hu, source, candidate_slices, why)``: ``source`` is "given" (``given``
    is used as is), "estimated" (:func:`estimate_noise`) or "unmeasurable" (then ``noise_hu``
    is None and ``why`` says why: no soft tissue, or below ``NOISE_FLOOR_HU``, e.g. a
    noise-free phantom).
    """
    nz, ny, nx = array.shape
    if given is not None:
        return given, "given", sample_slices(nz, ny * nx), ""
    est = estimate_noise(array, pixel_mm)
    if est.ok:
        return est.noise_hu, "estimated", list(est.slices), ""
    why = (f"the input has no measurable noise in uniform soft tissue ({est.noise_hu:.2g} HU over "
           f"{est.n_pixels} pixels; at least {NOISE_FLOOR_HU} HU over {MIN_PIXELS} pixels needed)")
    return None, "unmeasurable", list(est.slices), why


def pilot_slices(array: np.ndarray, pixel_mm: float, noise_hu: Optional[float], candidates: Sequence[int],
                 at_most: Optional[int] = None) -> Tuple[List[int], List[np.ndarray]]:
    """Up to ``at_most`` of the ``candidates`` slices of ``array`` (z, y, x) with the most uniform soft
    tissue, and their :func:`soft_tissue_mask` (the patient, HU > -500, when there is no soft tissue).

    Default ``at_most``: 3 slices of 512x512, more of smaller ones (as many as fit 3 x 512 x 512
    pixels), the slices :func:`QHQGANLib.physics.lowdose.simulate_low_dose` calibrates on."""
    if at_most is None:
        at_most = max(3, 3 * 512 * 512 // (array.shape[1] * array.shape[2]))
    masks = {k: soft_tissue_mask(array[k].astype(np.float64), pixel_mm, noise_hu=noise_hu) for k in candidates}
    best = sorted(sorted(candidates, key=lambda k: -int(masks[k].sum()))[:at_most])
    if sum(int(masks[k].sum()) for k in best) < MIN_PIXELS:
        masks = {k: array[k] > -500.0 for k in best}
    return best, [masks[k] for k in best]


def rms_in_masks(differences: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Root mean square of ``differences`` (e.g. low minus normal dose) over their masks, pooled."""
    total = sum(float(np.sum(np.asarray(d, np.float64)[m] ** 2)) for d, m in zip(differences, masks))
    count = sum(int(m.sum()) for m in masks)
    return math.sqrt(total / count) if count else float("nan")


def photons_for_target(quantum: float, electronic: float, target_hu: float, dose_fraction: float,
                       electronic_noise_var: float) -> float:
    """Photons per ray ``I0`` that give inserted noise ``target_hu`` under the first-order model.

    The inserted image variance is ``(1/a - 1) Q / I0 + (1/a^2 - 1) sigma_e^2 E / I0^2``, where
    ``quantum`` = ``Q`` and ``electronic`` = ``E`` are the image variances (HU^2) that unit
    per-ray variances ``exp(p)`` and ``exp(2p)`` produce (measured once by a pilot
    reconstruction); solved for ``1/I0`` (a quadratic).
    """
    a = dose_fraction
    c1 = (1.0 / a - 1.0) * quantum
    c2 = (1.0 / a ** 2 - 1.0) * electronic_noise_var * electronic
    t2 = target_hu ** 2
    if c1 <= 0 or t2 <= 0:
        raise ValueError("photons_for_target needs a positive target and a dose below 1")
    u = t2 / c1 if c2 <= 0 else (-c1 + math.sqrt(c1 * c1 + 4.0 * c2 * t2)) / (2.0 * c2)
    return 1.0 / u


def refine_photons(i0: float, measure: Callable[[float], float], target_hu: float, log_slope: float,
                   iterations: int = 1) -> Tuple[float, float]:
    """Correct ``i0`` by Newton steps in log-log space on a Monte-Carlo ``measure(i0)`` of the noise.

    ``log_slope`` is ``d log(noise) / d log(I0)`` of the first-order model (-0.5 for pure quantum
    noise, towards -1 where electronic noise dominates); photon starvation and the clipping of
    counts make the true noise differ from the model, which these steps absorb. Returns
    ``(i0, last measured noise at the returned i0 or NaN when not measured there)``.
    """
    measured = float("nan")
    for _ in range(iterations):
        measured = measure(i0)
        if not (np.isfinite(measured) and measured > 0):
            return i0, float("nan")
        step = math.log(measured / target_hu) / -log_slope
        i0 = i0 * math.exp(float(np.clip(step, -3.0, 3.0)))
        measured = float("nan")
    return i0, measured


def calibrate_photons(sinograms: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      fbp: Callable[[np.ndarray], np.ndarray], view_weights: Callable[[np.ndarray], np.ndarray],
                      noise_sinogram: Callable[[np.ndarray, float, np.random.Generator], np.ndarray],
                      dose_fraction: float, target_hu: float, electronic_noise_var: float,
                      view_ratio: float, rng: np.random.Generator,
                      check: Optional[Callable[[], None]] = None) -> Tuple[float, dict]:
    """Photons per ray (of the pilot's detector bins) that insert ``target_hu`` of noise in ``masks``.

    A pilot on a few slices, with ``view_ratio`` (= pilot views / simulated views, e.g. 1/4) of
    the views: FBP noise variance is a sum over independent views, so it scales exactly as
    ``1/views`` and the pilot's variances are multiplied by ``view_ratio``.

    1. **First order**: ``fbp`` (sinogram -> HU image) of white noise with per-ray variance
       ``exp(p) / w`` and ``exp(2p) / w^2`` (``p``: the line integrals in ``sinograms``, ``w``:
       ``view_weights(p)``, the tube-current modulation) gives the image variances ``Q`` and
       ``E`` in the masks; :func:`photons_for_target` solves the quadratic for ``I0``.
    2. **One Monte-Carlo correction**: ``noise_sinogram(p, i0, rng)`` (the simulator's own
       noise process, with count clipping) at that ``I0``, reconstructed and measured, and a
       Newton step in log-log space (:func:`refine_photons`), absorbing photon starvation.

    Small masks (below 50 000 pixels in all) repeat every reconstruction (up to 8 times), so
    the pilot's own Monte-Carlo error stays at ~1 %. Returns ``(i0, details)``; ``check()``
    (e.g. a cancel check) runs between reconstructions.
    """
    check = check or (lambda: None)
    count = sum(int(m.sum()) for m in masks)
    if count == 0:
        raise ValueError("calibrate_photons needs at least one masked pixel")
    repeats = int(np.clip(math.ceil(50_000 / count), 1, 8))
    sinograms, masks = list(sinograms) * repeats, list(masks) * repeats
    count *= repeats
    q = e = 0.0
    for p, m in zip(sinograms, masks):
        w = view_weights(p)
        ep = np.exp(np.minimum(p, 30.0))
        q += float(np.sum(fbp(rng.standard_normal(p.shape) * np.sqrt(ep / w))[m] ** 2))
        check()
        if electronic_noise_var > 0:
            e += float(np.sum(fbp(rng.standard_normal(p.shape) * (ep / w))[m] ** 2))
            check()
    q, e = q / count * view_ratio, e / count * view_ratio
    a = dose_fraction
    i0 = photons_for_target(q, e, target_hu, a, electronic_noise_var)
    q_term, e_term = (1 / a - 1) * q / i0, (1 / a ** 2 - 1) * electronic_noise_var * e / i0 ** 2
    slope = -(0.5 * q_term + e_term) / (q_term + e_term)

    def measure(i0_try: float) -> float:
        diffs = []
        for p in sinograms:
            diffs.append(fbp(noise_sinogram(p, i0_try, rng)))
            check()
        return rms_in_masks(diffs, masks) * math.sqrt(view_ratio)

    first = i0
    i0, _ = refine_photons(i0, measure, target_hu, slope, iterations=1)
    return i0, {"first_order_photons_per_ray": first, "log_slope": slope, "repeats": repeats}
