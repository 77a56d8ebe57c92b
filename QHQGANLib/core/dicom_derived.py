"""A derived DICOM series for an enhanced or super-resolved CT (issue #31): the one output that may carry
the patient's identity, and only when asked.

:func:`export_derived_series` writes a result with :func:`~QHQGANLib.core.dicom_export.export_dicom_series`
(int16 HU, slope 1, intercept 0, per-slice positions from the volume, so a through-plane result keeps exact
geometry, and slices read at their own uneven positions keep each one: :mod:`QHQGANLib.core.slice_positions`)
in one of three ways, chosen by :func:`plan_derived_series`:

* ``"patient"``: the source was read from DICOM and ``deidentify`` is False: the series is filed in the
  source's patient and study (same ``PatientID``, ``StudyInstanceUID``, ``FrameOfReferenceUID``), with a
  new ``SeriesInstanceUID`` and new SOP instance UIDs, ``SyntheticData`` NO and ``PatientIdentityRemoved`` NO;
* ``"deidentified"``: ``deidentify=True``, or a source that is not DICOM (no patient to keep): a new
  de-identified patient and study, as the exporter writes them;
* ``"synthetic"``: the result or its source is synthetic (made by a model): marked synthetic, under a
  synthetic patient in a new study. Synthetic images never go into a real patient's study.

Every series is ``DERIVED\\SECONDARY`` with a ``SeriesDescription`` such as
``QHQGAN ENHANCED hqgan-enhance S0.50 - NOT FOR DIAGNOSIS``, the processing history and the QHQGAN
version in ``DerivationDescription`` (model files by name only, never their folders) and ``SeriesNumber``
= the source's + 1000 (1001 when unknown).

Console usage::

    >>> from QHQGANLib import read_volume, enhance
    >>> from QHQGANLib.core.dicom_derived import export_derived_series
    >>> ct = read_volume("CT_FOLDER")
    >>> files = export_derived_series(enhance(ct, strength=0.5), "CT_ENHANCED_DICOM", ct)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

from .dicom_export import (LO_MAX, NOT_FOR_DIAGNOSIS, _check_target, _source_is_synthetic, _version,
                           export_dicom_series)
from .dicom_terms import is_uid
from .volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

MODES = ("patient", "deidentified", "synthetic")
#: Added to the source's ``SeriesNumber`` (derived series sort after the originals in a viewer).
SERIES_NUMBER_OFFSET = 1000
#: a step may end with notes after "; " (e.g. core.pixel_types' "; stored as int16, ..."): not part of the model
_NOTES = r"(?:; .*)?$"
_ENHANCED = re.compile(r"^enhanced by (?P<model>[^;]+?)(?P<adapted> adapted to this scan \(\d+ updates\))?"
                       r"(?: at strength (?P<strength>[\d.]+))?" + _NOTES)
_UNCHANGED = re.compile(r"^enhancement strength 0 \((?P<model>[^;]+) not applied\)" + _NOTES)
_SUPER_RESOLVED = re.compile(r"^super-resolved x(?P<scale>\d+)(?P<z> along z)? by (?P<model>[^;]+?)" + _NOTES)
_SIMULATED = re.compile(r"^simulate_low_dose\(dose_fraction=(?P<dose>[\d.e+-]+)")


@dataclass(frozen=True)
class DerivedSeriesPlan:
    """How a result is written as a derived series (see the module doc)."""

    mode: str  #: one of :data:`MODES`
    note: Optional[str]  #: one line: why the patient is not kept although not asked (None otherwise)
    series_description: str
    derivation_description: str
    series_number: int
    frame_of_reference_uid: Optional[str]  #: the source's, in ``"patient"`` mode only


def plan_derived_series(result: Volume, source: Any, *, deidentify: bool = False) -> DerivedSeriesPlan:
    """Decide the mode, descriptions and numbers of the derived series of ``result`` (nothing is written).

    Args:
        result: the enhanced / super-resolved volume (its ``metadata["history"]`` names the processing).
        source: what it was made from: the input :class:`Volume` (read from DICOM: its
            ``metadata["dicom"]``), a ``pydicom.Dataset``, a mapping keyword -> value, or None.
        deidentify: never keep the patient: a de-identified series in a new study.

    Raises:
        ValueError: the patient would be kept but ``result`` was made from another DICOM series than ``source``.
    """
    if not isinstance(result, Volume):
        raise TypeError(f"export_derived_series takes a Volume, got {type(result).__name__}")
    synthetic = bool(result.metadata.get("synthetic")) or _source_is_synthetic(source)
    study = _value(source, "StudyInstanceUID")
    note = None
    if synthetic:
        mode = "synthetic"
        note = None if deidentify else ("the input is synthetic (made by a model): the series is marked synthetic "
                                        "and filed under a synthetic patient, never in a real patient's study")
    elif deidentify:
        mode = "deidentified"
    elif not _is_dicom(source):
        mode = "deidentified"
        note = ("the input is not DICOM: there is no patient or study to keep; "
                "the series is de-identified, in a new study")
    elif not is_uid(study):
        mode = "deidentified"
        note = "the input's DICOM header has no valid StudyInstanceUID: the series is de-identified, in a new study"
    else:
        mode = "patient"
        made_from = _value(result.metadata.get("dicom") or {}, "SeriesInstanceUID")
        source_series = _value(source, "SeriesInstanceUID")
        if made_from and source_series and made_from != source_series:
            raise ValueError("the result was made from another DICOM series than the given source "
                             "(their SeriesInstanceUIDs differ): refusing to file it in the source's study")
    frame = _value(source, "FrameOfReferenceUID") if mode == "patient" else None
    entry = _processing_entry(result)
    return DerivedSeriesPlan(mode=mode, note=note,
                             series_description=_description(entry, synthetic=mode == "synthetic"),
                             derivation_description=_derivation(result),
                             series_number=_series_number(source),
                             frame_of_reference_uid=frame if is_uid(frame) else None)


def export_derived_series(result: Volume, folder: PathLike, source: Any, *, deidentify: bool = False,
                          overwrite: bool = False) -> List[Path]:
    """Write ``result`` as a derived CT series into ``folder`` (a new or empty folder; ``overwrite`` replaces
    only a series QHQGAN wrote), filed as :func:`plan_derived_series` decides.

    Returns:
        The paths of the written files, in slice order.
    """
    plan = plan_derived_series(result, source, deidentify=deidentify)
    return export_dicom_series(result, folder, source=source, synthetic=plan.mode == "synthetic",
                               keep_patient=plan.mode == "patient", overwrite=overwrite,
                               series_description=plan.series_description,
                               derivation_description=plan.derivation_description,
                               series_number=plan.series_number,
                               frame_of_reference_uid=plan.frame_of_reference_uid)


def check_series_folder(folder: PathLike, overwrite: bool = False) -> Path:
    """The checks :func:`export_derived_series` makes on ``folder``, to run before any work: a new or
    empty folder, or with ``overwrite`` one holding only a series QHQGAN wrote. Returns the path."""
    path = Path(folder).expanduser()
    _check_target(path, overwrite)
    return path


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _value(source: Any, keyword: str) -> Optional[str]:
    """``keyword`` of a Volume read from DICOM, a pydicom Dataset or a mapping, as a string (None if absent)."""
    if isinstance(source, Volume):
        source = source.metadata.get("dicom") or {}
    getter = getattr(source, "get", None)
    if not callable(getter):
        return None
    value = getter(keyword)
    return None if value in (None, "") else str(value).strip()


def _is_dicom(source: Any) -> bool:
    if isinstance(source, Volume):
        return bool(source.metadata.get("dicom"))
    return source is not None and callable(getattr(source, "get", None))


def _series_number(source: Any) -> int:
    text = _value(source, "SeriesNumber")
    try:
        number = int(str(text).strip())
    except (TypeError, ValueError):
        number = 1
    number += SERIES_NUMBER_OFFSET
    return number if 0 < number <= 2**31 - 1 else 1 + SERIES_NUMBER_OFFSET


def _processing_entry(result: Volume) -> str:
    """The history entry of the processing: the last enhancement or super-resolution note, else the last note."""
    history = [str(h) for h in result.metadata.get("history", []) if str(h).strip()]
    for entry in reversed(history):
        if any(p.match(entry) for p in (_ENHANCED, _UNCHANGED, _SUPER_RESOLVED, _SIMULATED)):
            return entry
    return history[-1] if history else "processed"


def _no_paths(text: str) -> str:
    """A model given as a file keeps its name only: folders may name a person (``/home/jsmith/...``)."""
    text = re.sub(r"\S*[/\\]\S*", lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1] or "model", text)
    return "".join(c if c.isprintable() else " " for c in text)


def _model_name(model: str) -> str:
    name = _no_paths(model)
    for suffix in (".safetensors", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _description(entry: str, *, synthetic: bool) -> str:
    """``[SYNTHETIC ]QHQGAN <what> <model> [S<strength>] - NOT FOR DIAGNOSIS``, at most 64 characters
    (a long model name is shortened first, so the processing and the strength stay readable)."""
    head, model, tail = _no_paths(entry).upper(), "", ""
    m = _ENHANCED.match(entry) or _UNCHANGED.match(entry)
    if m:
        strength = m.groupdict().get("strength") or ("" if m.re is _ENHANCED else "0")
        head, model = "ENHANCED", _model_name(m["model"])
        tail = (" ADAPTED" if m.groupdict().get("adapted") else "") + (f" S{strength}" if strength else "")
    elif _SUPER_RESOLVED.match(entry):
        m = _SUPER_RESOLVED.match(entry)
        head, model = f"SR X{m['scale']}{' Z' if m['z'] else ''}", _model_name(m["model"])
    elif _SIMULATED.match(entry):
        head = f"SIMULATED {float(_SIMULATED.match(entry)['dose']) * 100:g}% DOSE"
    prefix = "SYNTHETIC QHQGAN " if synthetic else "QHQGAN "
    room = LO_MAX - len(prefix) - len(NOT_FOR_DIAGNOSIS)
    if model and room - len(head) - 1 - len(tail) < 8:
        tail = tail.replace(" ADAPTED", "")  # said in DerivationDescription too
    if model and len(head) + 1 + len(model) + len(tail) > room:
        model = model[: max(8, room - len(head) - 1 - len(tail))]
    body = " ".join(f"{head} {model}{tail}".replace("\\", "/").split())[:room].rstrip()
    return prefix + body + NOT_FOR_DIAGNOSIS


def _derivation(result: Volume) -> str:
    """The processing history (model files by name), the automatic strength if any, the version, the warning."""
    history = [_no_paths(str(h)) for h in result.metadata.get("history", []) if str(h).strip()]
    parts = history or ["processed"]
    info = result.metadata.get("enhancement")
    if isinstance(info, dict) and info.get("target_noise_hu") is not None and info.get("strength") is not None:
        parts.append(f"strength {float(info['strength']):.2f} chosen for a noise of "
                     f"{float(info['target_noise_hu']):g} HU")
    text = "; ".join(parts) + f". QHQGAN {_version()}. Not for diagnostic use."
    return text.replace("\\", "/")[:1024]
