"""Reading a command's input CT with its series options, the same way for every command (issue #31).

``--series-uid``, ``--regularize-tilt``, ``--resample-z MM`` and ``--series-block N`` (the parser:
:mod:`QHQGANLib.apps.cli`) mean the same for enhance, super-resolve, simulate-low-dose,
degrade-resolution, train-enhance, train-synth, evaluate and demo, and reading says on stderr what
it changed (a tilt regularized, a block read, slices resampled or kept at their own positions).

An uneven series (one gap of 1.0 mm among 1.5 mm gaps, a missing slice, two blocks of one orientation):

* slice-wise tasks (enhance, in-plane super-resolve, simulate-low-dose) writing a DICOM series
  (``--dicom``) read it as it is, each slice at its own position (:mod:`QHQGANLib.core.slice_positions`);
  ``evaluate`` too (it writes no image);
* the same tasks writing NRRD, NIfTI or MetaImage, which hold one regular grid, refuse it before any
  work with one line offering ``--dicom``, ``--resample-z MM`` and ``--series-block N``;
* through-plane super-resolution (``--axis z``) needs one regular grid of acquired slices and says so;
* everything else (training, the demo, degrade-resolution) refuses it with the reader's message
  (``--resample-z`` or ``--series-block``).

Not one series (mixed orientations, two slices at one position) is refused by the reader in every case.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

#: What through-plane super-resolution needs of its input (said when an uneven series is refused).
THROUGH_PLANE_NEEDS = ("super-resolve --axis z needs the slices as acquired, one slice thickness on one regular grid "
                       "(its model restores a known slice profile; interpolated or mixed slices have another)")


def read_series(args: argparse.Namespace, path, *, slice_wise: bool = False, through_plane: bool = False,
                keep_positions: Optional[bool] = None, label: str = "input"):
    """``path`` read with the command's series options; the reader's notes on stderr (unless --quiet).

    ``slice_wise``: the command processes slice by slice and writes ``args.output`` (a DICOM series with
    ``args.dicom``): an uneven series is kept at its slices' positions for a DICOM output and refused with
    the options that help otherwise. ``keep_positions`` forces the choice (``evaluate``: True, no image
    is written). ``through_plane``: super-resolve --axis z (no resampled or uneven slices).
    """
    from ..core.io import read_volume
    from ..core.slice_grid import UnevenSeriesError

    resample_z = getattr(args, "resample_z", None)
    if through_plane and resample_z is not None:
        raise ValueError(f"{THROUGH_PLANE_NEEDS}: --resample-z would give it interpolated slices; read one "
                         "regular block of an uneven series with --series-block N instead")
    dicom = bool(getattr(args, "dicom", False))
    if keep_positions is None:
        keep_positions = slice_wise and dicom and not through_plane
    try:
        volume = read_volume(path, force=getattr(args, "force", False), series_uid=getattr(args, "series_uid", None),
                             regularize_tilt=getattr(args, "regularize_tilt", False), resample_z=resample_z,
                             series_block=getattr(args, "series_block", None), keep_positions=keep_positions)
    except UnevenSeriesError as exc:
        if through_plane:
            block = (f": read one regular block with --series-block N (N from 1 to {exc.n_blocks})"
                     if exc.n_blocks > 1 else "")
            raise ValueError(f"{path}: {exc.description}; {THROUGH_PLANE_NEEDS}{block}") from None
        if slice_wise and not dicom and not exc.mixed_orientation:
            raise ValueError(uneven_output_message(path, exc, getattr(args, "output", None))) from None
        raise
    if not getattr(args, "quiet", False):
        for note in volume.metadata.get("history", []):
            print(f"qhqgan: note: {label} {note}", file=sys.stderr)
    return volume


def uneven_output_message(path, exc, output=None) -> str:
    """One line: the series is uneven, the output file holds one regular grid, and the three ways out."""
    from pathlib import Path

    from ..core.slice_grid import mm

    target = f"the output {Path(str(output)).name}" if output else "the output"
    block = (f", or read one regular block as acquired with --series-block N (N from 1 to {exc.n_blocks})"
             if exc.n_blocks > 1 else "")
    return (f"{path}: the series is uneven ({exc.kind}: {exc.description}); {target} (NRRD, NIfTI or MetaImage) "
            "holds one regular grid, which would claim slice positions these slices do not have: write a derived "
            "DICOM series with --dicom (OUTPUT a folder; keeps every slice's own position), or resample with "
            f"--resample-z MM (e.g. --resample-z {mm(exc.suggested_mm)}: interpolated slices){block}")
