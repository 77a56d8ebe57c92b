"""Geometry of super-resolved grids.

``super_resolve`` divides the in-plane spacing by the scale and moves the origin so the
physical region covered by the voxels is unchanged: with ``origin`` the centre of the first
voxel, the new first centre sits ``(s - 1) / (2 s)`` of an old pixel before the old one along
each in-plane axis.

Console usage::

    >>> from QHQGANLib.tasks.geometry import super_resolved_geometry
    >>> spacing, origin = super_resolved_geometry(ct, 2)
"""
from __future__ import annotations

import numpy as np

from ..core.volume import Volume


def super_resolved_geometry(volume: Volume, scale: int):
    """(spacing, origin) of the grid ``scale`` times finer in-plane over the same region."""
    sx, sy, sz = volume.spacing
    new_spacing = (sx / scale, sy / scale, sz)
    shift = -(scale - 1) / (2.0 * scale) * np.array([sx, sy, 0.0])
    new_origin = np.asarray(volume.origin) + volume.direction @ shift
    return new_spacing, tuple(new_origin)
