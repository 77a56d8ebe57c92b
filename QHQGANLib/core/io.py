"""Reading and writing CT volumes: NRRD/NHDR, NIfTI, MHA/MHD, DICOM series and single DICOM files.

Every reader returns a :class:`~QHQGANLib.core.volume.Volume` (float32 HU, ``(z, y, x)``,
LPS geometry: see ``volume.py``). DICOM is read with pydicom (pylibjpeg decodes
JPEG / JPEG 2000 / JPEG-LS / RLE compressed pixel data) so that the series can be
checked before any pixel is trusted; the other formats are read with SimpleITK.

Console usage::

    >>> from QHQGANLib import read_volume, write_volume
    >>> ct = read_volume("/data/patient1/CT_series")   # a folder of DICOM files
    >>> ct.shape, ct.spacing                             # (z, y, x) and (x, y, z) mm
    >>> write_volume(ct, "/tmp/patient1.nrrd")          # refuses to overwrite unless overwrite=True

What is refused, with a :class:`VolumeReadError` that says why:
non-CT modality (unless ``force=True``), several series in one folder (unless
``series_uid=`` picks one), duplicated slice positions, missing slices or uneven
slice spacing (unless ``resample_z=`` resamples it or ``series_block=`` picks a regular block),
gantry tilt (unless ``regularize_tilt=True``), mixed orientations or matrix sizes, a series whose files
disagree on the patient, study, modality or frame of reference, NaN/inf voxels,
an empty volume, volumes above ``max_voxels``, and files that are not a volume.

The synthetic mark (``metadata["synthetic"] = True``) travels through files: NRRD and
MetaImage carry a ``QHQGAN_SYNTHETIC`` header field, NIfTI its ``descrip`` field and a
comment extension, DICOM ``SyntheticData`` YES; each is read back as the mark, and every
volume derived from a marked one (``Volume.with_array`` / ``with_geometry``) keeps it.
"""
from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from .dicom_read import KEPT_DICOM_KEYWORDS, SPACING_TOLERANCE, is_dicom_file  # noqa: F401 (public names)
from .constants import __version__
from .dicom_read import read_dicom_files, read_dicom_folder
from .file_checks import VolumeReadError, check_volume_file, check_voxel_count, require_regular_file
from .slice_grid import check_step, grid_size, resample_note, resample_slices, same_gap
from .slice_positions import require_regular_grid
from .volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings read with SimpleITK, and the ones write_volume writes.
ITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: 2D picture formats that SimpleITK would read but that never hold CT in HU.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: Default refusal threshold: 1.2e9 voxels is 4.5 GiB as float32 (a 1024x1024x1100 volume).
DEFAULT_MAX_VOXELS = 1_200_000_000


#: Header key and value that mark a synthetic volume in NRRD and MetaImage headers (read back too).
SYNTHETIC_KEY = "QHQGAN_SYNTHETIC"
SYNTHETIC_VALUE = "YES: synthetic image made by QHQGAN, not for diagnosis"
#: NIfTI has no free key/value header: a synthetic volume carries the mark twice, in the 80-byte
#: ``descrip`` field (shown by most viewers) and in a comment extension (ecode 6) holding JSON,
#: which survives tools that rewrite ``descrip``. Reading either one back sets the mark.
NIFTI_DESCRIP = f"{SYNTHETIC_KEY} SYNTHETIC - NOT FOR DIAGNOSIS"
NIFTI_COMMENT_ECODE = 6
#: Header key of NRRD and MetaImage files whose slices were resampled along z (``read_volume(resample_z=)``).
RESAMPLED_KEY = "QHQGAN_RESAMPLED_Z"
#: Provenance written into NRRD and MetaImage headers (issue #31): what made the image, and which QHQGAN.
HISTORY_KEY, VERSION_KEY = "QHQGAN_history", "QHQGAN_version"
#: NRRD / MetaImage header field holding ``metadata["padding_hu"]`` (DICOM pixel padding, ``core.padding``)
PADDING_FIELD = "QHQGAN_padding_hu"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def read_volume(path: PathLike, *, force: bool = False, series_uid: Optional[str] = None,
                max_voxels: int = DEFAULT_MAX_VOXELS, allow_external_data: bool = False,
                regularize_tilt: bool = False, resample_z: Optional[float] = None,
                series_block: Optional[int] = None, keep_positions: bool = False) -> Volume:
    """Read a CT volume from a file or a DICOM folder.

    Args:
        path: ``.nrrd``/``.nhdr``/``.nii``/``.nii.gz``/``.mha``/``.mhd``, a single
            DICOM file, or a folder holding one DICOM series (sub-folders are not searched).
        force: accept a non-CT DICOM modality, or an image whose values do not look
            like HU (no voxel below -200 HU, i.e. neither air nor fat).
        series_uid: the SeriesInstanceUID to read when a folder holds several series.
        max_voxels: refuse larger volumes (they would not fit comfortably in memory).
        allow_external_data: read a ``.nhdr``/``.mhd`` whose data file lies outside the header's
            folder (refused by default: a header could name any file on the machine).
        regularize_tilt: resample a gantry-tilted DICOM series onto a grid stacked along the slice
            normal (the angle goes to ``metadata["gantry_tilt_degrees"]``); refused by default.
        resample_z: resample along the slice axis onto a regular grid of this spacing (mm), from the
            slices' real positions: an uneven or multi-block DICOM series (refused by default, with
            where its gaps are) or any volume; linear between neighbouring slices, no extrapolation
            (:mod:`QHQGANLib.core.slice_grid`); ``metadata["history"]`` and ``["resampled_z"]`` say so.
        series_block: read only this regular block (1-based, in slice order) of a multi-block DICOM
            series, e.g. one half of a two-block head protocol; stated in the history.
        keep_positions: read an uneven DICOM series as it is, each slice at its own position
            (``metadata["slice_positions"]``, :mod:`QHQGANLib.core.slice_positions`), for slice-wise work.

    Returns:
        A :class:`Volume` in HU with LPS geometry; ``metadata`` holds ``source``,
        ``format`` and, for DICOM, ``dicom`` (kept attributes as strings).

    Example::

        >>> ct = read_volume("abdomen-ct-totalseg/dicom")   # JPEG 2000 lossless series
        >>> ct.shape, ct.spacing
        ((20, 512, 512), (0.9765625, 0.9765625, 2.0))
    """
    path = Path(path).expanduser()
    if resample_z is not None:
        resample_z = check_step(resample_z)
    if series_block is not None and (isinstance(series_block, bool) or int(series_block) != series_block
                                     or series_block < 1):
        raise ValueError(f"series_block is a block number from 1, got {series_block!r}")
    series_block = None if series_block is None else int(series_block)
    if not path.exists():
        raise VolumeReadError(f"{path}: no such file or folder")
    if path.is_dir():
        volume = read_dicom_folder(path, series_uid=series_uid, force=force, max_voxels=max_voxels,
                                   regularize_tilt=regularize_tilt, resample_z=resample_z,
                                   series_block=series_block, keep_positions=keep_positions)
    else:
        try:
            require_regular_file(path)
            if path.name.lower().endswith(ITK_SUFFIXES):
                check_volume_file(path, allow_external_data=allow_external_data)
        except VolumeReadError:
            raise
        name = path.name.lower()
        if name.endswith(PICTURE_SUFFIXES):
            raise VolumeReadError(
                f"{path}: a {Path(name).suffix} picture holds no CT values in HU; "
                "give a DICOM series, NRRD, NIfTI or MHA file")
        if name.endswith(ITK_SUFFIXES):
            volume = _read_itk(path, max_voxels=max_voxels)
        elif is_dicom_file(path):
            volume = read_dicom_files([path], source=path, force=force, max_voxels=max_voxels,
                                      resample_z=resample_z)
        else:
            raise VolumeReadError(
                f"{path}: not a supported volume (expected a DICOM file or folder, or one of "
                f"{', '.join(ITK_SUFFIXES)})")
        if series_block not in (None, 1):
            raise VolumeReadError(f"{path}: one regular volume, no block {series_block}: series_block "
                                  "(--series-block) picks a block of a DICOM series folder")
        if resample_z is not None and volume.shape[0] > 1 and not same_gap(volume.spacing[2], resample_z):
            volume = _resample_regular(volume, resample_z, path, max_voxels)
    _check_values(volume, path, force=force)
    return volume


def write_volume(volume: Volume, path: PathLike, *, overwrite: bool = False,
                 compress: bool = True, pixel_type: str = "float32") -> Path:
    """Write ``volume`` to NRRD/NHDR, NIfTI or MHA/MHD (chosen by the file name), float32 HU.

    ``pixel_type="int16"`` stores whole HU as 16-bit integers (half the size); the voxels must
    then be whole numbers within the int16 range (a ValueError otherwise: nothing is rounded here).

    The file is written into a temporary folder beside the target, checked (every byte the
    header declares is there: a full disk or a killed write is caught, not moved into place)
    and then moved to the target, so a failure never leaves a partial file and never harms an
    earlier result. An existing file is refused unless ``overwrite=True``; the files of the
    volume's own source are never written over; another run writing the same path is refused.
    A synthetic volume (``metadata["synthetic"]``) is marked in the file (module doc); a volume
    resampled along z (``metadata["resampled_z"]``) says so in NRRD and MetaImage headers (``QHQGAN_RESAMPLED_Z``).

    Example::

        >>> write_volume(ct, "/tmp/ct.nrrd")
        PosixPath('/tmp/ct.nrrd')
    """
    import SimpleITK as sitk

    from .outputs import check_not_input, check_output_path, claim_output, commit_file, make_temp_folder

    path = Path(path).expanduser()
    if not path.name.lower().endswith(ITK_SUFFIXES):
        raise ValueError(f"{path}: write_volume writes {', '.join(ITK_SUFFIXES)}; "
                         "for DICOM use export_dicom_series")
    check_output_path(path, overwrite=overwrite)
    source = volume.metadata.get("source")
    if source and Path(source).is_file():
        check_not_input(source, path)
    require_regular_grid(volume, f"{path.name}: an NRRD, NIfTI or MetaImage file")
    if not np.all(np.isfinite(volume.array)):
        raise ValueError("the volume holds NaN or infinite values; refusing to write it")

    if pixel_type not in ("float32", "int16"):
        raise ValueError(f"pixel_type must be 'float32' or 'int16', got {pixel_type!r}")
    image = volume_to_sitk(volume)
    if pixel_type == "int16":
        a = volume.array
        if a.size and (a.min() < -32768 or a.max() > 32767 or not np.array_equal(a, np.rint(a))):
            raise ValueError("int16 output needs whole HU within [-32768, 32767]; round the volume first")
        image = sitk.Cast(image, sitk.sitkInt16)
    synthetic = bool(volume.metadata.get("synthetic"))
    nifti = path.name.lower().endswith(NIFTI_SUFFIXES)
    if synthetic:
        image.SetMetaData(SYNTHETIC_KEY, SYNTHETIC_VALUE)  # NRRD and MetaImage write it into the header
        if nifti:
            image.SetMetaData("ITK_FileNotes", NIFTI_DESCRIP)  # ITK's NIfTI writer puts it in descrip
    history = provenance_text(volume.metadata.get("history"))
    if history:
        image.SetMetaData(HISTORY_KEY, history)  # NRRD and MetaImage: the whole history, one line
        if nifti and not synthetic:
            image.SetMetaData("ITK_FileNotes", history[-80:])  # NIfTI's descrip holds 80 characters: the latest
        image.SetMetaData(VERSION_KEY, str(__version__))  # (a volume with no history, e.g. a blinded reader
        # study's image, carries nothing but its geometry)
    if volume.metadata.get("padding_hu") is not None:  # the padded voxels stay known after a write and read
        image.SetMetaData(PADDING_FIELD, repr(float(volume.metadata["padding_hu"])))
    resampled = volume.metadata.get("resampled_z")
    if isinstance(resampled, dict) and resampled.get("note"):
        image.SetMetaData(RESAMPLED_KEY, " ".join(str(resampled["note"]).split()))
    with claim_output(path):
        # two-file formats (.nhdr, .mhd) name their data file after the header: write both
        # into a private temporary folder, check them, then move them into place.
        tmp = make_temp_folder(path.parent)
        try:
            tmp_path = tmp / path.name
            try:
                if synthetic and nifti:
                    # ITK writes no extension: write plain .nii beside, then copy it with the mark added
                    plain = tmp / ".unmarked" / "image.nii"
                    plain.parent.mkdir()
                    sitk.WriteImage(image, str(plain), useCompression=False)
                    _add_nifti_mark(plain, tmp_path, gz=path.name.lower().endswith(".gz"))
                    shutil.rmtree(plain.parent)
                else:
                    sitk.WriteImage(image, str(tmp_path), useCompression=compress)
            except (RuntimeError, OSError) as exc:
                from .itk_checks import itk_reason

                free = shutil.disk_usage(path.parent).free
                raise OSError(f"{path}: writing failed ({itk_reason(exc)}); {free / 2**20:.0f} MiB free on that "
                              "disk: is it full? Nothing was written.") from None
            _verify_written(tmp_path, volume.shape, path)
            written = sorted(tmp.iterdir())
            for item in written:
                target = path.parent / item.name
                if target != path and target.exists() and not overwrite:
                    raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
            for item in sorted(written, key=lambda p: p.name == path.name):  # the header last
                commit_file(item, path.parent / item.name, overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _nifti_layout(head: bytes) -> Optional[Tuple[str, int, int, str]]:
    """(byte order, header size, byte position of vox_offset, its struct code) of a NIfTI-1/-2 header."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            return endian, 348, 108, "f"
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            return endian, 540, 168, "q"
    return None


def _nifti_mark_extension() -> bytes:
    """A NIfTI comment extension (esize, ecode, JSON text, NUL-padded to a multiple of 16 bytes)."""
    import json

    text = json.dumps({SYNTHETIC_KEY: SYNTHETIC_VALUE, "SyntheticData": "YES",
                       "software": f"QHQGANLib {__version__}"}).encode("ascii")
    size = -(-(8 + len(text)) // 16) * 16
    return struct.pack("<ii", size, NIFTI_COMMENT_ECODE) + text.ljust(size - 8, b"\0")


def provenance_text(history) -> str:
    """A volume's processing history as one header line (``" | "`` between steps), folders left out: a
    model or file given by path is named by its file name alone (a folder name can identify a patient)."""
    import re

    steps = [" ".join(str(h).replace("|", "/").split()) for h in (history or [])]
    return " | ".join(re.sub(r"\S*[/\\]([^/\\\s]+)", r"\1", step) for step in steps if step)


def _add_nifti_mark(plain: Path, target: Path, *, gz: bool) -> None:
    """Copy the uncompressed NIfTI ``plain`` to ``target`` (gzip-compressed when ``gz``) with the
    synthetic comment extension inserted before the voxels (vox_offset moved; voxels streamed)."""
    with open(plain, "rb") as src:
        head = src.read(540)
        layout = _nifti_layout(head)
        if layout is None:
            raise OSError("the NIfTI writer produced no valid header")
        endian, size, at, code = layout
        offset = int(struct.unpack(endian + code, head[at:at + struct.calcsize(code)])[0])
        src.seek(size)
        extender = src.read(4)
        kept = src.read(max(offset - size - 4, 0)) if extender[:1] not in (b"", b"\0") else b""
        extension = _nifti_mark_extension()
        if endian == ">":  # extension sizes follow the header's byte order
            extension = struct.pack(">ii", len(extension), NIFTI_COMMENT_ECODE) + extension[8:]
        header = bytearray(head[:size])
        header[at:at + struct.calcsize(code)] = struct.pack(endian + code, size + 4 + len(kept) + len(extension))
        src.seek(offset)
        with (gzip.open(target, "wb", compresslevel=6) if gz else open(target, "wb")) as out:
            out.write(bytes(header) + b"\1\0\0\0" + kept + extension)
            shutil.copyfileobj(src, out, 1 << 22)


def _nifti_marked(path: Path) -> bool:
    """True when a NIfTI file holds QHQGAN's synthetic comment extension (only the header is read)."""
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(544)
            layout = _nifti_layout(head)
            if layout is None:
                return False
            endian, size, at, code = layout
            if head[size:size + 1] in (b"", b"\0"):
                return False
            offset = int(struct.unpack(endian + code, head[at:at + struct.calcsize(code)])[0])
            fh.seek(size + 4)
            area = fh.read(min(max(offset - size - 4, 0), 1 << 20))
    except (OSError, EOFError, ValueError, struct.error, zlib.error):
        return False
    pos = 0
    while pos + 8 <= len(area):
        esize, ecode = struct.unpack(endian + "ii", area[pos:pos + 8])
        if esize < 16 or esize % 16:
            return False
        if ecode == NIFTI_COMMENT_ECODE and SYNTHETIC_KEY.encode() in area[pos + 8:pos + esize]:
            return True
        pos += esize
    return False


def _verify_written(tmp_path: Path, shape, target: Path) -> None:
    """Re-read what the writer produced (ITK only prints a message when the disk is full)."""
    try:
        check_volume_file(tmp_path, memory=False)  # the volume is in memory already: only the file is checked
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(tmp_path))
        reader.ReadImageInformation()
        size = reader.GetSize()
    except (VolumeReadError, RuntimeError) as exc:
        from .itk_checks import itk_reason

        free = shutil.disk_usage(tmp_path.parent).free
        raise OSError(f"{target}: the written file is incomplete ({itk_reason(exc)}); {free / 2**20:.0f} MiB "
                      "free on that disk: is it full? Nothing was written.") from None
    if tuple(size[::-1]) != tuple(shape):
        raise OSError(f"{target}: the written file holds size {size}, expected {tuple(shape[::-1])}; nothing was written")


def volume_to_sitk(volume: Volume):
    """The volume as a ``SimpleITK.Image`` (float32, same LPS geometry)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(float(v) for v in volume.direction.reshape(-1)))
    return image


def volume_from_sitk(image, metadata: Optional[Dict[str, Any]] = None) -> Volume:
    """A :class:`Volume` from a 2D or 3D scalar ``SimpleITK.Image`` (the pixels are copied)."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(f"the image has {image.GetNumberOfComponentsPerPixel()} components "
                              "per voxel (colour or vector data), not CT values")
    dim = image.GetDimension()
    if dim == 2:
        image = sitk.JoinSeries(image)
    elif dim != 3:
        raise VolumeReadError(f"the image is {dim}D; a CT volume is 2D or 3D")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return Volume(array, image.GetSpacing(), image.GetOrigin(),
                  np.asarray(image.GetDirection()).reshape(3, 3), metadata or {})


def _resample_regular(volume: Volume, step: float, path: Path, max_voxels: int) -> Volume:
    """A regular volume resampled along its slice axis (k) to ``step`` mm (resample_z on a file)."""
    heights = volume.spacing[2] * np.arange(volume.shape[0], dtype=np.float64)
    depth = grid_size(heights, step)
    check_voxel_count(depth * volume.shape[1] * volume.shape[2], volume.size_xyz[:2] + (depth,), path, max_voxels)
    note = resample_note(heights, step, depth)
    result = volume.with_geometry(resample_slices(volume.array, heights, step),
                                  (volume.spacing[0], volume.spacing[1], step), volume.origin, note=note)
    result.metadata["resampled_z"] = {"spacing_mm": step, "source_slices": volume.shape[0],
                                      "source_positions_mm": [round(float(h), 4) for h in heights], "note": note}
    return result


# ---------------------------------------------------------------------------
# ITK formats
# ---------------------------------------------------------------------------
def _read_itk(path: Path, *, max_voxels: int) -> Volume:
    from .itk_checks import itk_reason, open_itk, quiet_itk
    from .volume import orthonormalized

    reader, axes = open_itk(path, max_voxels)  # the header checked: dimensions, orientation, voxel and memory limits
    try:
        with quiet_itk():
            image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"{path}: the image data cannot be read ({itk_reason(exc)})") from None
    if image.GetDimension() == 3 and not np.allclose(axes @ axes.T, np.eye(3), rtol=0, atol=1e-9):
        image.SetDirection(tuple(orthonormalized(axes).T.reshape(-1)))  # rounding in the header only (checked)
    fmt = "nifti" if path.name.lower().endswith(NIFTI_SUFFIXES) else path.name.lower().rsplit(".", 1)[-1]
    from .pixel_types import itk_pixel_type

    # what the file stores (core.pixel_types: integer inputs give int16 outputs)
    metadata = {"source": str(path), "format": fmt, "source_pixel_type": itk_pixel_type(image.GetPixelID())}
    if image.HasMetaDataKey(HISTORY_KEY):  # what made it: later outputs add to the same record
        metadata["history"] = [h for h in image.GetMetaData(HISTORY_KEY).split(" | ") if h]
    if image.HasMetaDataKey(PADDING_FIELD):
        try:
            metadata["padding_hu"] = float(image.GetMetaData(PADDING_FIELD))
        except ValueError:
            pass  # a header edited by hand: the padding is simply not known
    if image.HasMetaDataKey(RESAMPLED_KEY):  # read back: through-plane super-resolution refuses it
        metadata["resampled_z"] = {"note": image.GetMetaData(RESAMPLED_KEY)}
    if image.HasMetaDataKey(SYNTHETIC_KEY):
        metadata["synthetic"] = True
    elif fmt == "nifti" and ((image.HasMetaDataKey("descrip") and SYNTHETIC_KEY in image.GetMetaData("descrip"))
                             or _nifti_marked(path)):
        metadata["synthetic"] = True
    return volume_from_sitk(image, metadata)


# ---------------------------------------------------------------------------
# checks shared by all formats
# ---------------------------------------------------------------------------
def _check_values(volume: Volume, source: Path, *, force: bool) -> None:
    finite = np.isfinite(volume.array)
    if not finite.all():
        raise VolumeReadError(f"{source}: {int((~finite).sum()):,} voxels are NaN or infinite")
    if not force and float(volume.array.min()) > -200.0:
        raise VolumeReadError(
            f"{source}: the values ({volume.array.min():.0f} to {volume.array.max():.0f}) do not look "
            "like CT in HU (no air or fat below -200 HU); if it is CT in HU pass force=True (--force)")

