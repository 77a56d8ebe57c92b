"""A lower-resolution acquisition of the same region: the training input of super-resolution.

Console usage::

    >>> import QHQGANLib as q
    >>> coarse = q.degrade_resolution(ct, scale=2)      # 2x coarser pixels, same physical region
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..core.padding import as_air, padding_mask, padding_value, restore_padding
from ..core.progress import ProgressCallback, check_cancel, report
from ..core.volume import Volume, require_finite


def degrade_resolution(volume: Volume, scale: int = 2, sigma_px: Optional[float] = None,
                       remainder: str = "crop", progress: Optional[ProgressCallback] = None,
                       cancel=None) -> Volume:
    """Simulate an acquisition with ``scale``-times coarser in-plane resolution.

    Each axial slice is blurred with a Gaussian of ``sigma_px`` input pixels and then
    averaged over ``scale x scale`` blocks (the coarse detector pixel's box aperture).
    The default ``sigma_px = sqrt(scale^2 - 1) / 2.355`` widens an input PSF of FWHM
    about one pixel to a FWHM of ``scale`` pixels (quadrature difference), i.e. the
    system resolution scales with the pixel, as on a lower-resolution scanner.

    Geometry: in-plane spacing x ``scale``; slices (z) untouched; the origin moves to the
    centre of the first coarse voxel, ``origin + direction @ ((scale - 1)/2 * spacing)``
    along x and y, so the coarse voxels cover exactly the input voxels they average.
    When a size is not a multiple of ``scale``: ``remainder="crop"`` (default) drops the
    last rows/columns (the extent shrinks by < scale pixels at the high-index end);
    ``"pad"`` repeats the edge values (the extent grows by < scale pixels there).
    Mean HU is preserved. Padding recorded by DICOM (``metadata["padding_hu"]``,
    :mod:`QHQGANLib.core.padding`) is blurred as air and put back on the coarse voxels that are
    mostly padding. Returns a new Volume with a ``history`` note.
    """
    require_finite(volume, "degrade_resolution")
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    if remainder not in ("crop", "pad"):
        raise ValueError(f"remainder must be 'crop' or 'pad', got {remainder!r}")
    if sigma_px is None:
        sigma_px = math.sqrt(scale * scale - 1.0) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    if not (np.isfinite(sigma_px) and sigma_px >= 0):
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px!r}")
    nz, ny, nx = volume.shape
    if remainder == "crop" and (ny < scale or nx < scale):
        raise ValueError(f"the slices ({ny}x{nx}) are smaller than scale={scale}")
    from scipy.ndimage import gaussian_filter

    note = f"degrade_resolution(scale={scale}, sigma_px={sigma_px:.3f}, remainder={remainder})"
    check_cancel(cancel)
    report(progress, 0.0, "degrading resolution")
    if remainder == "crop":
        cy, cx = ny - ny % scale, nx - nx % scale
    else:
        cy, cx = -(-ny // scale) * scale, -(-nx // scale) * scale
    out = np.empty((nz, cy // scale, cx // scale), np.float32)
    pad = padding_mask(volume)  # the scanner's padding: blurred as air, put back below

    def blocks(sl: np.ndarray) -> np.ndarray:
        sl = sl[..., :cy, :cx] if remainder == "crop" else np.pad(
            sl, [(0, 0)] * (sl.ndim - 2) + [(0, cy - ny), (0, cx - nx)], mode="edge")
        return sl.reshape(sl.shape[:-2] + (cy // scale, scale, cx // scale, scale)).mean(axis=(-3, -1))

    for k in range(nz):
        check_cancel(cancel)
        sl = as_air(volume.array[k], None if pad is None else pad[k]).astype(np.float64)
        if sigma_px > 0:
            sl = gaussian_filter(sl, sigma_px, mode="nearest")
        out[k] = blocks(sl)
        report(progress, (k + 1) / nz, f"slice {k + 1}/{nz}")
    sx, sy, sz = volume.spacing
    shift = np.array([(scale - 1) / 2.0 * sx, (scale - 1) / 2.0 * sy, 0.0])
    origin = np.asarray(volume.origin) + volume.direction @ shift
    result = volume.with_geometry(out, (sx * scale, sy * scale, sz), origin, note=note)
    return result if pad is None else restore_padding(result, blocks(pad.astype(np.float32)) >= 0.5,
                                                      padding_value(volume))
