"""Slices kept at their own positions: an uneven series read as acquired, for slice-wise work (issue #31).

A DICOM series with uneven gaps or a missing slice (one orientation, no two slices at one position) can be
read without resampling: ``read_volume(path, keep_positions=True)`` gives a Volume holding the acquired
slices in order along their normal, with every slice's own ImagePositionPatient (LPS, mm) in
``metadata["slice_positions"]`` (a list of ``[x, y, z]``, one per slice). ``origin`` is the first slice's
position and ``spacing[2]`` the median gap, for display only: the slices are not on that grid.

Slice-wise tasks work on such a volume as it is (enhancement, in-plane super-resolution, dose simulation:
each output slice comes from its input slice and, for the 2.5D models, its acquired neighbours), and the
metadata travels with the result. A derived DICOM series writes each slice at its own position
(:func:`slice_origins`; ``SliceThickness`` the source's, no ``SpacingBetweenSlices``). Whatever holds one
regular grid refuses such a volume with one line (:func:`require_regular_grid`): NRRD, NIfTI and MHA files,
a Slicer node, through-plane super-resolution, and the reordering of a coronal or sagittal stack.

Positions follow the volume's origin: slice ``k`` lies at ``origin + (p_k - p_0)``, so a result whose origin
moved in-plane (super-resolution's finer grid) moves every slice alike.

Console usage::

    >>> from QHQGANLib import read_volume
    >>> from QHQGANLib.core.slice_positions import slice_origins
    >>> ct = read_volume("uneven_series/", keep_positions=True)
    >>> ct.metadata["history"][-1]
    "read as acquired, each slice at its own position (8 slices, gaps 2.0-3.0 mm, median 3.0 mm): not resampled"
    >>> slice_origins(ct)[:, 2]          # each slice's own z (LPS, mm)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .volume import Volume

#: ``Volume.metadata`` key of the slices' own positions (LPS, mm; one ``[x, y, z]`` per slice).
SLICE_POSITIONS = "slice_positions"
#: ``Volume.metadata`` key of their own ``SliceThickness`` (mm, None where a file gives none): two blocks
#: of a series may differ (the GE head protocol: 4 mm then 7 mm).
SLICE_THICKNESSES = "slice_thicknesses"
#: What keeps the slices at their own positions and what else helps, for messages.
OPTIONS_TEXT = ("write a derived DICOM series (--dicom), which keeps every slice's position, or read the series "
                "onto a regular grid with --resample-z MM, or read one regular block with --series-block N")


def has_own_positions(volume: Volume) -> bool:
    """True for a volume whose slices lie at their own (uneven) positions."""
    return bool(volume.metadata.get(SLICE_POSITIONS))


def slice_origins(volume: Volume) -> np.ndarray:
    """``(n_slices, 3)``: the LPS position (mm) of the first voxel of each slice: the slices' own positions
    when the volume keeps them (relative to its origin, module doc), else its regular grid's."""
    n = volume.shape[0]
    if not has_own_positions(volume):
        return np.array([volume.index_to_physical((0.0, 0.0, float(k))) for k in range(n)])
    positions = np.asarray(volume.metadata[SLICE_POSITIONS], dtype=np.float64)
    if positions.shape != (n, 3) or not np.all(np.isfinite(positions)):
        raise ValueError(f"metadata['{SLICE_POSITIONS}'] holds {positions.shape[0] if positions.ndim else 0} "
                         f"position(s) for {n} slice(s): the slices' positions no longer match the volume "
                         "(slices were removed or added); take it from the series again")
    return np.asarray(volume.origin, dtype=np.float64) + (positions - positions[0])


def gaps_text(heights: Sequence[float]) -> str:
    """``12 slices, gaps 2.0-3.0 mm, median 3.0 mm``: no file names (a history note may go into a
    de-identified DICOM series)."""
    from .slice_grid import mm

    steps = np.diff(np.asarray(heights, dtype=np.float64))
    return f"{len(heights)} slices, gaps {mm(steps.min())}-{mm(steps.max())} mm, median {mm(np.median(steps))} mm"


def kept_positions_note(heights: Sequence[float]) -> str:
    """The history note of a series read at its slices' own positions."""
    return f"read as acquired, each slice at its own position ({gaps_text(heights)}): not resampled"


def regular_grid_problem(volume: Volume) -> Optional[str]:
    """Why ``volume`` cannot go onto one regular grid (its slices keep uneven positions), None when it can."""
    if not has_own_positions(volume):
        return None
    normal = volume.direction[:, 2]
    return f"its slices lie at uneven positions ({gaps_text(slice_origins(volume) @ normal)})"


def require_regular_grid(volume: Volume, what: str) -> None:
    """Refuse a volume whose slices keep uneven positions, for ``what`` (e.g. ``"a NRRD file"``), which
    holds one regular grid: a ValueError of one line saying what helps."""
    problem = regular_grid_problem(volume)
    if problem:
        raise ValueError(f"{what} holds one regular grid, and {problem}: {OPTIONS_TEXT} "
                         "(from Python: export_derived_series, or read_volume(..., resample_z=MM or series_block=N))")


def ds_number(value: float) -> str:
    """A float as a DICOM decimal string (at most 16 characters, full available precision)."""
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    return "0" if value == 0.0 else format_number_as_ds(value)


def image_plane(ds, volume: Volume) -> None:
    """Set the image-plane attributes shared by every slice of ``volume``'s DICOM series on ``ds``:
    orientation, pixel spacing, ``SliceThickness`` and ``SpacingBetweenSlices`` (= ``spacing[2]``); for
    slices at their own positions the source's thickness (the median gap when unknown) and no
    ``SpacingBetweenSlices`` (there is no one spacing). Each slice's position: :func:`slice_origins`."""
    direction = volume.direction
    ds.ImageOrientationPatient = [ds_number(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    sx, sy, sz = volume.spacing
    ds.PixelSpacing = [ds_number(sy), ds_number(sx)]  # row spacing (between rows, y), column spacing (x)
    if not has_own_positions(volume):
        ds.SliceThickness = ds_number(sz)
        ds.SpacingBetweenSlices = ds_number(sz)
        return
    ds.SliceThickness = ds_number(_thickness((volume.metadata.get("dicom") or {}).get("SliceThickness"), sz))


def slice_plane(ds, volume: Volume, k: int, position: np.ndarray, normal: np.ndarray) -> None:
    """Set slice ``k``'s own attributes on ``ds``: ``ImagePositionPatient`` = ``position`` (from
    :func:`slice_origins`), ``SliceLocation`` along ``normal`` and, for slices at their own positions, the
    slice's own ``SliceThickness`` when the source gave one."""
    ds.ImagePositionPatient = [ds_number(v) for v in position]
    ds.SliceLocation = ds_number(float(position @ normal))
    own = volume.metadata.get(SLICE_THICKNESSES) if has_own_positions(volume) else None
    if isinstance(own, (list, tuple)) and len(own) == volume.shape[0] and own[k] is not None:
        ds.SliceThickness = ds_number(_thickness(own[k], volume.spacing[2]))


def _thickness(value, fallback: float) -> float:
    """A thickness (mm) from a header value, ``fallback`` when it is missing or not above 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float(fallback)
    return value if np.isfinite(value) and value > 0 else float(fallback)
