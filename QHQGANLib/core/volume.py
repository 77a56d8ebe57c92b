"""The `Volume` type: a CT image in Hounsfield units with its physical geometry.

Geometry convention (the one place it is stated)
-------------------------------------------------
* ``array`` is float32, in HU, indexed ``(z, y, x)`` = ``(k, j, i)``, exactly like
  ``slicer.util.arrayFromVolume`` and ``SimpleITK.GetArrayFromImage``.
* ``spacing``, ``origin`` and the columns of ``direction`` are given in the
  order ``(x, y, z)`` = ``(i, j, k)``, in millimetres, in the **LPS** patient
  coordinate system (DICOM and ITK convention). Slicer shows RAS; the scene
  bridge flips the first two axes when it moves a volume into the scene.
* The physical position of voxel centre ``(i, j, k)`` is
  ``origin + direction @ (spacing * (i, j, k))``: ``origin`` is the centre of
  the first voxel, and column ``c`` of ``direction`` is the unit vector along
  array axis ``c`` (i, j, then k).

Console usage::

    >>> import numpy as np
    >>> from QHQGANLib import Volume
    >>> v = Volume(np.zeros((2, 3, 4), np.float32), spacing=(0.7, 0.7, 2.5))
    >>> v.shape, v.size_xyz
    ((2, 3, 4), (4, 3, 2))
    >>> v.index_to_physical((1, 0, 0))
    array([0.7, 0. , 0. ])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence, Tuple

import numpy as np

Vector3 = Tuple[float, float, float]
#: How far from unit length and from perpendicular (cosine) the axes a file's header gives may be:
#: rounding in the header (they are then made exactly orthonormal), not a sheared or scaled grid.
ORTHONORMAL_TOLERANCE = 1e-3


def _as_vector3(values: Sequence[float], name: str) -> Vector3:
    vec = tuple(float(v) for v in values)
    if len(vec) != 3 or not all(np.isfinite(vec)):
        raise ValueError(f"{name} must be three finite numbers (x, y, z), got {values!r}")
    return vec  # type: ignore[return-value]


@dataclass
class Volume:
    """A CT volume: HU values plus LPS geometry and the source metadata.

    ``metadata`` holds what later steps need from the source, e.g. DICOM
    attributes for export (``"dicom"``: a dict of keyword -> value), the
    modality, or the provenance of a derived volume (``"history"``: a list of
    strings). It never holds pixel data. ``metadata["synthetic"] = True`` marks an image
    made by a model; every volume derived with :meth:`with_array` / :meth:`with_geometry`
    keeps it, and the writers put it into every file (see ``core.io``).
    """

    array: np.ndarray
    spacing: Vector3 = (1.0, 1.0, 1.0)
    origin: Vector3 = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3:
            raise ValueError(f"a Volume holds a 3D array (z, y, x); got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"the volume is empty (shape {arr.shape})")
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise TypeError(f"a Volume holds real numbers, got dtype {arr.dtype}")
        self.array = np.ascontiguousarray(arr, dtype=np.float32)
        self.spacing = _as_vector3(self.spacing, "spacing")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        self.origin = _as_vector3(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            problem = orientation_problem(direction.T, tolerance=1e-4) or "not a rotation"
            raise ValueError(f"image orientation is not orthonormal ({problem}; direction "
                             f"{np.round(direction, 4).tolist()}): a sheared or scaled grid is no CT geometry")
        self.direction = direction
        self.metadata = dict(self.metadata)

    # --- shape helpers -------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> Tuple[int, int, int]:
        """Number of voxels along ``(x, y, z)``, the order of ``spacing``."""
        z, y, x = self.array.shape
        return (x, y, z)

    # --- geometry ------------------------------------------------------
    def index_to_physical(self, ijk: Sequence[float]) -> np.ndarray:
        """LPS position (mm) of the voxel centre at continuous index ``(i, j, k)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return np.asarray(self.origin) + self.direction @ (np.asarray(self.spacing) * ijk)

    def ijk_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping ``(i, j, k, 1)`` to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 matrix mapping ``(i, j, k, 1)`` to RAS millimetres (Slicer's frame)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.ijk_to_lps_matrix()

    def physical_extent(self) -> Tuple[np.ndarray, np.ndarray]:
        """Corners (LPS) of the region covered by the voxels, voxel edges included."""
        lo = self.index_to_physical([-0.5, -0.5, -0.5])
        hi = self.index_to_physical(np.asarray(self.size_xyz, dtype=np.float64) - 0.5)
        return lo, hi

    def same_geometry(self, other: "Volume", tol: float = 1e-4) -> bool:
        """True when ``other`` has the same grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    # --- derived volumes -----------------------------------------------
    def with_array(self, array: np.ndarray, note: str = "") -> "Volume":
        """A new Volume on the same grid with new voxel values (the metadata is copied).

        ``note`` is appended to ``metadata["history"]`` to record what made it.
        """
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"with_array keeps the grid: expected shape {self.shape}, got {array.shape}")
        return self.with_geometry(array, self.spacing, self.origin, note=note)

    def with_geometry(self, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                      note: str = "") -> "Volume":
        """A new Volume with new values and grid (same direction; metadata, the synthetic mark included, copied)."""
        metadata = copy.deepcopy(self.metadata)
        if note:
            metadata["history"] = list(metadata.get("history", [])) + [note]
        return Volume(np.array(array, dtype=np.float32, copy=True), spacing, origin,
                      self.direction.copy(), metadata)

    def copy(self) -> "Volume":
        """A deep copy."""
        return Volume(self.array.copy(), self.spacing, self.origin, self.direction.copy(),
                      copy.deepcopy(self.metadata))

    def __repr__(self) -> str:  # a short repr: never print a whole CT in a console
        lo, hi = float(np.min(self.array)), float(np.max(self.array))
        return (f"Volume(shape(z,y,x)={self.shape}, spacing={tuple(round(s, 4) for s in self.spacing)}, "
                f"origin={tuple(round(o, 3) for o in self.origin)}, HU range=[{lo:.0f}, {hi:.0f}])")


def orientation_problem(axes, names: Sequence[str] = ("i", "j", "k"),
                        tolerance: float = ORTHONORMAL_TOLERANCE) -> str:
    """What keeps ``axes`` (one direction vector per image axis) from being orthonormal, e.g.
    ``"axes i and j at 63.4 degrees, not 90"``; ``""`` when they are (within ``tolerance``)."""
    vectors = [np.asarray(a, dtype=np.float64) for a in axes]
    norms = [float(np.linalg.norm(v)) for v in vectors]
    problems = [f"axis {n} has length {length:.4g}, not 1" for n, length in zip(names, norms)
                if not np.isfinite(length) or abs(length - 1.0) > tolerance]
    for a in range(len(vectors)):
        for b in range(a + 1, len(vectors)):
            if norms[a] > 0 and norms[b] > 0 and np.isfinite(norms[a] * norms[b]):
                cosine = float(vectors[a] @ vectors[b]) / (norms[a] * norms[b])
                if abs(cosine) > tolerance:
                    angle = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
                    problems.append(f"axes {names[a]} and {names[b]} at {angle:.2f} degrees, not 90")
    return "; ".join(problems)


def orthonormalized(axes) -> np.ndarray:
    """The orthonormal axes nearest ``axes`` (rows; Gram-Schmidt in order): for axes that passed
    :func:`orientation_problem`, i.e. off by rounding only."""
    out = []
    for v in np.asarray(axes, dtype=np.float64):
        for u in out:
            v = v - (v @ u) * u
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def slab(array: np.ndarray, k: int, context: int) -> np.ndarray:
    """Slices ``k-context .. k+context`` of ``array`` (z, y, x), edge slices repeated at the ends:
    the 2.5D input of a network that sees ``context`` neighbours on each side."""
    idx = np.clip(np.arange(k - context, k + context + 1), 0, array.shape[0] - 1)
    return array[idx]


def require_finite(volume: "Volume", what: str) -> None:
    """Refuse anything but a Volume of finite values, naming the operation ``what``."""
    if not isinstance(volume, Volume):
        raise TypeError(f"{what} expects a QHQGANLib Volume, got {type(volume).__name__}")
    bad = ~np.isfinite(volume.array)
    if bad.any():
        raise ValueError(
            f"{what}: the volume has {int(bad.sum())} non-finite voxels (NaN or inf); "
            "fill or mask them first (e.g. np.nan_to_num(array, nan=-1000))")
