"""Training pairs of label-conditioned synthesis: (CT slice, its tissue classes), cropped and resized alike.

Every usable axial slice of every volume (the slices :func:`QHQGANLib.training.slices.training_slices`
uses: at least 5 % body) gives one pair: the slice in HU, cropped to the square around the body
that synthesis training uses and resized to the model size the same way (linear, anti-aliased), and the
same crop of its label map, one-hot and resized alike (:func:`QHQGANLib.nn.label_synthesis.encode_labels`:
boundary pixels hold their classes' fractions). The label map is
:func:`QHQGANLib.physics.tissue_classes.tissue_labels` of the volume unless one is given (an organ map
recoded with ``mapping``, :func:`~QHQGANLib.physics.tissue_classes.class_codes`), which must be on the
volume's grid (:func:`check_same_grid`: shape, spacing, origin and direction; refused otherwise). With
``context`` > 0 the labels of the ``context`` neighbouring slices each side (the end slices repeated at the volume's
ends), cropped with the centre slice's box, follow as more channels. The physical pixel size of the crops
is :func:`~QHQGANLib.training.slices.training_pixel_spacing`'s (for the model card).

Console usage::

    >>> from QHQGANLib.training.label_pairs import label_training_pairs
    >>> images, labels = label_training_pairs([ct], size=128)   # (n, 128, 128) HU, (n, 7, 128, 128) uint8
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.label_synthesis import encode_labels
from ..physics.tissue_classes import OUTSIDE, class_codes, tissue_labels
from .slices import crop_boxes, take_crop


def volume_codes(volumes: Sequence[Volume], label_maps: Optional[Sequence[Optional[Volume]]] = None,
                 mapping: Optional[Mapping[float, int]] = None) -> list:
    """The class codes (z, y, x) of each volume: ``tissue_labels`` of it, or its given label map (same grid)."""
    if label_maps is not None and len(label_maps) != len(volumes):
        raise ValueError(f"give one label map per volume ({len(volumes)} volumes, {len(label_maps)} label maps)")
    out = []
    for index, volume in enumerate(volumes):
        given = None if label_maps is None else label_maps[index]
        if given is None:
            out.append(class_codes(tissue_labels(volume)))
            continue
        check_same_grid(given, volume, f"label map {index}")
        out.append(class_codes(given, mapping, what=f"label map {index}"))
    return out


def check_same_grid(labels: Volume, volume: Volume, what: str = "the label map") -> None:
    """Refuse, in one line, a label map that is not on its CT's grid (shape, spacing, origin, direction within
    1e-3, :meth:`~QHQGANLib.core.volume.Volume.same_geometry`, as ``insert_lesion`` checks a mask): the same
    shape on another grid (a flipped NIfTI, another spacing) would pair each slice with another place's labels."""
    if not isinstance(labels, Volume):
        raise TypeError(f"{what} must be a Volume (a label map with its grid), got {type(labels).__name__}")
    if labels.same_geometry(volume, tol=1e-3):
        return

    def grid(v: Volume) -> str:
        return (f"shape {v.shape}, spacing {tuple(round(float(x), 4) for x in v.spacing)}, origin "
                f"{tuple(round(float(x), 3) for x in v.origin)}, direction "
                f"{tuple(tuple(round(float(x), 3) + 0.0 for x in row) for row in v.direction)}")

    raise ValueError(f"the label map is on another grid than its CT: {what} ({grid(labels)}) vs its CT "
                     f"({grid(volume)}); resample or export it with the CT as reference geometry")


def label_training_pairs(volumes: Sequence[Volume], size: int = 128, context: int = 0,
                         label_maps: Optional[Sequence[Optional[Volume]]] = None,
                         mapping: Optional[Mapping[float, int]] = None, min_body_fraction: float = 0.05,
                         progress: Optional[Callable[[float, str], None]] = None,
                         cancel=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(images (n, size, size) float32 HU, labels (n, 7 * (2 * context + 1), size, size) uint8)`` (module doc)."""
    from skimage.transform import resize

    codes = volume_codes(volumes, label_maps, mapping)
    boxes = list(crop_boxes(volumes, None, min_body_fraction))
    if not boxes:
        raise ValueError("no usable slices (no body found)")
    images, labels = [], []
    for done, (index, k, ys_idx, xs_idx, _) in enumerate(boxes):
        check_cancel(cancel)
        crop = take_crop(volumes[index].array[k], ys_idx, xs_idx, HU_MIN)
        images.append(resize(np.clip(crop, HU_MIN, HU_MAX), (size, size), order=1, anti_aliasing=True,
                             preserve_range=True).astype(np.float32))
        nz = codes[index].shape[0]
        planes = [take_crop(codes[index][min(max(j, 0), nz - 1)], ys_idx, xs_idx, OUTSIDE)
                  for j in [k] + [k + d for d in range(-context, context + 1) if d != 0]]
        labels.append(encode_labels(np.stack(planes), size))
        report(progress, (done + 1) / len(boxes), f"training pairs {done + 1}/{len(boxes)}")
    return np.stack(images), np.stack(labels)
