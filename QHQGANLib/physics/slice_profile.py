"""The slice profile of a thick-slice CT, and thick slices made from thin pixels along one axis.

Through-plane super-resolution (:mod:`QHQGANLib.tasks.through_plane`) restores ``scale`` thin
slices from each thick one. What a thick slice measured is its **slice profile**: the
weighting along z of the thin-slice values it averages. The choice, stated once here:

* When the DICOM header gives both the slice thickness (``SliceThickness``) and the spacing
  (the volume's z spacing, from the slice positions), the profile is a **box of width
  SliceThickness** centred on each slice, sampled every spacing (``source="dicom"``).
  Overlapping reconstructions (thickness > spacing, e.g. 3 mm every 2 mm) average wider;
  gaps (thickness < spacing) narrower.
* Otherwise (NIfTI, NRRD, no or implausible thickness) a **box of width = spacing**
  (``source="spacing"``): contiguous slices that do not overlap. A thickness outside
  [0.25, 4] x spacing is treated as implausible (a header error) and falls back to the same box.

A real scanner's profile is closer to a trapezoid or a Gaussian; a box is the simplest model
that gets the width right, the one SMORE (Zhao et al., IEEE TMI 2020) also starts from.

On the fine grid of the output (thin spacing = spacing / scale) a box of width ``T`` covers
``scale x T / spacing`` fine pixels (:attr:`SliceProfile.width_px`). Thick sample ``k``
sits at fine coordinate ``scale x k + (scale - 1) / 2`` (the centre of the ``scale`` fine pixels it
replaces), and fine pixel ``j`` covers ``[j - 1/2, j + 1/2]``: its weight in sample ``k`` is the
length of its overlap with the box, divided by the box width (pixels outside the image drop out
and the rest is renormalised). With width = scale this is exactly the mean of ``scale``
neighbouring pixels.

Console usage::

    >>> from QHQGANLib.physics.slice_profile import slice_profile, degrade_along_axis, thick_slices
    >>> slice_profile(ct, scale=2)                 # SliceProfile(scale=2, spacing_mm=2.0, thickness_mm=3.0, source='dicom')
    >>> thick = degrade_along_axis(patch, 2)       # (H // 2, W): box average of 2 rows
    >>> thin_lin = upsample_along_axis(thick, 2)   # back on the fine grid by linear interpolation
    >>> thick_ct = thick_slices(ct, 3)             # box average of 3 slices: a 3x thicker acquisition
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.volume import Volume

#: Thickness / spacing ratios accepted from a header; outside, the box = spacing is used.
PLAUSIBLE_RATIO = (0.25, 4.0)
#: Supported through-plane factors.
Z_SCALES = (2, 3, 4)
#: How thick samples reach the fine grid before the network: the interpolation order.
INTERPOLATION_ORDER = {"linear": 1, "cubic": 3}
#: Fraction of a training patch's pixels that must be tissue (> -500 HU) for it to be drawn.
MIN_TISSUE = 0.25


@dataclass(frozen=True)
class SliceProfile:
    """A box slice profile: ``thickness_mm`` wide, every ``spacing_mm``, restored ``scale`` times finer."""

    scale: int
    spacing_mm: float
    thickness_mm: float
    source: str  # "dicom" (SliceThickness and spacing) or "spacing" (box = spacing)

    @property
    def ratio(self) -> float:
        """Thickness / spacing (1: contiguous slices)."""
        return self.thickness_mm / self.spacing_mm

    @property
    def width_px(self) -> float:
        """Box width in fine (output) pixels: ``scale x thickness / spacing``."""
        return self.scale * self.ratio

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "width_px": self.width_px}


def check_scale(scale: int) -> int:
    """``scale`` as an int of :data:`Z_SCALES`; ValueError otherwise."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or int(scale) not in Z_SCALES:
        raise ValueError(f"through-plane scale must be 2, 3 or 4, got {scale!r}")
    return int(scale)


def _header_thickness(volume: Volume) -> Optional[float]:
    value = (volume.metadata.get("dicom") or {}).get("SliceThickness")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def slice_profile(volume: Volume, scale: int = 2) -> SliceProfile:
    """The slice profile of ``volume`` (see the module docstring for the choice)."""
    scale = check_scale(scale)
    spacing = float(volume.spacing[2])
    thickness = _header_thickness(volume)
    if thickness is not None and PLAUSIBLE_RATIO[0] <= thickness / spacing <= PLAUSIBLE_RATIO[1]:
        return SliceProfile(scale, spacing, thickness, "dicom")
    return SliceProfile(scale, spacing, spacing, "spacing")


def profile_matrix(n_fine: int, scale: int, width_px: Optional[float] = None) -> np.ndarray:
    """``(n_fine // scale, n_fine)`` weights: row ``k`` makes thick sample ``k`` from the fine pixels."""
    width = float(scale if width_px is None else width_px)
    if not width > 0:
        raise ValueError(f"the box width must be positive, got {width}")
    n_thick = n_fine // scale
    if n_thick < 1:
        raise ValueError(f"{n_fine} pixels are fewer than one thick sample of {scale}")
    centres = scale * np.arange(n_thick) + (scale - 1) / 2.0
    j = np.arange(n_fine)
    low = np.maximum(j[None, :] - 0.5, centres[:, None] - width / 2)
    high = np.minimum(j[None, :] + 0.5, centres[:, None] + width / 2)
    weights = np.clip(high - low, 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def degrade_along_axis(image: np.ndarray, scale: int, width_px: Optional[float] = None, axis: int = 0) -> np.ndarray:
    """Thick samples of ``image`` along ``axis``: box profile of ``width_px`` fine pixels (default
    ``scale``: the mean of ``scale`` pixels), one sample every ``scale`` pixels; trailing pixels
    that do not fill a sample are dropped. float32."""
    data = np.moveaxis(np.asarray(image, dtype=np.float64), axis, 0)
    matrix = profile_matrix(data.shape[0], scale, width_px)
    out = np.tensordot(matrix, data, axes=(1, 0))
    return np.moveaxis(out, 0, axis).astype(np.float32)


def fine_positions(n_thick: int, scale: int) -> np.ndarray:
    """Where the ``n_thick x scale`` fine pixels lie in thick-sample index units."""
    return (np.arange(n_thick * scale) - (scale - 1) / 2.0) / scale


def upsample_along_axis(thick: np.ndarray, scale: int, axis: int = 0, order: int = 1) -> np.ndarray:
    """``thick`` interpolated onto the fine grid along ``axis`` (``n x scale`` samples; beyond the
    first and last sample centres the edge value is kept). ``order`` 1: linear, 3: cubic B-spline
    (scipy.ndimage); the other axes are untouched. float32."""
    if order not in (1, 3):
        raise ValueError(f"order must be 1 (linear) or 3 (cubic), got {order}")
    data = np.moveaxis(np.asarray(thick, dtype=np.float64), axis, 0)
    n = data.shape[0]
    t = np.clip(fine_positions(n, scale), 0.0, n - 1.0)
    if order == 1 or n < 4:
        k0 = np.minimum(np.floor(t).astype(int), n - 1)
        k1 = np.minimum(k0 + 1, n - 1)
        f = (t - k0).reshape((-1,) + (1,) * (data.ndim - 1))
        out = data[k0] * (1.0 - f) + data[k1] * f
    else:
        from scipy.ndimage import map_coordinates

        flat = data.reshape(n, -1)
        coords = np.stack(np.meshgrid(t, np.arange(flat.shape[1]), indexing="ij"))
        out = map_coordinates(flat, coords, order=3, mode="nearest").reshape((len(t),) + data.shape[1:])
    return np.moveaxis(out, 0, axis).astype(np.float32)


def thick_slices(volume: Volume, scale: int) -> Volume:
    """A ``scale`` times thicker acquisition of ``volume``: every ``scale`` contiguous slices averaged
    (trailing slices that do not fill a group are dropped).

    Geometry: z spacing x ``scale``; the first thick slice is centred on its ``scale`` thin ones
    (origin moved by ``(scale - 1) / 2`` thin slices along the slice normal); directions kept.
    ``metadata["dicom"]["SliceThickness"]`` (when there is a DICOM header) becomes the thick
    spacing, so :func:`slice_profile` sees contiguous thick slices.
    """
    scale = check_scale(scale)
    nz = volume.shape[0]
    if nz < scale:
        raise ValueError(f"{nz} slice(s) are fewer than one thick slice of {scale}")
    groups = nz // scale
    array = volume.array[:groups * scale].reshape(groups, scale, *volume.shape[1:]).mean(axis=1, dtype=np.float64)
    sx, sy, sz = volume.spacing
    origin = np.asarray(volume.origin) + volume.direction @ np.array([0.0, 0.0, (scale - 1) / 2.0 * sz])
    result = volume.with_geometry(array.astype(np.float32), (sx, sy, sz * scale), origin,
                                  note=f"thick_slices(scale={scale}): box average of {scale} slices")
    if isinstance(result.metadata.get("dicom"), dict):
        result.metadata["dicom"] = {**result.metadata["dicom"], "SliceThickness": f"{sz * scale:g}"}
    return result


# --- self-supervised training pairs (numpy; the trainer and the fine-tuning turn them into tensors) ----------
def degrade_batch(targets: np.ndarray, scale: int, width_px: Optional[float] = None,
                  interpolation: str = "linear") -> np.ndarray:
    """The network inputs of ``targets`` (B, H, W) HU: box profile along axis 1 (H), one sample every
    ``scale`` rows, interpolated back onto the H rows (H a multiple of ``scale``)."""
    b, h, w = targets.shape
    if h % scale:
        raise ValueError(f"patch height {h} is not a multiple of scale {scale}")
    if interpolation not in INTERPOLATION_ORDER:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATION_ORDER)}, got {interpolation!r}")
    matrix = profile_matrix(h, scale, width_px)
    thick = np.einsum("kh,bhw->bkw", matrix, targets.astype(np.float64))
    return upsample_along_axis(thick, scale, axis=1, order=INTERPOLATION_ORDER[interpolation])


def patch_size_for(scale: int, wanted: int = 64) -> int:
    """The largest patch side <= ``wanted`` that is a multiple of 4 (the networks) and of ``scale``."""
    step = 4 * scale // math.gcd(4, scale)
    return max(step, wanted // step * step)


class PatchSampler:
    """Random axial patches of CT volumes, transposed and flipped at random (float32 HU): the
    degraded axis (the first) is y or x of the scan. :meth:`pairs` gives (input, target) batches."""

    def __init__(self, volumes: Sequence[Volume], patch: int, rng: np.random.Generator):
        self.patch, self.rng = int(patch), rng
        self.slices: List[np.ndarray] = []
        for volume in volumes:
            for k in range(volume.shape[0]):
                sl = volume.array[k]
                if min(sl.shape) >= self.patch and np.mean(sl > -500) >= MIN_TISSUE / 2:
                    self.slices.append(sl)
        if not self.slices:
            raise ValueError(f"no slice of at least {self.patch}x{self.patch} pixels with tissue to learn from")

    def draw(self, n: int) -> np.ndarray:
        p = self.patch
        out = np.empty((n, p, p), np.float32)
        for i in range(n):
            for _ in range(20):  # prefer patches with tissue; keep the last one otherwise
                sl = self.slices[self.rng.integers(len(self.slices))]
                y, x = self.rng.integers(sl.shape[0] - p + 1), self.rng.integers(sl.shape[1] - p + 1)
                patch = sl[y:y + p, x:x + p]
                if np.mean(patch > -500) >= MIN_TISSUE:
                    break
            if self.rng.random() < 0.5:
                patch = patch.T  # the degraded axis is then x
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[i] = patch
        return out

    def pairs(self, n: int, scale: int, width_px: Optional[float] = None,
              interpolation: str = "linear") -> Tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each (n, 1, P, P) float32 HU."""
        targets = self.draw(n)
        return degrade_batch(targets, scale, width_px, interpolation)[:, None], targets[:, None]
