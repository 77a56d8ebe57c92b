"""Which array axis holds the axial slices, and an exact round trip to axial storage and back.

The networks and the dose simulation work plane by plane on **axial** planes (a CT is acquired
axially: the simulator projects axial planes; the models were trained on them). A volume stored
coronally or sagittally (its slice axis ``k`` along anterior-posterior or left-right; e.g. a
reformatted series, a NIfTI written by another tool) has non-axial planes along its first array
axis. :func:`to_axial` permutes the array so that the axis closest to superior-inferior becomes
the slice axis, with the geometry permuted alike (every voxel keeps its physical position: only
the storage order changes); ``undo`` puts a result computed there back into the input's storage
order and index axes. A pure permutation: the round trip is exact, bit for bit.

A volume is reordered only when one of its other index axes lies within ``AXIAL_TOLERANCE_DEG``
(25 degrees) of superior-inferior (a coronal or sagittal storage, possibly tilted, like a gantry
tilt); a volume already axial, or oblique with no axis near superior-inferior (no storage order has
axial planes: only resampling would), is returned as it is.

Console usage::

    >>> from QHQGANLib.core.orientation import slice_axis_name, to_axial
    >>> slice_axis_name(coronal)                   # 'coronal'
    >>> axial, undo = to_axial(coronal)
    >>> back = undo(axial)                         # same array, spacing, origin, direction as coronal
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

from .slice_positions import SLICE_POSITIONS
from .volume import Volume

#: How far (degrees) from superior-inferior an index axis may lie to be taken as the slice axis.
AXIAL_TOLERANCE_DEG = 25.0
#: LPS axis of each anatomical plane's normal: L (sagittal), P (coronal), S (axial).
PLANE_OF_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}


def superior_index_axis(direction: np.ndarray) -> int:
    """The index axis (0 = i/x, 1 = j/y, 2 = k/z) whose direction is closest to superior-inferior."""
    return int(np.argmax(np.abs(np.asarray(direction)[2, :])))


def slice_axis_name(volume: Volume) -> str:
    """The plane the volume's slices (its k axis) lie in: ``"axial"``, ``"coronal"`` or ``"sagittal"``."""
    normal_lps = int(np.argmax(np.abs(volume.direction[:, 2])))
    return PLANE_OF_AXIS[normal_lps]


def _permuted(volume: Volume, order: Tuple[int, int, int]) -> Volume:
    """``volume`` with its index axes reordered: new index axis ``n`` is old index axis ``order[n]``."""
    # array axes are (k, j, i): index axis c is array axis 2 - c
    array = np.transpose(volume.array, tuple(2 - order[2 - a] for a in range(3)))
    spacing = tuple(volume.spacing[c] for c in order)
    direction = volume.direction[:, list(order)]
    return Volume(np.ascontiguousarray(array), spacing, volume.origin, direction, volume.metadata)


def to_axial(volume: Volume) -> Tuple[Volume, Callable[[Volume], Volume]]:
    """``(axial_volume, undo)``: the volume stored with axial slices first, and the way back.

    ``undo(result)`` applies the inverse permutation to a result computed on ``axial_volume`` (the
    same grid, or one with a different in-plane size such as a super-resolved one: only the axes'
    order is undone). For an axial input both are the identity (no copy).
    """
    s = superior_index_axis(volume.direction)
    near_s = abs(float(volume.direction[2, s])) >= np.cos(np.radians(AXIAL_TOLERANCE_DEG))
    if s == 2 or not near_s:
        return volume, (lambda result: result)
    # in-plane: the axis nearest left-right first (i), then the one nearest posterior (j), as axial CT is stored
    plane = slice_axis_name(volume)
    if volume.metadata.get(SLICE_POSITIONS):  # its axial planes would cross slices at uneven positions
        raise ValueError(f"{plane} slices at uneven positions: the models and the dose simulation work on axial "
                         "planes, which cross these slices; resample the series along its slice axis first "
                         "(resample_z=MM, --resample-z MM)")
    others = sorted((c for c in range(3) if c != s), key=lambda c: int(np.argmax(np.abs(volume.direction[:2, c]))))
    order = (others[0], others[1], s)
    inverse = tuple(int(np.argsort(order)[n]) for n in range(3))
    axial = _permuted(volume, order)

    def undo(result: Volume) -> Volume:
        back = _permuted(result, inverse)
        back.metadata = dict(back.metadata)
        back.metadata["history"] = list(back.metadata.get("history", [])) + [
            f"processed on axial planes (the input is stored {plane}) and stored back as the input"]
        return back

    return axial, undo
