"""A command's result written in the pixel type ``--output-type`` asks for (issue #31).

The rule (``auto``: int16 of whole HU for an input that stored integers, when the values fit;
float32 otherwise) is :mod:`QHQGANLib.core.pixel_types`'s; the choice goes into the output's
history. The commands of :mod:`QHQGANLib.apps.commands` and :mod:`QHQGANLib.apps.lesion_commands`
write through :func:`write_result`; the Slicer panel's worker is the same CLI.

Console usage::

    >>> from QHQGANLib.apps.output_types import write_result
    >>> write_result(args, result)        # args.output, args.overwrite, args.output_type
    'int16'
"""
from __future__ import annotations

import argparse


def check_output_type(args: argparse.Namespace) -> None:
    """Before any work: a ``--dicom`` series stores integers, so ``--output-type float32`` is refused with it."""
    if getattr(args, "dicom", False) and getattr(args, "output_type", "auto") == "float32":
        raise ValueError("--output-type float32 is for a volume file: a --dicom series stores int16 HU; "
                         "leave --output-type out")


def write_result(args: argparse.Namespace, volume, output=None) -> str:
    """``volume`` written to ``output`` (default ``args.output``; ``args.overwrite``) in the pixel type of
    ``args.output_type`` (``auto`` when the command has none); returns that pixel type."""
    from ..core.io import write_volume
    from ..core.pixel_types import for_writing

    typed, pixel_type = for_writing(volume, getattr(args, "output_type", None) or "auto")
    write_volume(typed, args.output if output is None else output, overwrite=args.overwrite, pixel_type=pixel_type)
    return pixel_type
