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
slice spacing, gantry tilt, mixed orientations or matrix sizes, NaN/inf voxels,
an empty volume, volumes above ``max_voxels``, and files that are not a volume.
"""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings read with SimpleITK, and the ones write_volume writes.
ITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: 2D picture formats that SimpleITK would read but that never hold CT in HU.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
#: Default refusal threshold: 1.2e9 voxels is 4.5 GiB as float32 (a 1024x1024x1100 volume).
DEFAULT_MAX_VOXELS = 1_200_000_000
#: Relative tolerance on slice-to-slice spacing before a series counts as uneven.
SPACING_TOLERANCE = 0.01
#: DICOM attributes kept in ``Volume.metadata["dicom"]`` for provenance and later export.
KEPT_DICOM_KEYWORDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel",
    "SliceThickness", "PatientPosition", "BodyPartExamined", "StudyInstanceUID",
    "SeriesInstanceUID", "FrameOfReferenceUID", "StudyDescription", "SeriesDescription",
    "StudyDate", "StudyTime", "SeriesNumber", "PatientID", "PatientName", "PatientSex",
    "PatientAge", "AccessionNumber", "WindowCenter", "WindowWidth",
)


#: Header key and value that mark a synthetic volume in NRRD / NIfTI-less formats (read back too).
SYNTHETIC_KEY = "QHQGAN_SYNTHETIC"
SYNTHETIC_VALUE = "YES: synthetic image made by QHQGAN, not for diagnosis"


class VolumeReadError(ValueError):
    """The input cannot be read as one consistent CT volume; the message says why."""


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def read_volume(path: PathLike, *, force: bool = False, series_uid: Optional[str] = None,
                max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a CT volume from a file or a DICOM folder.

    Args:
        path: ``.nrrd``/``.nhdr``/``.nii``/``.nii.gz``/``.mha``/``.mhd``, a single
            DICOM file, or a folder holding one DICOM series (sub-folders are not searched).
        force: accept a non-CT DICOM modality, or an image whose values do not look
            like HU (no voxel below -200 HU, i.e. neither air nor fat).
        series_uid: the SeriesInstanceUID to read when a folder holds several series.
        max_voxels: refuse larger volumes (they would not fit comfortably in memory).

    Returns:
        A :class:`Volume` in HU with LPS geometry; ``metadata`` holds ``source``,
        ``format`` and, for DICOM, ``dicom`` (kept attributes as strings).

    Example::

        >>> ct = read_volume("abdomen-ct-totalseg/dicom")   # JPEG 2000 lossless series
        >>> ct.shape, ct.spacing
        ((20, 512, 512), (0.9765625, 0.9765625, 2.0))
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeReadError(f"{path}: no such file or folder")
    if path.is_dir():
        volume = _read_dicom_folder(path, series_uid=series_uid, force=force, max_voxels=max_voxels)
    else:
        name = path.name.lower()
        if name.endswith(PICTURE_SUFFIXES):
            raise VolumeReadError(
                f"{path}: a {Path(name).suffix} picture holds no CT values in HU; "
                "give a DICOM series, NRRD, NIfTI or MHA file")
        if name.endswith(ITK_SUFFIXES):
            volume = _read_itk(path, max_voxels=max_voxels)
        elif _is_dicom_file(path):
            volume = _read_dicom_files([path], source=path, force=force, max_voxels=max_voxels)
        else:
            raise VolumeReadError(
                f"{path}: not a supported volume (expected a DICOM file or folder, or one of "
                f"{', '.join(ITK_SUFFIXES)})")
    _check_values(volume, path, force=force)
    return volume


def write_volume(volume: Volume, path: PathLike, *, overwrite: bool = False,
                 compress: bool = True) -> Path:
    """Write ``volume`` to NRRD/NHDR, NIfTI or MHA/MHD (chosen by the file name), float32 HU.

    The file is written to a temporary name beside the target and renamed at the
    end, so a failure never leaves a partial file. An existing file is refused
    unless ``overwrite=True``.

    Example::

        >>> write_volume(ct, "/tmp/ct.nrrd")
        PosixPath('/tmp/ct.nrrd')
    """
    import SimpleITK as sitk

    path = Path(path).expanduser()
    name = path.name.lower()
    if not name.endswith(ITK_SUFFIXES):
        raise ValueError(f"{path}: write_volume writes {', '.join(ITK_SUFFIXES)}; "
                         "for DICOM use export_dicom_series")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: the output folder does not exist")
    if not np.all(np.isfinite(volume.array)):
        raise ValueError("the volume holds NaN or infinite values; refusing to write it")

    image = volume_to_sitk(volume)
    if volume.metadata.get("synthetic"):
        image.SetMetaData(SYNTHETIC_KEY, SYNTHETIC_VALUE)
    # two-file formats (.nhdr, .mhd) name their data file after the header: write both
    # into a private temporary folder, then move them into place.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".qhqgan-write-") as tmp:
        tmp_path = Path(tmp) / path.name
        sitk.WriteImage(image, str(tmp_path), useCompression=compress)
        written = sorted(Path(tmp).iterdir())
        for item in written:
            target = path.parent / item.name
            if target != path and target.exists() and not overwrite:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
        for item in written:
            os.replace(item, path.parent / item.name)
    return path


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


# ---------------------------------------------------------------------------
# ITK formats
# ---------------------------------------------------------------------------
def _read_itk(path: Path, *, max_voxels: int) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeReadError(f"{path}: cannot be read as an image ({_first_line(exc)})") from None
    size = reader.GetSize()
    _check_size(int(np.prod(size)), size, path, max_voxels)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"{path}: the image data cannot be read ({_first_line(exc)})") from None
    fmt = "nifti" if ".nii" in path.name.lower() else path.name.lower().rsplit(".", 1)[-1]
    metadata = {"source": str(path), "format": fmt}
    if image.HasMetaDataKey(SYNTHETIC_KEY):
        metadata["synthetic"] = True
    return volume_from_sitk(image, metadata)


# ---------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------
def _is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (128-byte preamble followed by ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_dicom_folder(folder: Path, *, series_uid: Optional[str], force: bool,
                       max_voxels: int) -> Volume:
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"]
    if not files:
        raise VolumeReadError(f"{folder}: the folder is empty")
    dicom_files = [p for p in files if _is_dicom_file(p)]
    if not dicom_files:
        raise VolumeReadError(f"{folder}: no DICOM file in this folder ({len(files)} other files)")
    return _read_dicom_files(dicom_files, source=folder, series_uid=series_uid, force=force,
                             max_voxels=max_voxels)


def _read_dicom_files(files: Sequence[Path], *, source: Path, force: bool, max_voxels: int,
                      series_uid: Optional[str] = None) -> Volume:
    import pydicom

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as exc:
            raise VolumeReadError(f"{f}: broken DICOM file ({_first_line(exc)})") from None
        if "Rows" in ds and "Columns" in ds:  # image pixel module (pixels not read yet)
            headers.append((f, ds))
    if not headers:
        raise VolumeReadError(f"{source}: the DICOM files hold no images (e.g. only reports or structures)")

    by_series: Dict[str, List[Tuple[Path, Any]]] = defaultdict(list)
    for f, ds in headers:
        by_series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise VolumeReadError(f"{source}: no series {series_uid}; found: {_describe_series(by_series)}")
        chosen = by_series[series_uid]
    elif len(by_series) > 1:
        raise VolumeReadError(
            f"{source}: the folder holds {len(by_series)} series; pick one with series_uid= "
            f"(--series-uid): {_describe_series(by_series)}")
    else:
        chosen = next(iter(by_series.values()))

    first = chosen[0][1]
    modality = str(first.get("Modality", "")).upper()
    if modality != "CT" and not force:
        raise VolumeReadError(
            f"{source}: modality is {modality or 'missing'}, not CT; QHQGAN models are trained on CT "
            "in HU. Pass force=True (--force) to read it anyway")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeReadError(f"{source}: multi-frame (enhanced) DICOM is not supported yet; "
                              "convert it to single-frame files or NRRD first")

    slices = _sorted_slices(chosen, source)
    rows, cols = int(first.Rows), int(first.Columns)
    _check_size(rows * cols * len(slices), (cols, rows, len(slices)), source, max_voxels)

    array = np.empty((len(slices), rows, cols), dtype=np.float32)
    for k, (f, _pos, _ds) in enumerate(slices):
        try:
            ds = pydicom.dcmread(str(f))
            pixels = ds.pixel_array
        except Exception as exc:
            raise VolumeReadError(f"{f}: the pixel data cannot be decoded ({_first_line(exc)}); "
                                  "compressed DICOM needs pylibjpeg and pylibjpeg-openjpeg") from None
        if pixels.shape != (rows, cols):
            raise VolumeReadError(f"{f}: image of shape {pixels.shape}, expected ({rows}, {cols})")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        array[k] = pixels.astype(np.float32) * slope + intercept

    row_cos, col_cos, normal = _orientation(first, source)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    slice_spacing = _slice_spacing(slices, first)
    direction = np.column_stack([row_cos, col_cos, normal])
    metadata = {
        "source": str(source),
        "format": "dicom",
        "dicom": _kept_attributes(first),
        "transfer_syntax": str(getattr(first.file_meta, "TransferSyntaxUID", "")),
        "n_files": len(slices),
    }
    # DICOM PixelSpacing is (row spacing = between rows = y, column spacing = x)
    return Volume(array, (col_spacing, row_spacing, slice_spacing), tuple(slices[0][1]), direction, metadata)


def _orientation(ds, source: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        raise VolumeReadError(f"{source}: ImageOrientationPatient is missing; the geometry is unknown")
    row_cos = np.asarray(iop[:3], dtype=np.float64)
    col_cos = np.asarray(iop[3:], dtype=np.float64)
    row_cos /= np.linalg.norm(row_cos)
    col_cos /= np.linalg.norm(col_cos)
    return row_cos, col_cos, np.cross(row_cos, col_cos)


def _sorted_slices(chosen, source: Path) -> List[Tuple[Path, np.ndarray, Any]]:
    """Slices sorted along the slice normal, after checking they form one regular stack."""
    first = chosen[0][1]
    iop0 = np.asarray(first.get("ImageOrientationPatient", []), dtype=np.float64)
    size0 = (first.get("Rows"), first.get("Columns"))
    spacing0 = np.asarray(first.get("PixelSpacing", [np.nan, np.nan]), dtype=np.float64)
    if np.any(np.isnan(spacing0)):
        raise VolumeReadError(f"{source}: PixelSpacing is missing; the pixel size is unknown")
    _, _, normal = _orientation(first, source)
    entries = []
    for f, ds in chosen:
        iop = np.asarray(ds.get("ImageOrientationPatient", []), dtype=np.float64)
        if iop.shape != iop0.shape or not np.allclose(iop, iop0, atol=1e-4):
            raise VolumeReadError(f"{source}: slices have different orientations ({f.name}); "
                                  "this is not one stack of parallel slices")
        if (ds.get("Rows"), ds.get("Columns")) != size0:
            raise VolumeReadError(f"{source}: slices have different matrix sizes ({f.name})")
        if not np.allclose(np.asarray(ds.get("PixelSpacing", [0, 0]), dtype=np.float64), spacing0, rtol=1e-4):
            raise VolumeReadError(f"{source}: slices have different pixel spacings ({f.name})")
        ipp = ds.get("ImagePositionPatient")
        if ipp is None or len(ipp) != 3:
            raise VolumeReadError(f"{f}: ImagePositionPatient is missing; the slice position is unknown")
        pos = np.asarray(ipp, dtype=np.float64)
        entries.append((f, pos, ds, float(pos @ normal)))
    entries.sort(key=lambda e: e[3])

    heights = np.array([e[3] for e in entries])
    if len(entries) > 1:
        steps = np.diff(heights)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            a, b = entries[dup[0]][0].name, entries[dup[0] + 1][0].name
            raise VolumeReadError(f"{source}: {dup.size} duplicated slice position(s), e.g. {a} and {b} "
                                  f"at {heights[dup[0]]:.2f} mm along the slice normal")
        median = float(np.median(steps))
        uneven = np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median + 1e-3)
        if uneven.size:
            k = uneven[0]
            kind = "missing slice(s)" if steps[k] > 1.5 * median else "uneven slice spacing"
            raise VolumeReadError(
                f"{source}: {kind}: the gap between {entries[k][0].name} and {entries[k + 1][0].name} "
                f"is {steps[k]:.3f} mm where the series steps {median:.3f} mm "
                f"({uneven.size} irregular gap(s)); resample the series to a regular grid first")
        # gantry tilt: slice positions must move along the slice normal
        offsets = np.array([e[1] for e in entries]) - entries[0][1]
        along = offsets @ normal
        across = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
        tilt = np.degrees(np.arctan2(across[-1], abs(along[-1])))
        if tilt > 0.1:
            raise VolumeReadError(
                f"{source}: gantry tilt of {tilt:.1f} degrees (slices are sheared, not stacked along "
                "their normal); correct the tilt first, e.g. with Slicer's DICOM import "
                "'acquisition geometry regularization'")
    return [(f, pos, ds) for f, pos, ds, _ in entries]


def _slice_spacing(slices, first) -> float:
    if len(slices) > 1:
        _, _, normal = _orientation(first, Path("."))
        steps = np.diff([pos @ normal for _, pos, _ in slices])
        return float(np.mean(steps))
    for keyword in ("SliceThickness", "SpacingBetweenSlices"):  # one slice: its thickness
        value = first.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def _describe_series(by_series) -> str:
    parts = []
    for uid, items in by_series.items():
        ds = items[0][1]
        desc = str(ds.get("SeriesDescription", "")) or "no description"
        parts.append(f"{uid or '(no UID)'} ({ds.get('Modality', '?')}, {desc}, {len(items)} images)")
    return "; ".join(parts)


def _kept_attributes(ds) -> Dict[str, str]:
    kept = {}
    for keyword in KEPT_DICOM_KEYWORDS:
        value = ds.get(keyword)
        if value not in (None, ""):
            kept[keyword] = "\\".join(str(v) for v in value) if _is_multivalue(value) else str(value)
    return kept


def _is_multivalue(value: Any) -> bool:
    from pydicom.multival import MultiValue

    return isinstance(value, (MultiValue, list, tuple))


# ---------------------------------------------------------------------------
# checks shared by all formats
# ---------------------------------------------------------------------------
def _check_size(n_voxels: int, size, source: Path, max_voxels: int) -> None:
    if n_voxels == 0:
        raise VolumeReadError(f"{source}: the volume is empty (size {tuple(size)})")
    if n_voxels > max_voxels:
        raise VolumeReadError(
            f"{source}: {n_voxels:,} voxels (size {tuple(size)}) exceed the limit of {max_voxels:,} "
            f"({n_voxels * 4 / 2**30:.1f} GiB as float32); crop it, or raise max_voxels")


def _check_values(volume: Volume, source: Path, *, force: bool) -> None:
    finite = np.isfinite(volume.array)
    if not finite.all():
        raise VolumeReadError(f"{source}: {int((~finite).sum()):,} voxels are NaN or infinite")
    if not force and float(volume.array.min()) > -200.0:
        raise VolumeReadError(
            f"{source}: the values ({volume.array.min():.0f} to {volume.array.max():.0f}) do not look "
            "like CT in HU (no air or fat below -200 HU); if it is CT in HU pass force=True (--force)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
