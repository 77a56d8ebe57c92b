"""Reading a DICOM series (or one DICOM file) into a Volume, with every check a series must pass first.

Headers are read before any pixel, so that a folder holding several series, duplicated or missing
slices, uneven spacing, gantry tilt, mixed orientations or matrix sizes is refused with the reason
(see :func:`QHQGANLib.core.io.read_volume`, the public entry point). pydicom reads the files;
pylibjpeg decodes compressed pixel data. An uneven or multi-block series is read on request,
resampled along z (``resample_z``) or one regular block of it (``series_block``): see
:mod:`QHQGANLib.core.slice_grid`; or, for slice-wise work, as it is, each slice at its own position
(``keep_positions``: :mod:`QHQGANLib.core.slice_positions`).

Console usage::

    >>> from QHQGANLib.core.dicom_read import read_dicom_folder
    >>> ct = read_dicom_folder(Path("CT_series"), series_uid=None, force=False, max_voxels=10**9)
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .file_checks import VolumeReadError, check_voxel_count, first_line
from .padding import AIR_HU, PADDING_KEY, mark_padding, padded_pixels, set_padding, stored_padding_range
from .slice_grid import (SPACING_TOLERANCE, describe_blocks, gap_blocks, grid_size, is_regular,  # noqa: F401
                         mm, resample_note, resample_slices, same_gap, uneven_error)
from .slice_positions import SLICE_POSITIONS, SLICE_THICKNESSES, kept_positions_note
from .volume import Volume, orientation_problem, orthonormalized

#: DICOM attributes kept in ``Volume.metadata["dicom"]`` for provenance and later export.
KEPT_DICOM_KEYWORDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel",
    "SliceThickness", "PatientPosition", "BodyPartExamined", "StudyInstanceUID",
    "SeriesInstanceUID", "FrameOfReferenceUID", "StudyDescription", "SeriesDescription",
    "StudyDate", "StudyTime", "SeriesNumber", "PatientID", "PatientName", "PatientSex",
    "PatientAge", "AccessionNumber", "WindowCenter", "WindowWidth", "BurnedInAnnotation",
)


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (128-byte preamble followed by ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_dicom_folder(folder: Path, *, series_uid: Optional[str], force: bool, max_voxels: int,
                      regularize_tilt: bool = False, resample_z: Optional[float] = None,
                      series_block: Optional[int] = None, keep_positions: bool = False) -> Volume:
    # is_file() is False for FIFOs, sockets and devices: they are never opened
    files = [p for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"]
    if not files:
        raise VolumeReadError(f"{folder}: the folder is empty")
    dicom_files = [p for p in files if is_dicom_file(p)]
    if not dicom_files:
        raise VolumeReadError(f"{folder}: no DICOM file in this folder ({len(files)} other files)")
    return read_dicom_files(dicom_files, source=folder, series_uid=series_uid, force=force,
                            max_voxels=max_voxels, regularize_tilt=regularize_tilt, resample_z=resample_z,
                            series_block=series_block, keep_positions=keep_positions)


def read_dicom_files(files: Sequence[Path], *, source: Path, force: bool, max_voxels: int,
                     series_uid: Optional[str] = None, regularize_tilt: bool = False,
                     resample_z: Optional[float] = None, series_block: Optional[int] = None,
                     keep_positions: bool = False) -> Volume:
    import pydicom

    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as exc:
            raise VolumeReadError(f"{f}: broken DICOM file ({first_line(exc)})") from None
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
    _check_one_acquisition(chosen, source)

    first = chosen[0][1]
    modality = str(first.get("Modality", "")).upper()
    if modality != "CT" and not force:
        raise VolumeReadError(
            f"{source}: modality is {modality or 'missing'}, not CT; QHQGAN models are trained on CT "
            "in HU. Pass force=True (--force) to read it anyway")
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeReadError(f"{source}: multi-frame (enhanced) DICOM is not supported yet; "
                              "convert it to single-frame files or NRRD first")

    stack = _sorted_slices(chosen, source, regularize_tilt, resample_z is not None, series_block,
                           keep_positions=keep_positions and resample_z is None)
    slices, shear, heights = stack.slices, stack.shear, stack.heights
    first = slices[0][2]  # the first slice of the block read: its orientation and thickness
    rows, cols = int(first.Rows), int(first.Columns)
    resample = resample_z is not None and not (is_regular(heights) and same_gap(_slice_spacing(heights, first),
                                                                               resample_z))
    if resample_z is not None and len(slices) < 2:
        raise VolumeReadError(f"{source}: one slice: resampling along z (resample_z) needs two slices or more")
    depth = max(len(slices), grid_size(heights, resample_z) if resample else 0)
    check_voxel_count(rows * cols * depth, (cols, rows, depth), source, max_voxels)

    array = np.empty((len(slices), rows, cols), dtype=np.float32)
    padded: Optional[np.ndarray] = None  # PixelPaddingValue: the voxels outside the reconstruction circle
    for k, (f, _pos, _ds) in enumerate(slices):
        try:
            ds = pydicom.dcmread(str(f))
            pixels = ds.pixel_array
        except Exception as exc:
            hint = ("; compressed DICOM needs pylibjpeg and pylibjpeg-openjpeg"
                    if "handler" in str(exc).lower() or "plugin" in str(exc).lower() else "")
            raise VolumeReadError(f"{f}: the pixel data cannot be decoded ({first_line(exc)}){hint}") from None
        if pixels.shape != (rows, cols):
            raise VolumeReadError(f"{f}: image of shape {pixels.shape}, expected ({rows}, {cols})")
        raw_slope = ds.get("RescaleSlope")
        slope = 1.0 if raw_slope in (None, "") else float(raw_slope)  # absent: 1; present 0: broken (below)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
            raise VolumeReadError(f"{f}: RescaleSlope {slope:g} / RescaleIntercept {intercept:g} cannot map stored "
                                  "values to HU (a slope of 0 makes every voxel the intercept): the file is broken")
        array[k] = pixels.astype(np.float32) * slope + intercept
        mask = padded_pixels(pixels, stored_padding_range(ds))  # compared with the stored values
        if mask is not None:
            padded = np.zeros(array.shape, dtype=bool) if padded is None else padded
            padded[k] = mask
    padding_hu = mark_padding(array, padded) if padded is not None else None
    if padding_hu is not None and (shear is not None or resample):
        array[padded] = AIR_HU  # resampled below as air; the mask is resampled alike and marked again

    row_cos, col_cos, normal = _orientation(first, source)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    slice_spacing = _slice_spacing(heights, first)
    own = not resample and len(heights) > 1 and not is_regular(heights)  # uneven: kept at their own positions
    if own:  # (_sorted_slices refused it unless keep_positions)
        slice_spacing = float(np.median(np.diff(heights)))  # for display only
    direction = np.column_stack([row_cos, col_cos, normal])
    metadata = {
        "source": str(source),
        "format": "dicom",
        "dicom": _kept_attributes(first),
        "transfer_syntax": str(getattr(first.file_meta, "TransferSyntaxUID", "")),
        "n_files": len(slices),
        # what the files store (core.pixel_types: integer inputs give int16 outputs)
        "source_pixel_type": f"{'' if int(first.get('PixelRepresentation', 1)) == 1 else 'u'}int"
                             f"{int(first.get('BitsAllocated', 16) or 16)}",
    }
    if any(str(ds.get("SyntheticData", "")).strip().upper() == "YES" for _f, ds in chosen):
        metadata["synthetic"] = True  # the mark travels: every volume derived from it stays marked
    history = list(stack.notes)
    if shear is not None:
        array = _unshear(array, shear, row_cos, col_cos, (col_spacing, row_spacing))
        metadata["gantry_tilt_degrees"] = round(_tilt_degrees(shear, heights), 3)
        history.append(f"gantry tilt of {metadata['gantry_tilt_degrees']:.2f} degrees regularized: "
                       "slices resampled (linear) onto a grid stacked along their normal")
    if resample:
        array = resample_slices(array, heights, resample_z)
        history.append(resample_note(heights, resample_z, array.shape[0]))
        metadata["resampled_z"] = {"spacing_mm": float(resample_z), "source_slices": len(slices),
                                   "source_positions_mm": [round(float(h - heights[0]), 4) for h in heights],
                                   "note": history[-1]}
        slice_spacing = float(resample_z)
    if own:  # each slice's ImagePositionPatient; after a tilt regularization, on the normal through the first
        positions = ([pos for _f, pos, _ds in slices] if shear is None else
                     [slices[0][1] + (h - heights[0]) * normal for h in heights])
        metadata[SLICE_POSITIONS] = [[float(v) for v in pos] for pos in positions]
        metadata[SLICE_THICKNESSES] = [_thickness_of(ds) for _f, _pos, ds in slices]
        history.append(kept_positions_note(heights))
    if padding_hu is not None:  # every padded voxel holds this value, and no other (core.padding)
        if shear is not None or resample:
            padding_hu = set_padding(array, _regridded_padding(padded, shear, row_cos, col_cos,
                                                               (col_spacing, row_spacing), heights, resample_z
                                                               if resample else None), padding_hu)
        metadata[PADDING_KEY] = padding_hu
    if history:
        metadata["history"] = history
    # DICOM PixelSpacing is (row spacing = between rows = y, column spacing = x)
    return Volume(array, (col_spacing, row_spacing, slice_spacing), tuple(slices[0][1]), direction, metadata)


def _regridded_padding(padded: np.ndarray, shear, row_cos, col_cos, pixel: Tuple[float, float],
                       heights: np.ndarray, resample_z: Optional[float]) -> np.ndarray:
    """The padding mask taken through the same tilt regularization and z resampling as the voxels
    (linear, then more than half padded: nearest neighbour at the rim; beyond the data is padding too)."""
    grid = np.where(padded, np.float32(-1024.0), np.float32(0.0))  # _unshear fills beyond the data with -1024
    if shear is not None:
        grid = _unshear(grid, shear, row_cos, col_cos, pixel)
    if resample_z is not None:
        grid = resample_slices(grid, heights, resample_z)
    return grid < -512.0


#: What every file of one series must share: (keyword, its plural, one of them, compared only where present).
SERIES_IDENTITY = (
    ("PatientID", "patients (PatientID)", "patient", False),
    ("StudyInstanceUID", "studies (StudyInstanceUID)", "study", False),
    ("Modality", "modalities", "", False),
    ("FrameOfReferenceUID", "frames of reference (FrameOfReferenceUID)", "frame of reference", True),
)
#: File names quoted in a refusal (a series can hold hundreds).
NAMES_QUOTED = 3


def _check_one_acquisition(chosen: Sequence[Tuple[Path, Any]], source: Path) -> None:
    """Refuse a series whose files disagree on the patient, study, modality or frame of reference.

    Files are grouped by SeriesInstanceUID only, and a copied or mislabelled file can share a UID
    with another patient's or another modality's images; such a stack is never one volume. The
    message names a few files of each group, never the identifiers themselves (patient IDs are
    patient information); modalities are named, they identify no one.
    """
    for keyword, what, one, only_present in SERIES_IDENTITY:
        groups: Dict[str, List[Path]] = defaultdict(list)
        for f, ds in chosen:
            value = str(ds.get(keyword, "") or "").strip()
            if keyword == "Modality":
                value = value.upper()
            if only_present and not value:
                continue
            groups[value].append(f)
        if len(groups) <= 1:
            continue
        ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
        parts = []
        for number, (value, paths) in enumerate(ordered, 1):
            names = ", ".join(p.name for p in paths[:NAMES_QUOTED])
            more = f" and {len(paths) - NAMES_QUOTED} more" if len(paths) > NAMES_QUOTED else ""
            label = (f"no {keyword}" if not value else value if keyword == "Modality" else f"{one} {number}")
            parts.append(f"{label}: {len(paths)} file(s), e.g. {names}{more}" if more else
                         f"{label}: {len(paths)} file(s) ({names})")
        raise VolumeReadError(
            f"{source}: one series (SeriesInstanceUID) mixes {len(groups)} {what}: {'; '.join(parts)}; "
            "a series must be one patient, one study, one modality and one frame of reference: "
            "remove the files that do not belong")


def _tilt_degrees(shear: np.ndarray, heights: np.ndarray) -> float:
    across = float(np.linalg.norm(shear[-1]))
    return float(np.degrees(np.arctan2(across, abs(float(heights[-1] - heights[0])))))


def _unshear(array: np.ndarray, shear: np.ndarray, row_cos, col_cos, pixel: Tuple[float, float]) -> np.ndarray:
    """Shift each slice in its plane so the stack lies along the slice normal (what Slicer's DICOM
    "acquisition geometry regularization" achieves with a resampling transform). ``shear[k]`` is slice
    k's position offset across the normal, relative to slice 0; outside the data is air (-1024 HU)."""
    from scipy import ndimage

    out = np.empty_like(array)
    for k in range(array.shape[0]):
        dx = float(shear[k] @ row_cos) / pixel[0]  # columns (x) move along the row direction
        dy = float(shear[k] @ col_cos) / pixel[1]
        out[k] = ndimage.shift(array[k], (dy, dx), order=1, mode="constant", cval=-1024.0)
    return out


def _orientation(ds, source: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        raise VolumeReadError(f"{source}: ImageOrientationPatient is missing; the geometry is unknown")
    row_cos = np.asarray(iop[:3], dtype=np.float64)
    col_cos = np.asarray(iop[3:], dtype=np.float64)
    problem = orientation_problem((row_cos, col_cos), names=("row", "column"))
    if problem:  # not a gantry tilt (whole slices shifted): each slice's own grid is sheared or scaled
        raise VolumeReadError(
            f"{source}: image orientation is not orthonormal (ImageOrientationPatient "
            f"{' '.join(f'{float(v):g}' for v in iop)}: {problem}); the header is broken (this is not a gantry "
            "tilt, which shifts whole slices): the row and column directions must be unit vectors at 90 degrees")
    row_cos, col_cos = orthonormalized((row_cos, col_cos))  # rounding in the header only
    return row_cos, col_cos, np.cross(row_cos, col_cos)


class _Stack(NamedTuple):
    slices: List[Tuple[Path, np.ndarray, Any]]  # (file, ImagePositionPatient, header), sorted
    heights: np.ndarray  # their positions along the slice normal (mm)
    shear: Optional[np.ndarray]  # a tilted series read with regularize_tilt: offsets across the normal
    notes: List[str]  # history notes (the block read)


def _sorted_slices(chosen, source: Path, regularize_tilt: bool = False, resample: bool = False,
                   series_block: Optional[int] = None, keep_positions: bool = False) -> _Stack:
    """Slices sorted along their normal, after the series checks: one regular stack, or an uneven one
    when it will be resampled or kept at its own positions, or the block ``series_block`` (1-based) of a
    multi-block series."""
    first = chosen[0][1]
    size0 = (first.get("Rows"), first.get("Columns"))
    spacing0 = np.asarray(first.get("PixelSpacing", [np.nan, np.nan]), dtype=np.float64)
    if np.any(np.isnan(spacing0)):
        raise VolumeReadError(f"{source}: PixelSpacing is missing; the pixel size is unknown")
    normals = [_orientation(first, source)[2]]
    iops = [np.asarray(first.get("ImageOrientationPatient"), dtype=np.float64)]
    entries = []
    for f, ds in chosen:
        iop = np.asarray(ds.get("ImageOrientationPatient", []), dtype=np.float64)
        group = next((g for g, known in enumerate(iops) if iop.shape == known.shape
                      and np.allclose(iop, known, atol=1e-4)), None)
        if group is None and iop.shape == iops[0].shape:  # another orientation: a block of its own?
            group = len(iops)
            iops.append(iop)
            normals.append(_orientation(ds, source)[2])
        if group is None:
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
        thickness = ds.get("SliceThickness")
        thickness = round(float(thickness), 3) if thickness not in (None, "") else None
        entries.append((f, pos, ds, float(pos @ normals[0]), (group, thickness)))
    entries.sort(key=lambda e: e[3])
    groups = [e[4][0] for e in entries]
    runs = [g for k, g in enumerate(groups) if k == 0 or g != groups[k - 1]]
    if len(runs) != len(set(runs)):  # orientations interleaved along the stack
        odd = next(e[0].name for e in entries if e[4][0] != groups[0])
        raise VolumeReadError(f"{source}: slices have different orientations ({odd}); "
                              "this is not one stack of parallel slices")
    heights = np.array([e[1] @ normals[e[4][0]] for e in entries])  # each along its own normal
    labels = [e[4] for e in entries]
    notes: List[str] = []
    if series_block is not None:
        blocks = gap_blocks(heights, labels)
        if not 1 <= series_block <= len(blocks):
            listed = f": {describe_blocks(heights, blocks)}" if len(blocks) > 1 else ""
            raise VolumeReadError(f"{source}: no block {series_block} (series_block, --series-block): "
                                  f"the series holds {len(blocks)} regular block(s){listed}")
        a, b = blocks[series_block - 1]
        if len(blocks) > 1:
            notes.append(f"block {series_block} of {len(blocks)} read alone: slices {a + 1}-{b} of {len(entries)} "
                         f"along the normal (the series: {describe_blocks(heights, blocks)})")
        entries, heights, labels = entries[a:b], heights[a:b], labels[a:b]
    elif len(runs) > 1:
        raise uneven_error(source, heights, [e[0].name for e in entries], labels, mixed_orientation=True)
    normal = normals[entries[0][4][0]]

    shear = None
    if len(entries) > 1:
        names = [e[0].name for e in entries]
        uneven = None if is_regular(heights) else uneven_error(source, heights, names, labels,
                                                                blocks_offered=series_block is None)
        # gantry tilt first: a sheared stack can also look unevenly spaced, and the tilt is the cause
        offsets = np.array([e[1] for e in entries]) - entries[0][1]
        along = offsets @ normal
        across = offsets - np.outer(along, normal)
        tilt = np.degrees(np.arctan2(np.linalg.norm(across[-1]), abs(along[-1])))
        if tilt > 0.1 and not regularize_tilt:
            stated = entries[0][2].get("GantryDetectorTilt")
            also = ("" if uneven is None or resample or keep_positions else
                    f"; its slices are also unevenly spaced ({uneven.description}): add resample_z=MM "
                    f"(--resample-z MM, e.g. {mm(uneven.suggested_mm)})")
            raise VolumeReadError(
                f"{source}: gantry tilt of {tilt:.1f} degrees (GantryDetectorTilt says "
                f"{stated if stated not in (None, '') else 'nothing'}): the slices are sheared, not stacked "
                "along their normal. Read it with regularize_tilt=True (--regularize-tilt) to resample it "
                f"onto a regular grid, as Slicer's DICOM import 'acquisition geometry regularization' does{also}")
        if tilt > 0.1:
            shear = across
        steps = np.diff(heights)
        dup = np.flatnonzero(steps < 1e-3)
        if dup.size:
            raise VolumeReadError(f"{source}: {dup.size} duplicated slice position(s), e.g. {names[dup[0]]} and "
                                  f"{names[dup[0] + 1]} at {heights[dup[0]]:.2f} mm along the slice normal")
        if uneven is not None and not (resample or keep_positions):
            raise uneven
    return _Stack([(f, pos, ds) for f, pos, ds, _, _ in entries], heights, shear, notes)


def _thickness_of(ds) -> Optional[float]:
    value = ds.get("SliceThickness")
    try:
        return float(value) if value not in (None, "") and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _slice_spacing(heights: np.ndarray, first) -> float:
    if len(heights) > 1:
        return float(np.mean(np.diff(heights)))
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
