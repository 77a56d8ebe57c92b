"""Training slices for synthesis: axial slices cropped around the body (or an ROI), resampled square.

Console usage::

    >>> from QHQGANLib.training.slices import training_pixel_spacing, training_slices
    >>> slices = training_slices([q.read_volume("ct/")], size=64)    # (n, 64, 64) HU
    >>> training_pixel_spacing([q.read_volume("ct/")], size=64)["pixel_spacing_mm"]   # mm per pixel of those
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from ..core.constants import BODY_THRESHOLD_HU, HU_MAX, HU_MIN
from ..core.crops import CROP_MARGIN, square_box, take_crop  # noqa: F401 (take_crop: training.label_pairs)
from ..core.volume import Volume


def training_slices(volumes: Sequence[Volume], size: int = 64, roi: Optional[Sequence[np.ndarray]] = None,
                    min_body_fraction: float = 0.05) -> np.ndarray:
    """Axial slices of ``volumes`` as (n, size, size) HU, each resampled to ``size``.

    Each slice is cropped to a square around the body (voxels above -500 HU), or around
    the ROI mask when ``roi`` gives one (same shape as the volume) for each volume; the
    aspect ratio is kept (physical pixel spacing), the square padded with air. Slices
    with less than ``min_body_fraction`` of body are skipped. The physical pixel size this
    gives is :func:`training_pixel_spacing`'s.
    """
    from skimage.transform import resize

    out = [resize(np.clip(crop, HU_MIN, HU_MAX), (size, size), order=1, anti_aliasing=True,
                  preserve_range=True).astype(np.float32)
           for crop, _ in _square_crops(volumes, roi, min_body_fraction)]
    if not out:
        raise ValueError("no usable slices (no body or ROI found)")
    return np.stack(out)


def training_pixel_spacing(volumes: Sequence[Volume], size: int = 64, roi: Optional[Sequence[np.ndarray]] = None,
                           min_body_fraction: float = 0.05) -> Dict[str, object]:
    """The physical pixel size of :func:`training_slices`' crops (same arguments), for a model card:
    ``pixel_spacing_mm`` (the median over the slices of crop side / ``size``), ``pixel_spacing_range_mm``
    ([smallest, largest]) and ``pixel_spacing_note`` (how). ``synthesize`` writes samples with it."""
    sides = np.array([side for _, side in _square_crops(volumes, roi, min_body_fraction)], dtype=np.float64)
    if not sides.size:
        raise ValueError("no usable slices (no body or ROI found)")
    pixels = sides / size
    return {"pixel_spacing_mm": round(float(np.median(pixels)), 4),
            "pixel_spacing_range_mm": [round(float(pixels.min()), 4), round(float(pixels.max()), 4)],
            "pixel_spacing_note": f"physical pixel size of the training crops: each of the {sides.size} training "
                                  f"slices cropped to a square {CROP_MARGIN:g} x the {'ROI' if roi else 'body'}'s "
                                  f"extent and resampled to {size} pixels; the median of crop side / {size} (range: "
                                  "the smallest and largest slice); samples are written with it"}



def _square_crops(volumes: Sequence[Volume], roi: Optional[Sequence[np.ndarray]],
                  min_body_fraction: float) -> Iterator[Tuple[np.ndarray, float]]:
    """(square crop in HU, its side in mm) of every usable axial slice (see :func:`training_slices`)."""
    for index, k, ys_idx, xs_idx, side_mm in crop_boxes(volumes, roi, min_body_fraction):
        yield take_crop(volumes[index].array[k], ys_idx, xs_idx, HU_MIN), side_mm


def crop_boxes(volumes: Sequence[Volume], roi: Optional[Sequence[np.ndarray]] = None,
               min_body_fraction: float = 0.05) -> Iterator[Tuple[int, int, np.ndarray, np.ndarray, float]]:
    """(volume index, slice index, row indices, column indices, side in mm) of the square crop of every usable
    axial slice (:func:`training_slices`); indices -1 and the slice's size stand for one pixel of padding
    (:func:`take_crop`). The same crop of another array on the slice's grid (a label map) is ``take_crop`` of it."""
    for index, volume in enumerate(volumes):
        mask_volume = None if roi is None else np.asarray(roi[index]) > 0
        if mask_volume is not None and mask_volume.shape != volume.shape:
            raise ValueError(f"ROI {index} has shape {mask_volume.shape}, the volume {volume.shape}")
        for k in range(volume.shape[0]):
            image = volume.array[k]
            mask = (image > BODY_THRESHOLD_HU) if mask_volume is None else mask_volume[k]
            if mask.mean() < (min_body_fraction if mask_volume is None else 1e-9):
                continue
            ys_idx, xs_idx, side_mm = square_box(mask, volume.spacing)
            yield index, k, ys_idx, xs_idx, float(side_mm)


