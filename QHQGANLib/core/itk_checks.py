"""What SimpleITK says about a file before it reads the voxels, checked: the last line of defence
behind :mod:`QHQGANLib.core.file_checks` (which parses the headers itself first).

:func:`open_itk` names the image reader by the file's ending (ITK picks one by a case-sensitive
ending: ``CT.MHA`` would be "unknown"), keeps ITK's warnings off the terminal, and refuses with one
line: a 4-D or multi-component image, a non-orthonormal orientation, a read above the voxel or
memory limit; ITK's own messages are cut to their reason (:func:`itk_reason`).

Console usage::

    >>> from QHQGANLib.core.itk_checks import open_itk, quiet_itk
    >>> reader, axes = open_itk(Path("ct.nrrd"), max_voxels=10**9)
    >>> with quiet_itk():
    ...     image = reader.Execute()
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from .file_checks import VolumeReadError, check_voxel_count, first_line
from .volume import orientation_problem

#: The reader ITK uses for each file ending (lower case).
IMAGE_IO = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
            ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def itk_reason(exc: BaseException) -> str:
    """The reason an ITK exception gives (its last line; the first ones name only the C++ file and the call),
    without the library's prefixes: ``[nrrd] _nrrdHeaderCheck: type (float) ... require endian info``
    becomes ``type (float) ... require endian info``."""
    prefixes = re.compile(r"^(\[\w+\]\s*\w+:|(itk|sitk|ITK)\s*::?\s*ERROR:|\w+\(0x[0-9a-fA-F]+\):|\s)+")
    for line in reversed(str(exc).strip().splitlines()):
        line = prefixes.sub("", line).strip()
        if line and not line.startswith("Exception thrown in SimpleITK"):
            return line
    return first_line(exc)


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK's warnings off (it prints them straight onto the terminal, over several lines), then as they were."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def open_itk(path: Path, max_voxels: int) -> Tuple["object", np.ndarray]:
    """``(reader, axes)``: a SimpleITK reader whose header passed every check (its voxels not read yet: call
    ``reader.Execute()``), and the image's axes (rows: i, j, k directions), orthonormal within rounding."""
    import SimpleITK as sitk

    name = path.name.lower()
    suffix = max((s for s in IMAGE_IO if name.endswith(s)), key=len)
    ending = path.name[len(path.name) - len(suffix):]
    if IMAGE_IO[suffix] == "NiftiImageIO" and ending not in (suffix, suffix.upper()):  # the NIfTI library's rule
        raise VolumeReadError(f"{path}: ITK's NIfTI reader refuses a mixed-case ending ({ending}); rename the "
                              f"file to end in {suffix}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(IMAGE_IO[suffix])
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = itk_reason(exc)
        if "orthonormal" in reason:
            raise VolumeReadError(f"{path}: image orientation is not orthonormal (its sform/qform describes a sheared "
                                  "or scaled grid, which ITK refuses); fix the header's orientation") from None
        raise VolumeReadError(f"{path}: cannot be read as an image ({reason})") from None
    size, dim, pixel = reader.GetSize(), reader.GetDimension(), sitk.GetPixelIDValueAsString(reader.GetPixelID())
    components = reader.GetNumberOfComponents() * (2 if "complex" in pixel else 1)
    if dim > 3 and any(n > 1 for n in size[3:]) or components > 1:  # the header checks name these first
        raise VolumeReadError(f"{path}: {dim}-D image of size {size} with {components} value(s) per voxel: QHQGAN "
                              "reads 3-D CT volumes of one value per voxel; save one 3-D volume of it and read that")
    if dim > 3:  # extra axes of size 1: read the 3-D volume they hold
        reader.SetExtractSize(list(size[:3]) + [0] * (dim - 3))
        size = size[:3]
    axes = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3].T
    problem = orientation_problem(axes) if dim >= 2 else ""
    if problem:
        raise VolumeReadError(f"{path}: image orientation is not orthonormal ({problem}): the header describes a "
                              "sheared or scaled grid, not a CT volume's geometry (this is not a gantry tilt); "
                              "fix the header's direction (space directions, TransformMatrix)")
    bits = re.search(r"(\d+)-bit", pixel)
    check_voxel_count(int(np.prod(size)), size, path, max_voxels, stored_bytes=int(bits.group(1)) // 8 if bits else 8)
    return reader, axes
