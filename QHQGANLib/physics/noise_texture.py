"""A scan's own noise texture: its noise power spectrum (NPS) measured in uniform tissue, and noise drawn with it.

Used where noise "of this scan's level and texture" is needed without a noise-free image: the
per-scan adaptation of an enhancement model (:mod:`QHQGANLib.tasks.adapt`) recorrupts the
user's own scan with noise that has the same spectrum and level as the noise already in it.

The measurement (:func:`estimate_nps`)
--------------------------------------
1. **Where**: square regions of ``roi_px`` pixels (about 16 mm, 16 to 64 pixels) lying entirely
   inside uniform soft tissue (:func:`QHQGANLib.physics.calibration.soft_tissue_mask`, the same
   mask the noise level is measured in), on a grid with half-overlap, in the sampled slices.
2. **What**: each region minus its least-squares plane (removes the smooth anatomy), then its
   periodogram ``|FFT|^2 / roi_px^2``; the periodograms are averaged (the standard ROI-ensemble NPS
   of CT quality assurance, IEC 62220-style) and averaged over rings of radial frequency
   (``bins`` rings from 0 to sqrt(2) x Nyquist). The NPS is taken to be rotationally symmetric:
   real CT noise is close to it in the centre of the field (streaks along a long body axis are not
   represented).
3. **Level**: the spectrum is only a shape; the level is the scan's noise standard deviation from
   :func:`~QHQGANLib.physics.calibration.estimate_noise` (second differences, robust to anatomy),
   because residual anatomy in the regions adds low-frequency power but little to that estimate.

Drawing noise (:class:`NoiseTexture`)
-------------------------------------
White Gaussian noise filtered in 2D Fourier space by ``sqrt(NPS(|f|))`` (the radial profile
interpolated at every bin of the target grid, zero at the zero frequency), scaled so its
standard deviation is the measured level. Frequencies are per pixel (cycles per pixel in units of
Nyquist), so a texture measured on a scan applies to patches and slices of that scan of any size.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.physics.noise_texture import estimate_nps
    >>> texture = estimate_nps(q.read_volume("low_dose_series/"))
    >>> texture.std_hu, texture.mean_frequency()          # e.g. (21.3, 0.46): level and mean frequency
    >>> noise = texture.sample((4, 64, 64), rng=np.random.default_rng(0))   # 4 patches of that noise
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.volume import Volume
from .calibration import estimate_noise, sample_slices, slice_stack, soft_tissue_mask
from .image_noise import radial_frequency

#: Side of the regions the NPS is measured in (mm); clipped to 16-64 pixels.
ROI_MM = 16.0
#: Fewest regions for a measured spectrum (fewer: a ramp spectrum is assumed, see ``estimate_nps``).
MIN_ROIS = 8
#: Radial frequency rings, from 0 to sqrt(2) x Nyquist.
RADIAL_BINS = 24


@dataclass(frozen=True)
class NoiseTexture:
    """A noise power spectrum (radial profile, shape only) and a level.

    ``frequencies``: ring centres in units of the Nyquist frequency (0 to sqrt(2));
    ``power``: the mean periodogram in each ring (relative units, the shape of the NPS);
    ``std_hu``: the noise standard deviation drawn noise has; ``n_rois``: regions measured (0:
    the ramp fallback); ``roi_px``: their side.
    """

    frequencies: Tuple[float, ...]
    power: Tuple[float, ...]
    std_hu: float
    n_rois: int
    roi_px: int

    def filter(self, shape: Tuple[int, int]) -> np.ndarray:
        """The amplitude filter ``sqrt(NPS)`` on a ``(ny, nx)`` FFT grid (0 at the zero frequency)."""
        f = radial_frequency(shape)
        power = np.interp(f, self.frequencies, self.power, left=self.power[0], right=self.power[-1])
        h = np.sqrt(np.maximum(power, 0.0))
        h[0, 0] = 0.0
        return h

    def sample(self, shape: Sequence[int], rng: np.random.Generator, std_hu: Optional[float] = None) -> np.ndarray:
        """Noise of this texture, ``shape`` = (..., ny, nx), each 2D plane with this level (or ``std_hu``).

        The level is the texture's expected standard deviation (every plane is filtered white
        noise scaled by one factor computed from the filter, not renormalised plane by plane, so
        planes vary as real noise does).
        """
        shape = tuple(int(s) for s in shape)
        h = self.filter(shape[-2:])
        scale = (self.std_hu if std_hu is None else float(std_hu)) / max(float(np.sqrt(np.mean(h ** 2))), 1e-12)
        white = rng.standard_normal(shape)
        return (np.fft.ifft2(np.fft.fft2(white) * h).real * scale).astype(np.float32)

    def mean_frequency(self, size: int = 128) -> float:
        """The NPS-weighted mean radial frequency (cycles per pixel) over a ``size`` x ``size`` Fourier plane."""
        power = self.filter((size, size)) ** 2
        f = 0.5 * radial_frequency((size, size))  # cycles per pixel
        return float(np.sum(f * power) / max(float(np.sum(power)), 1e-30))

    def to_dict(self) -> dict:
        return {"std_hu": round(self.std_hu, 3), "mean_frequency_cycles_per_pixel": round(self.mean_frequency(), 4),
                "n_rois": self.n_rois, "roi_px": self.roi_px}


def _plane_residual(roi: np.ndarray) -> np.ndarray:
    """``roi`` minus its least-squares plane ``a + b y + c x``."""
    n = roi.shape[0]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    design = np.stack([np.ones(n * n), yy.ravel(), xx.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, roi.ravel(), rcond=None)
    return roi - (design @ coef).reshape(n, n)


def uniform_rois(image: np.ndarray, mask: np.ndarray, roi_px: int, limit: int = 64) -> List[np.ndarray]:
    """Up to ``limit`` square regions of side ``roi_px`` lying entirely inside ``mask`` (half-overlap grid)."""
    from scipy import ndimage as ndi

    if image.shape[0] < roi_px or image.shape[1] < roi_px:
        return []
    # a region fits where the whole roi_px x roi_px window is inside the mask
    inside = ndi.uniform_filter(mask.astype(np.float32), roi_px, mode="constant") > 0.999
    half = roi_px // 2
    rois = []
    for y0 in range(0, image.shape[0] - roi_px + 1, half):
        for x0 in range(0, image.shape[1] - roi_px + 1, half):
            if inside[y0 + half, x0 + half]:  # scipy centres an even window at size // 2
                rois.append(image[y0:y0 + roi_px, x0:x0 + roi_px])
                if len(rois) >= limit:
                    return rois
    return rois


def radial_profile(nps2d: np.ndarray, bins: int = RADIAL_BINS) -> Tuple[np.ndarray, np.ndarray]:
    """Ring averages of a 2D spectrum (FFT layout): ring centres (units of Nyquist) and mean power.

    The zero frequency is left out; empty rings take their neighbours' value."""
    f = radial_frequency(nps2d.shape)
    edges = np.linspace(0.0, np.sqrt(2.0), bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    power = np.full(bins, np.nan)
    keep = f > 0
    idx = np.clip(np.digitize(f[keep], edges) - 1, 0, bins - 1)
    sums = np.bincount(idx, weights=nps2d[keep], minlength=bins)
    counts = np.bincount(idx, minlength=bins)
    power[counts > 0] = sums[counts > 0] / counts[counts > 0]
    good = np.isfinite(power)
    power = np.interp(centres, centres[good], power[good])
    return centres, power


def ramp_texture(std_hu: float) -> NoiseTexture:
    """The filtered-back-projection ramp (``NPS ~ |f| Hann^2``, as ``add_ct_noise``'s default) at ``std_hu``."""
    f = np.linspace(0.0, np.sqrt(2.0), RADIAL_BINS + 1)
    f = 0.5 * (f[1:] + f[:-1])
    power = f * np.where(f < 1.0, 0.5 * (1 + np.cos(np.pi * np.minimum(f, 1.0))), 0.0) ** 2
    return NoiseTexture(tuple(float(v) for v in f), tuple(float(v) for v in power), float(std_hu), 0, 0)


def estimate_nps(volume: Union[Volume, np.ndarray], pixel_mm: Optional[float] = None,
                 slices: Optional[Sequence[int]] = None, std_hu: Optional[float] = None,
                 max_rois: int = 400, where: Optional[np.ndarray] = None) -> NoiseTexture:
    """The noise texture of a CT (method: the module docstring); ``std_hu`` overrides the measured level.

    ``where``: an image on the same grid whose uniform soft tissue chooses the regions, for a
    ``volume`` that is pure noise (e.g. a low-dose image minus its normal-dose image, measured where
    the normal-dose image is uniform tissue); its level is then the noise's standard deviation there.
    Fewer than ``MIN_ROIS`` uniform regions (a tiny or noise-free image): the ramp spectrum of
    filtered back-projection is assumed (``n_rois`` 0 says so). A ValueError when the noise level
    cannot be measured and no ``std_hu`` is given.
    """
    array, pixel_mm = slice_stack(volume, pixel_mm, "estimate_nps")
    nz, ny, nx = array.shape
    chosen = list(slices) if slices is not None else sample_slices(nz, ny * nx)
    if where is not None:
        where = np.asarray(where.array if isinstance(where, Volume) else where)
        where = where[None] if where.ndim == 2 else where
        if where.shape != array.shape:
            raise ValueError(f"where must have the volume's shape {array.shape}, got {where.shape}")
        masks = {k: soft_tissue_mask(where[k].astype(np.float64), pixel_mm) for k in chosen}
        if std_hu is None:
            inside = np.concatenate([array[k][masks[k]] for k in chosen])
            if inside.size < 200:
                raise ValueError("the scan's noise cannot be measured (too little uniform soft tissue in where)")
            std_hu = float(np.std(inside))
    else:
        masks = None
    if std_hu is None:
        level = estimate_noise(array, pixel_mm=pixel_mm, slices=chosen)
        if not level.ok:
            raise ValueError("the scan's noise cannot be measured (too little uniform soft tissue, or no noise)")
        std_hu = level.noise_hu
    roi_px = int(np.clip(2 * round(ROI_MM / pixel_mm / 2), 16, 64))
    per_slice = max(4, max_rois // max(1, len(chosen)))
    acc, n = np.zeros((roi_px, roi_px)), 0
    for k in chosen:
        image = array[k].astype(np.float64)
        mask = masks[k] if masks is not None else soft_tissue_mask(image, pixel_mm, noise_hu=std_hu)
        for roi in uniform_rois(image, mask, roi_px, limit=per_slice):
            acc += np.abs(np.fft.fft2(_plane_residual(roi))) ** 2 / roi_px ** 2
            n += 1
    if n < MIN_ROIS:
        return ramp_texture(std_hu)
    centres, power = radial_profile(acc / n)
    return NoiseTexture(tuple(float(v) for v in centres), tuple(float(v) for v in power), float(std_hu), n, roi_px)
