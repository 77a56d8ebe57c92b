"""Training slices for synthesis: axial slices cropped around the body (or an ROI), resampled square.

Console usage::

    >>> from QHQGANLib.training.slices import training_slices
    >>> slices = training_slices([q.read_volume("ct/")], size=64)    # (n, 64, 64) HU
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..core.constants import BODY_THRESHOLD_HU, HU_MAX, HU_MIN
from ..core.volume import Volume


def training_slices(volumes: Sequence[Volume], size: int = 64, roi: Optional[Sequence[np.ndarray]] = None,
                    min_body_fraction: float = 0.05) -> np.ndarray:
    """Axial slices of ``volumes`` as (n, size, size) HU, each resampled to ``size``.

    Each slice is cropped to a square around the body (voxels above -500 HU), or around
    the ROI mask when ``roi`` gives one (same shape as the volume) for each volume; the
    aspect ratio is kept (physical pixel spacing), the square padded with air. Slices
    with less than ``min_body_fraction`` of body are skipped.
    """
    from skimage.transform import resize

    out: List[np.ndarray] = []
    for index, volume in enumerate(volumes):
        mask_volume = None if roi is None else np.asarray(roi[index]) > 0
        if mask_volume is not None and mask_volume.shape != volume.shape:
            raise ValueError(f"ROI {index} has shape {mask_volume.shape}, the volume {volume.shape}")
        sx, sy = volume.spacing[0], volume.spacing[1]
        for k in range(volume.shape[0]):
            image = volume.array[k]
            mask = (image > BODY_THRESHOLD_HU) if mask_volume is None else mask_volume[k]
            if mask.mean() < (min_body_fraction if mask_volume is None else 1e-9):
                continue
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            # square in millimetres around the box centre
            side_mm = max((y1 - y0) * sy, (x1 - x0) * sx) * 1.05
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            hy, hx = side_mm / sy / 2, side_mm / sx / 2
            ys_idx = np.clip(np.arange(int(np.floor(cy - hy)), int(np.ceil(cy + hy))), -1, image.shape[0])
            xs_idx = np.clip(np.arange(int(np.floor(cx - hx)), int(np.ceil(cx + hx))), -1, image.shape[1])
            padded = np.pad(image, 1, constant_values=HU_MIN)
            crop = padded[np.ix_(ys_idx + 1, xs_idx + 1)]
            out.append(resize(np.clip(crop, HU_MIN, HU_MAX), (size, size), order=1, anti_aliasing=True,
                              preserve_range=True).astype(np.float32))
    if not out:
        raise ValueError("no usable slices (no body or ROI found)")
    return np.stack(out)
