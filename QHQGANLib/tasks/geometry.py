"""Geometry of super-resolved grids.

``super_resolve`` divides the spacing along the super-resolved axes by the scale and moves
the origin so the physical region covered by the voxels is unchanged: with ``origin`` the
centre of the first voxel, the new first centre sits ``(s - 1) / (2 s)`` of an old voxel
before the old one along each super-resolved axis: x and y for in-plane super-resolution
(``axis="in-plane"``), the slice normal (the direction's third column) for through-plane
super-resolution (``axis="z"``). Directions, oblique ones included, are kept.

Console usage::

    >>> from QHQGANLib.tasks.geometry import super_resolved_geometry
    >>> spacing, origin = super_resolved_geometry(ct, 2)              # in-plane
    >>> spacing, origin = super_resolved_geometry(ct, 3, axis="z")    # thin slices
"""
from __future__ import annotations

import numpy as np

from ..core.volume import Volume

#: The axes ``super_resolve`` can refine: which of (x, y, z) each one divides.
AXES = {"in-plane": (True, True, False), "z": (False, False, True)}


def super_resolved_geometry(volume: Volume, scale: int, axis: str = "in-plane"):
    """(spacing, origin) of the grid ``scale`` times finer along ``axis`` over the same region."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {tuple(AXES)}, got {axis!r}")
    refined = np.array(AXES[axis], dtype=bool)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    new_spacing = np.where(refined, spacing / scale, spacing)
    shift = np.where(refined, -(scale - 1) / (2.0 * scale) * spacing, 0.0)
    new_origin = np.asarray(volume.origin) + volume.direction @ shift
    return tuple(float(s) for s in new_spacing), tuple(float(o) for o in new_origin)
