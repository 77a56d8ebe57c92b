"""DICOM pixel padding: the voxels outside the reconstruction circle, marked once and kept out of the science.

CT scanners fill the pixels outside the reconstruction circle (the corners of a 512 x 512 slice,
about 21 % of it) with a value that is no measurement: PixelPaddingValue (0028,0120), and with
PixelPaddingRangeLimit (0028,0121) every stored value between the two. Both are compared with the
*stored* values, before RescaleSlope / RescaleIntercept, and are read as signed when
PixelRepresentation is 1 (GE writes -2000 as ``US 63536``, i.e. -3024 HU after the intercept -1024).

The mark
--------
Reading a DICOM series (:mod:`QHQGANLib.core.dicom_read`) records the padding in
``volume.metadata["padding_hu"]``: every padded voxel holds exactly that value and no other voxel
does, so ``volume.array == metadata["padding_hu"]`` is the mask (:func:`padding_mask`). The
scanner's own value is kept when it is one value below the CT floor (-1024 HU, which clipped
outputs reach) that no other voxel takes (GE: -3024); otherwise (a range of values, a value that
real tissue or air can take) the padded voxels get :data:`PADDING_HU`. The value is a float32
value, so the mask stays exact in every float32 array; derived volumes keep the metadata
(``Volume.with_array`` / ``with_geometry``), and every step that makes a new image puts the value
back on the padded voxels (:func:`restore_padding`, :func:`carry_padding`).

Where it matters: the dose simulation and the image-domain noise treat padded voxels as air
(:data:`AIR_HU`) and leave them unchanged; enhancement and super-resolution put the padding back
(for a finer grid, the mask resampled by nearest neighbour); metrics against a reference
(:func:`QHQGANLib.metrics.image.psnr`, ``ssim``) leave the reference's padded voxels out.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.core.padding import padding_mask
    >>> ct = q.read_volume("abdomen-ct-dcmqi/")                 # GE: PixelPaddingValue -2000
    >>> ct.metadata["padding_hu"], padding_mask(ct).mean()     # (-3024.0, 0.2128)
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np

from .constants import HU_MIN
from .volume import Volume

#: The metadata key of the padding's HU value.
PADDING_KEY = "padding_hu"
#: The value padded voxels get when the scanner's own value cannot serve as the mark (GE's own, below any tissue).
PADDING_HU = -3024.0
#: What padded voxels count as in physics (dose simulation, noise insertion): air.
AIR_HU = -1000.0


# --- reading (core.dicom_read) -------------------------------------------------------------

def _as_stored(value: Any, ds) -> Optional[int]:
    """A padding tag's value as a stored pixel value (signed when PixelRepresentation is 1)."""
    if value is None or value == "":
        return None
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if isinstance(value, (bytes, bytearray)):  # VR UN / OB: little-endian bytes
        if not value:
            return None
        value = int.from_bytes(bytes(value[:max(1, bits // 8)]), "little", signed=False)
    try:
        value = int(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return None
    value &= (1 << bits) - 1  # the bit pattern, then read as the pixels are
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def stored_padding_range(ds) -> Optional[Tuple[int, int]]:
    """``(low, high)`` stored values that are padding in DICOM dataset ``ds``, or None without the tag."""
    element = ds.get((0x0028, 0x0120))
    value = _as_stored(getattr(element, "value", None), ds)
    if value is None:
        return None
    limit_element = ds.get((0x0028, 0x0121))
    limit = _as_stored(getattr(limit_element, "value", None), ds)
    if limit is None:
        return value, value
    return min(value, limit), max(value, limit)


def padded_pixels(stored: np.ndarray, stored_range: Optional[Tuple[int, int]]) -> Optional[np.ndarray]:
    """The padded pixels of a slice of stored values (before rescale), or None when nothing is padded."""
    if stored_range is None:
        return None
    low, high = stored_range
    mask = (stored >= low) & (stored <= high) if low != high else stored == low
    return mask if mask.any() else None


def mark_padding(array: np.ndarray, padded: np.ndarray) -> Optional[float]:
    """Give the ``padded`` voxels of ``array`` (HU, float32, changed in place) one value that marks
    them alone, and return it (the ``metadata["padding_hu"]`` value); None when nothing is padded."""
    if padded is None or not padded.any():
        return None
    values = np.unique(array[padded])
    real = ~padded
    own = float(values[0]) if values.size == 1 else None
    if own is not None and own < HU_MIN and not np.any((array == np.float32(own)) & real):
        return own  # the scanner's own value marks them already
    value = PADDING_HU
    lowest = float(np.min(array, where=real, initial=np.inf))
    if lowest <= value:  # real values reach below it: go further down
        value = float(np.floor(lowest)) - 1024.0
    array[padded] = np.float32(value)
    return float(np.float32(value))


# --- using it ------------------------------------------------------------------------------

def padding_value(source: Union[Volume, Mapping[str, Any], None]) -> Optional[float]:
    """The padding's HU value recorded in a Volume's (or a metadata dict's) metadata, or None."""
    metadata = source.metadata if isinstance(source, Volume) else source
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get(PADDING_KEY)
    if value is None:
        return None
    try:
        value = float(np.float32(value))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def padding_mask(volume: Volume) -> Optional[np.ndarray]:
    """Boolean mask (z, y, x) of the padded voxels of ``volume``, or None when it has none."""
    value = padding_value(volume)
    if value is None:
        return None
    mask = volume.array == np.float32(value)
    return mask if mask.any() else None


def as_air(array: np.ndarray, mask: Optional[np.ndarray], air: float = AIR_HU) -> np.ndarray:
    """``array`` with the padded voxels set to air (a copy; ``array`` itself when nothing is padded)."""
    if mask is None:
        return array
    return np.where(mask, np.asarray(air, dtype=array.dtype), array)


def restore_padding(result: Volume, mask: Optional[np.ndarray], value: Optional[float]) -> Volume:
    """Put the padding ``value`` back on the ``mask`` voxels of ``result`` (in place, returned) and record it.

    A voxel outside the mask that happens to hold exactly the value is moved by one float32 step,
    so that ``array == value`` stays the mask.
    """
    if mask is None or value is None:
        return result
    if mask.shape != result.shape:
        raise ValueError(f"the padding mask has shape {mask.shape}, the image {result.shape}")
    result.metadata[PADDING_KEY] = set_padding(result.array, mask, value)
    return result


def set_padding(array: np.ndarray, mask: np.ndarray, value: float) -> float:
    """``array[mask] = value`` (in place), any other voxel holding exactly ``value`` moved by one
    float32 step; returns the value as recorded (a float32 value)."""
    v = np.float32(value)
    clash = (array == v) & ~mask
    if clash.any():
        array[clash] = np.nextafter(v, np.float32(np.inf))
    array[mask] = v
    return float(v)


def nearest_mask(mask: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """``mask`` resampled by nearest neighbour onto ``shape``, both grids covering the same region
    (voxel ``j`` of ``n`` new voxels takes the old voxel under its centre, ``floor((j + 0.5) n_old / n)``)."""
    if tuple(mask.shape) == tuple(shape):
        return mask
    index = [np.minimum(((np.arange(n) + 0.5) * old / n).astype(np.int64), old - 1)
             for n, old in zip(shape, mask.shape)]
    return mask[np.ix_(*index)]


def carry_padding(source: Volume, result: Volume) -> Volume:
    """Put ``source``'s padding back on ``result`` (same region; its grid may be finer or coarser),
    in place, and return ``result``. Nothing happens when ``source`` has no padding."""
    mask = padding_mask(source)
    if mask is None:
        return result
    return restore_padding(result, nearest_mask(mask, result.shape), padding_value(source))
