"""Export a :class:`~QHQGANLib.core.volume.Volume` as a DICOM CT Image Storage series (pydicom).

One file per slice, explicit VR little endian, signed 16-bit HU (slope 1,
intercept 0), with the exact LPS geometry of the volume:

* ``ImagePositionPatient`` of slice ``k`` = ``volume.index_to_physical((0, 0, k))``, or the slice's own
  position for slices kept at uneven positions (:mod:`QHQGANLib.core.slice_positions`);
* ``ImageOrientationPatient`` = direction column 0 (along a row, i) then column 1 (down a column, j);
* ``PixelSpacing`` = ``[spacing[1], spacing[0]]`` (row spacing, column spacing);
* ``SliceThickness`` = ``SpacingBetweenSlices`` = ``spacing[2]`` (uneven slices: the source's thickness only).

Every export gets new Series and SOP Instance UIDs, and new Study and Frame of Reference UIDs unless
``keep_patient`` (below). Works with pydicom 2.4 and 3.
Synthetic images (``synthetic=True``, the default) are marked as such in every file:
``SyntheticData`` (0008,001C) = ``YES``, ``ImageType`` = ``DERIVED\\SECONDARY``, a series
description that says "SYNTHETIC ... NOT FOR DIAGNOSIS", patient name ``SYNTHETIC^QHQGAN``
and a random patient ID ``SYNTHETIC-xxxxxxxx``.

De-identification (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile)
------------------------------------------------------------------------------------------
The writer builds each data set from scratch instead of editing the source's, so nothing
of the source is carried over unless it is on an explicit allow-list:

* always copied (when present in ``source``): ``PatientPosition``, and ``BodyPartExamined`` only
  when it is one of the DICOM defined terms (``BODY_PARTS``): a site may type free text there
  ("J SMITH LIVER"), which is never copied (viewers use both for hanging and orientation labels);
* copied for ``synthetic=False`` only: ``KVP`` and ``ConvolutionKernel`` (the acquisition
  the processed image still comes from; for a synthetic image they would be false);
* never copied: names, IDs, birth date, sex, age, accession number, institution, station,
  physicians, dates and times, descriptions, UIDs, private tags, sequences.

The files then carry ``PatientIdentityRemoved`` = ``YES``, ``DeidentificationMethod`` and
``DeidentificationMethodCodeSequence`` = (113100, DCM, "Basic Application Confidentiality
Profile"), but only where that is true of the pixels as well: a processed real image whose
source has burned-in text (``BurnedInAnnotation`` YES) or does not say (not DICOM, or the
attribute missing) carries the source's ``BurnedInAnnotation`` and ``PatientIdentityRemoved`` = ``NO``
(the header holds no identifier, but text in the pixels may). Synthetic images are drawn by a
model, so they carry ``BurnedInAnnotation`` = ``NO`` and ``PatientIdentityRemoved`` = ``YES``. Study date/time, referring physician, study ID and accession number are present
but empty (type 2 attributes, "Z" in the profile). ``ContentDate``/``ContentTime`` are the
time of the export (when the synthetic image was made), not a date of the source.

``keep_patient=True`` (only with ``synthetic=False``) is the one way to keep the patient and
study of the source (e.g. a denoised series filed beside the original study); the files are
then *not* de-identified and say so (``PatientIdentityRemoved`` = ``NO``). ``frame_of_reference_uid``
(only with ``keep_patient``) files the series in the source's patient coordinate system too.

Console usage::

    >>> from QHQGANLib import read_volume
    >>> from QHQGANLib.core.dicom_export import export_dicom_series
    >>> files = export_dicom_series(samples, "/tmp/synthetic_ct", source=read_volume("ct_folder"))
    >>> len(files), files[0].name
    (32, 'IMG0001.dcm')
"""
from __future__ import annotations

import datetime
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from .dicom_terms import BODY_PARTS, PATIENT_POSITIONS, is_uid  # noqa: F401 (importable from here too)
from .outputs import claim_output, make_temp_folder, raise_if_disk_full
from .slice_positions import image_plane, slice_origins, slice_plane
from .volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFAULT_SYNTHETIC_DESCRIPTION = "SYNTHETIC QHQGAN - NOT FOR DIAGNOSIS"
DEFAULT_DERIVED_DESCRIPTION = "QHQGAN PROCESSED - RESEARCH USE ONLY"
NOT_FOR_DIAGNOSIS = " - NOT FOR DIAGNOSIS"
#: Source attributes copied into every export (non-identifying).
ALWAYS_COPIED = ("BodyPartExamined", "PatientPosition")
#: Source attributes copied only for non-synthetic exports (acquisition context).
ACQUISITION_COPIED = ("KVP", "ConvolutionKernel")
#: Patient and study attributes copied only with ``keep_patient=True`` (not de-identified).
PATIENT_STUDY_KEPT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                      "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                      "ReferringPhysicianName", "StudyDescription")
INT16_MIN, INT16_MAX = -32768, 32767
LO_MAX = 64  # characters of a LO value (SeriesDescription, DeidentificationMethod)


def export_dicom_series(volume: Volume, folder: PathLike, source: Any = None, *,
                        synthetic: bool = True, series_description: Optional[str] = None,
                        overwrite: bool = False, keep_patient: bool = False,
                        derivation_description: Optional[str] = None, series_number: int = 1,
                        frame_of_reference_uid: Optional[str] = None) -> List[Path]:
    """Write ``volume`` as a CT Image Storage series, one file per slice, into ``folder``.

    Args:
        volume: the image in HU; values are rounded and clipped to the int16 range.
        folder: the output folder. It is created; an existing empty folder is used; a
            non-empty one is refused unless ``overwrite=True`` (and even then only when it
            holds nothing but DICOM files, so a wrong path never deletes other data).
        source: where the image came from: a :class:`Volume` read from DICOM (its
            ``metadata["dicom"]``), a ``pydicom.Dataset``, a mapping of keyword -> value,
            or None. Only the allow-listed, non-identifying attributes are used (module doc).
        synthetic: mark the series as synthetic (``SyntheticData`` YES, description "SYNTHETIC
            ... NOT FOR DIAGNOSIS", synthetic patient). ``False`` for processed real images
            (e.g. denoised): ``SyntheticData`` NO, still de-identified unless ``keep_patient``.
            ``False`` is refused for a synthetic volume (``metadata["synthetic"]``) or source.
        series_description: the description; for synthetic series "SYNTHETIC" and
            "NOT FOR DIAGNOSIS" are added when missing (at most 64 characters in all).
        overwrite: replace the content of a non-empty output folder of DICOM files.
        keep_patient: (``synthetic=False`` only) keep the patient and study of ``source``.
        derivation_description: free text for ``DerivationDescription`` (e.g. the model name);
            never put identifiers here.
        series_number: the ``SeriesNumber``.
        frame_of_reference_uid: (``keep_patient`` only) the source's ``FrameOfReferenceUID``, for an
            image on the source's patient coordinates (viewers then link the two); a new one otherwise.

    Returns:
        The paths of the written files, in slice order (``IMG0001.dcm``, ...).

    Raises:
        ValueError: NaN/inf voxels, ``keep_patient`` with a synthetic series, ``synthetic=False``
            for a synthetic volume or source, a bad description.
        FileExistsError: ``folder`` is not empty (and ``overwrite`` is False) or is a file.
    """
    if not isinstance(volume, Volume):
        raise TypeError(f"export_dicom_series takes a Volume, got {type(volume).__name__}")
    if not synthetic and (volume.metadata.get("synthetic") or _source_is_synthetic(source)):
        what = "the volume" if volume.metadata.get("synthetic") else "its source"
        raise ValueError(f"{what} is synthetic (made by a model, or derived from a synthetic image): it is "
                         "always exported as synthetic; leave synthetic=True")
    if keep_patient and synthetic:
        raise ValueError("keep_patient=True would put a real patient's identity on synthetic images; "
                         "it is only allowed with synthetic=False")
    if frame_of_reference_uid is not None and not (keep_patient and is_uid(frame_of_reference_uid)):
        raise ValueError("frame_of_reference_uid must be a DICOM UID and comes with keep_patient=True only "
                         f"(a de-identified series gets a new one), got {frame_of_reference_uid!r}")
    if not np.all(np.isfinite(volume.array)):
        n_bad = int((~np.isfinite(volume.array)).sum())
        raise ValueError(f"the volume holds {n_bad:,} NaN or infinite voxel(s); refusing to export it")
    folder = Path(folder).expanduser()
    _check_target(folder, overwrite)
    with claim_output(folder):
        return _write_series(volume, folder, attributes=_source_attributes(source), synthetic=synthetic,
                             keep_patient=keep_patient, overwrite=overwrite, series_description=series_description,
                             derivation_description=derivation_description, series_number=series_number,
                             frame_of_reference_uid=frame_of_reference_uid)


def _write_series(volume: Volume, folder: Path, *, attributes, synthetic, keep_patient, overwrite,
                  series_description, derivation_description, series_number, frame_of_reference_uid) -> List[Path]:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    pixels = np.clip(np.rint(volume.array.astype(np.float64)), INT16_MIN, INT16_MAX).astype("<i2")
    description = _series_description(series_description, synthetic)
    shared = _shared_dataset(volume, attributes, synthetic=synthetic, keep_patient=keep_patient,
                             description=description, derivation_description=derivation_description,
                             series_number=series_number, frame_of_reference_uid=frame_of_reference_uid)

    n = volume.shape[0]
    width = max(4, len(str(n)))
    names = [f"IMG{k + 1:0{width}d}.dcm" for k in range(n)]
    normal, positions = np.cross(volume.direction[:, 0], volume.direction[:, 1]), slice_origins(volume)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_folder(folder.parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes a private (0700) folder; the output is an ordinary one
        for k in range(n):
            ds = pydicom.Dataset()
            ds.update(shared)
            sop_uid = generate_uid()
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = k + 1
            slice_plane(ds, volume, k, positions[k], normal)  # the grid's position, or the slice's own
            ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            meta.ImplementationVersionName = "QHQGAN_" + _version()[:16 - len("QHQGAN_")]
            ds.file_meta = meta
            ds.preamble = b"\x00" * 128
            try:  # pydicom 3; the pydicom 2.4 of Slicer 5.6-5.10 spells it write_like_original=False (#29)
                ds.save_as(tmp / names[k], enforce_file_format=True)
            except TypeError:
                ds.save_as(tmp / names[k], write_like_original=False)
            if (tmp / names[k]).stat().st_size < 128 + 4 + len(ds.PixelData):  # a full disk leaves short files
                raise OSError(f"{folder}: writing {names[k]} failed (the disk may be full); nothing was written")
        _check_target(folder, overwrite)  # again: another program may have filled the folder meanwhile
        _move_into_place(tmp, folder)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(folder, exc)  # one line: pydicom puts a whole traceback into its message
        raise
    return [folder / name for name in names]


# ---------------------------------------------------------------------------
# data set
# ---------------------------------------------------------------------------
def _shared_dataset(volume: Volume, attributes: Dict[str, Any], *, synthetic: bool, keep_patient: bool,
                    description: str, derivation_description: Optional[str], series_number: int,
                    frame_of_reference_uid: Optional[str] = None):
    """The attributes common to all slices of the series."""
    import pydicom
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    now = datetime.datetime.now()
    ds = pydicom.Dataset()
    text = [description, derivation_description or ""]
    if not all(t.isascii() for t in text):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    # SOP common, general image
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SyntheticData = "YES" if synthetic else "NO"
    burned_in = "NO" if synthetic else str(attributes.get("BurnedInAnnotation", "")).upper()
    if burned_in in ("YES", "NO"):
        ds.BurnedInAnnotation = burned_in  # a processed image keeps its source's pixels' text, if any
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    ds.DerivationDescription = (derivation_description or
                                (f"Synthetic CT generated by QHQGAN {_version()}" if synthetic
                                 else f"CT processed by QHQGAN {_version()}"))[:1024]
    if synthetic:
        ds.ImageComments = ("Synthetic image generated by a model (QHQGAN); it shows no real patient. "
                            "Not for diagnostic use.")
    ds.AcquisitionNumber = None  # type 2: present, empty

    # patient and study
    if keep_patient:
        for keyword in PATIENT_STUDY_KEPT:
            value = attributes.get(keyword)
            if value not in (None, ""):
                setattr(ds, keyword, value)
        ds.PatientIdentityRemoved = "NO"
    else:
        if synthetic:
            ds.PatientName = "SYNTHETIC^QHQGAN"
            ds.PatientID = "SYNTHETIC-" + secrets.token_hex(4).upper()
        else:
            ds.PatientName = "ANONYMOUS^QHQGAN"
            ds.PatientID = "ANON-" + secrets.token_hex(4).upper()
        # the pixels may still show a name burned in by the scanner: claim removal only when they cannot
        ds.PatientIdentityRemoved = "YES" if burned_in == "NO" else "NO"
        if burned_in == "NO":
            ds.DeidentificationMethod = "PS3.15 E Basic Profile: new data set, no source identifiers"[:LO_MAX]
            code = pydicom.Dataset()
            code.CodeValue = "113100"
            code.CodingSchemeDesignator = "DCM"
            code.CodeMeaning = "Basic Application Confidentiality Profile"
            ds.DeidentificationMethodCodeSequence = Sequence([code])
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",  # type 2
                    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, None)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()

    # series and equipment
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate
    ds.SeriesTime = ds.ContentTime
    for keyword in ALWAYS_COPIED + (() if synthetic else ACQUISITION_COPIED):
        value = attributes.get(keyword)
        if keyword == "BodyPartExamined" and str(value).strip().upper() not in BODY_PARTS:
            continue  # free text (may name a person): never copied
        if keyword == "PatientPosition" and str(value).strip().upper() not in PATIENT_POSITIONS:
            continue
        if value not in (None, ""):
            setattr(ds, keyword, str(value).strip().upper() if keyword == "BodyPartExamined" else value)
    if "PatientPosition" not in ds:
        ds.PatientPosition = "HFS"  # type 2C for CT; the usual supine head-first position
    if "KVP" not in ds:
        ds.KVP = None  # type 2 in the CT image module
    ds.Manufacturer = "QHQGAN"
    ds.ManufacturerModelName = "QHQGANLib"
    ds.SoftwareVersions = _version()

    # frame of reference, image plane
    ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
    ds.PositionReferenceIndicator = None
    image_plane(ds, volume)  # orientation, pixel spacing, thickness (core.slice_positions)

    # image pixel, CT image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    padding = volume.metadata.get("padding_hu")  # outside the reconstruction circle (core.padding): kept known
    if padding is not None and INT16_MIN <= round(float(padding)) <= INT16_MAX:
        ds.add_new((0x0028, 0x0120), "SS", int(round(float(padding))))  # PixelPaddingValue, signed pixels
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _series_description(given: Optional[str], synthetic: bool) -> str:
    if given is not None and not str(given).strip():
        raise ValueError("series_description is empty")
    if not synthetic:
        text = DEFAULT_DERIVED_DESCRIPTION if given is None else str(given).strip()
    elif given is None:
        text = DEFAULT_SYNTHETIC_DESCRIPTION
    else:
        text = str(given).strip()
        if "SYNTHETIC" not in text.upper():
            text = "SYNTHETIC " + text
        if "NOT FOR DIAGNOSIS" not in text.upper():
            text = text[:LO_MAX - len(NOT_FOR_DIAGNOSIS)].rstrip() + NOT_FOR_DIAGNOSIS
    if len(text) > LO_MAX or "\\" in text or any(c in text for c in "\r\n\t"):
        raise ValueError(f"series_description must be one line of at most {LO_MAX} characters "
                         f"without backslash, got {text!r}")
    return text


def _source_is_synthetic(source: Any) -> bool:
    """True for a source marked synthetic: a Volume's mark, or ``SyntheticData`` YES in a data set or mapping."""
    if isinstance(source, Volume):
        return bool(source.metadata.get("synthetic"))
    getter = getattr(source, "get", None)  # a pydicom Dataset or a mapping of keyword -> value
    return callable(getter) and str(getter("SyntheticData", "") or "").strip().upper() == "YES"


def _source_attributes(source: Any) -> Dict[str, Any]:
    """Keyword -> value of the allow-listed attributes of ``source`` (never anything else)."""
    if source is None:
        return {}
    wanted = ALWAYS_COPIED + ACQUISITION_COPIED + PATIENT_STUDY_KEPT + ("BurnedInAnnotation",)
    if isinstance(source, Volume):
        mapping: Mapping[str, Any] = source.metadata.get("dicom") or {}
        if not isinstance(mapping, Mapping):
            return {}
    elif isinstance(source, Mapping):
        mapping = source
    else:
        try:
            import pydicom
        except ImportError:  # pragma: no cover - pydicom is a dependency
            raise TypeError(f"unsupported source {type(source).__name__}") from None
        if not isinstance(source, pydicom.Dataset):
            raise TypeError("source must be a Volume, a pydicom Dataset, a mapping or None; "
                            f"got {type(source).__name__}")
        mapping = {k: source.get(k) for k in wanted if k in source}
    out = {}
    for keyword in wanted:
        value = mapping.get(keyword)
        if value is None or value == "":
            continue
        out[keyword] = value if keyword in ("PatientName",) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return str(value)


def _version() -> str:
    from .constants import __version__

    return str(__version__)


# ---------------------------------------------------------------------------
# output folder
# ---------------------------------------------------------------------------
def _check_target(folder: Path, overwrite: bool) -> None:
    """A new or empty folder; with ``overwrite`` also a folder holding only a series QHQGAN wrote.

    A run deletes only what QHQGAN created: a folder with anything else in it (a real patient's
    series, a file merely named ``.dcm``, a sub-folder) is never replaced, whatever ``overwrite`` says.
    """
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if not folder.parent.is_dir():
        raise FileNotFoundError(f"{folder.parent}: the output's parent folder does not exist; create it first")
    if folder.is_dir():
        content = list(folder.iterdir())
        if content and not overwrite:
            raise FileExistsError(f"{folder} is not empty ({len(content)} entries); "
                                  "pass overwrite=True to replace a series QHQGAN wrote there, or pick a new folder")
        others = [p.name for p in content if not (p.is_file() and _written_by_qhqgan(p))]
        if others:
            raise FileExistsError(f"{folder} holds entries QHQGAN did not write (e.g. {others[0]!r}); "
                                  "refusing to replace it even with overwrite=True")


def _written_by_qhqgan(path: Path) -> bool:
    """A DICOM file (magic ``DICM``) whose file meta says QHQGAN wrote it."""
    try:
        import pydicom

        with open(path, "rb") as fh:
            if fh.read(132)[128:132] != b"DICM":
                return False
        meta = pydicom.filereader.read_file_meta_info(str(path))
        return str(meta.get("ImplementationVersionName", "")).startswith("QHQGAN")
    except Exception:  # unreadable: not ours
        return False


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished temporary folder to ``folder`` (any old content goes away last)."""
    backup = None
    if folder.exists():
        backup = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.qhqgan-old-"))
        os.rmdir(backup)
        os.replace(folder, backup)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if backup is not None:
            os.replace(backup, folder)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
