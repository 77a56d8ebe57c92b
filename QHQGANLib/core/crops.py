"""Square crops around the body of an axial plane: the one geometry shared by training and inference.

Synthesis models are trained on each slice cropped to a square around the body (``training.slices``) and
label-conditioned synthesis renders each slice of a label map in the same square (``tasks.label_synthesis``),
so both take it from here.

Console usage::

    >>> import numpy as np
    >>> from QHQGANLib.core.crops import square_box, take_crop
    >>> mask = np.zeros((10, 10), bool); mask[2:6, 3:5] = True
    >>> ys, xs, side_mm = square_box(mask, (1.0, 1.0))
    >>> take_crop(mask.astype(float), ys, xs, 0.0).shape, round(side_mm, 2)
    ((6, 6), 4.2)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

#: The square crop's side, as a multiple of the body's (or ROI's) larger extent.
CROP_MARGIN = 1.05


def square_box(mask: np.ndarray, spacing) -> Tuple[np.ndarray, np.ndarray, float]:
    """The square crop around a 2-D ``mask`` (y, x) of a plane with pixel ``spacing`` (x, y, ...) mm.

    Centred on the mask's bounding box, its side :data:`CROP_MARGIN` x the box's larger extent in mm (the
    aspect ratio kept): ``(row indices, column indices, side in mm)``, the indices clipped to -1 and the
    plane's size (one pixel of padding, :func:`take_crop`).
    """
    sx, sy = float(spacing[0]), float(spacing[1])
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side_mm = max((y1 - y0) * sy, (x1 - x0) * sx) * CROP_MARGIN
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    hy, hx = side_mm / sy / 2, side_mm / sx / 2
    ys_idx = np.clip(np.arange(int(np.floor(cy - hy)), int(np.ceil(cy + hy))), -1, mask.shape[0])
    xs_idx = np.clip(np.arange(int(np.floor(cx - hx)), int(np.ceil(cx + hx))), -1, mask.shape[1])
    return ys_idx, xs_idx, float(side_mm)


def take_crop(plane: np.ndarray, ys_idx: np.ndarray, xs_idx: np.ndarray, fill: float) -> np.ndarray:
    """The crop of a 2-D ``plane`` at :func:`square_box`'s indices, ``fill`` where they fall outside it."""
    padded = np.pad(plane, 1, constant_values=fill)
    return padded[np.ix_(ys_idx + 1, xs_idx + 1)]
