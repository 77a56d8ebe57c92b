"""Pixel types: what a source stored, and what a result is written as (issue #31).

CT scanners store whole HU as 16-bit integers; a float32 result of an int16 input is twice its
size (3.4x a compressed one) with nothing gained. So the reader records the source's pixel type
in ``metadata["source_pixel_type"]`` (a numpy dtype name: ``"int16"``, ``"uint16"``, ``"int32"``,
``"float32"``...; DICOM: from ``BitsAllocated`` and ``PixelRepresentation``, always an integer
type; NRRD/NIfTI/MHA: the type SimpleITK's reader reports; a Slicer node: its scalar type), every
derived volume keeps it (``Volume.with_array`` copies the metadata), and a result is written by
the rule of :func:`choose_pixel_type`:

* ``output_type="auto"`` (default): an input that stored integers gives int16, rounded to whole
  HU, when every value fits [-32768, 32767]; otherwise (a float input, values beyond int16) float32;
* ``"int16"``: whole HU as int16 whatever the input (ValueError when the values do not fit);
* ``"float32"``: float32 whatever the input.

:func:`for_writing` gives the volume to write (rounded for int16) with the choice in the last step
of its ``metadata["history"]``; the writer is :func:`QHQGANLib.core.io.write_volume` (``pixel_type=``).

Console usage::

    >>> from QHQGANLib.core.pixel_types import for_writing
    >>> typed, pixel_type = for_writing(result)          # result of an int16 DICOM series
    >>> pixel_type, typed.metadata["history"][-1]
    ('int16', 'enhanced by hqgan-film-enhance; stored as int16, whole HU (rounded; the input stored uint16
    pixels, output type auto)')
    >>> write_volume(typed, "enhanced.nrrd", pixel_type=pixel_type)
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

#: ``Volume.metadata`` key of the source's pixel type (a numpy dtype name).
SOURCE_PIXEL_TYPE = "source_pixel_type"
#: The ``--output-type`` choices (``core.options``): auto (the rule above), int16, float32.
OUTPUT_TYPES = ("auto", "int16", "float32")
INTEGER_TYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
INT16_MIN, INT16_MAX = -32768, 32767


def is_integer_type(pixel_type: Optional[str]) -> bool:
    """True for a stored integer type (``"int16"``, ``"uint16"``, ...)."""
    return str(pixel_type) in INTEGER_TYPES


def itk_pixel_type(pixel_id) -> Optional[str]:
    """The numpy dtype name of a SimpleITK pixel ID (None for a type QHQGAN does not read)."""
    import SimpleITK as sitk

    names = {sitk.sitkInt8: "int8", sitk.sitkUInt8: "uint8", sitk.sitkInt16: "int16", sitk.sitkUInt16: "uint16",
             sitk.sitkInt32: "int32", sitk.sitkUInt32: "uint32", sitk.sitkInt64: "int64", sitk.sitkUInt64: "uint64",
             sitk.sitkFloat32: "float32", sitk.sitkFloat64: "float64"}
    return names.get(pixel_id)


def _fits_int16(array: np.ndarray) -> bool:
    return bool(array.size == 0 or (np.rint(array.min()) >= INT16_MIN and np.rint(array.max()) <= INT16_MAX))


def choose_pixel_type(volume, output_type: str = "auto") -> Tuple[str, str]:
    """``(pixel type, why)`` for writing ``volume``: ``"int16"`` or ``"float32"`` by the module's rule,
    ``why`` in words for the history. ValueError for an unknown ``output_type``, and for ``"int16"``
    when the values do not fit the int16 range."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be {', '.join(OUTPUT_TYPES[:-1])} or {OUTPUT_TYPES[-1]}, "
                         f"got {output_type!r}")
    source = volume.metadata.get(SOURCE_PIXEL_TYPE)
    stored = f"the input stored {source} pixels" if source else "the input's pixel type is not known"
    if output_type == "float32":
        return "float32", "output type float32"
    fits = _fits_int16(volume.array)
    if output_type == "int16":
        if not fits:
            raise ValueError(f"the result's values ({volume.array.min():.0f} to {volume.array.max():.0f} HU) do not "
                             f"fit int16 [{INT16_MIN}, {INT16_MAX}]: use output type float32 or auto")
        return "int16", "output type int16"
    if not is_integer_type(source):
        return "float32", f"{stored}, output type auto"
    if not fits:
        return "float32", f"{stored} but the values do not fit int16, output type auto"
    return "int16", f"{stored}, output type auto"


def for_writing(volume, output_type: str = "auto", note: bool = True):
    """``(volume to write, pixel type)`` for :func:`QHQGANLib.core.io.write_volume`: rounded to whole HU
    for int16. The choice is added to the last step of its history (the step that made the result:
    ``"enhanced by ...; stored as int16, whole HU (rounded; ...)"``), or is its only step; ``note=False``
    records nothing (e.g. a temporary file)."""
    pixel_type, why = choose_pixel_type(volume, output_type)
    if pixel_type == "int16":
        typed = volume.with_array(np.rint(volume.array))
        if typed.metadata.get("padding_hu") is not None:  # the padding mark stays exact after rounding
            typed.metadata["padding_hu"] = float(np.rint(typed.metadata["padding_hu"]))
        text = f"stored as int16, whole HU (rounded; {why})"
    elif not note:
        return volume, pixel_type
    else:
        typed = volume.with_array(volume.array)
        text = f"stored as float32 ({why})"
    if note:
        steps = list(typed.metadata.get("history") or [])
        typed.metadata["history"] = steps[:-1] + [f"{steps[-1]}; {text}" if steps else text]
    return typed, pixel_type
