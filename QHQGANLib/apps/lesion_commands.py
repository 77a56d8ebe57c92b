"""``qhqgan insert-lesion``: a synthetic lesion rendered into a real scan (:func:`QHQGANLib.tasks.lesion.insert_lesion`).

The result is synthetic: its file name must say so (``require_synthetic_name``), its header
carries the synthetic mark, and the label map of the lesion is written beside it (by default
OUT's name with ``_label`` before the suffix, so it says synthetic too). Every output is checked
and claimed before any work, like the other commands (:mod:`QHQGANLib.core.outputs`).

Console usage::

    qhqgan insert-lesion ct.nrrd painted_mask.nrrd ct_lesion_synthetic.nrrd --kind hypodense
    qhqgan insert-lesion ct/ mask.nrrd liver_cyst_synthetic.nii.gz --kind cyst --texture smooth \\
        --label-out liver_cyst_synthetic_mask.nii.gz
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..core.options import add_option_argument
from ..core.outputs import check_not_input, check_output_path, claim_output, require_synthetic_name
from .command_checks import (VOLUME_SUFFIXES, check_input as _check_input, progress_for as _progress, say as _say)
from .output_types import write_result

#: What ``--label-out`` defaults to: OUT's name with this before the suffix.
LABEL_SUFFIX = "_label"


def add_lesion_command(sub, common: argparse.ArgumentParser) -> None:
    """Register ``insert-lesion`` (called by :func:`QHQGANLib.apps.cli.build_parser`)."""
    from ..tasks.lesion import MAX_DIAMETER_MM

    p = sub.add_parser("insert-lesion", parents=[common],
                       help="render a synthetic lesion into a real CT inside a painted mask (the result is "
                            "marked synthetic; the lesion's label map is written beside it)")
    p.add_argument("input", help="the real CT: DICOM folder or file, .nrrd, .nii(.gz), .mha")
    p.add_argument("mask", help="where the lesion goes: a label map on the CT's grid (non-zero voxels), inside "
                                f"the body, at most {MAX_DIAMETER_MM:.0f} mm across")
    p.add_argument("output", help="OUT_synthetic.nrrd (the name must say 'synthetic')")
    # --kind, --hu, --texture, --seed, --edge-mm, --output-type: the option schema the panel shares (core.options)
    for name in ("lesion_kind", "lesion_hu", "texture", "seed", "edge_mm"):
        add_option_argument(p, name)
    p.add_argument("--label-out", help=f"the lesion's label map (default: OUT with {LABEL_SUFFIX} before the suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    p.add_argument("--series-uid", help="the series to read when the DICOM folder holds several")
    add_option_argument(p, "output_type")
    p.set_defaults(func=cmd_insert_lesion)


def default_label_path(output) -> Path:
    """``a/b_synthetic.nii.gz`` -> ``a/b_synthetic_label.nii.gz``."""
    out = Path(output)
    name = out.name
    suffix = max((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), key=len, default=out.suffix)
    return out.with_name(name[: len(name) - len(suffix)] + LABEL_SUFFIX + name[len(name) - len(suffix):])


def _check_outputs(args: argparse.Namespace, label_out: Path) -> None:
    """Both outputs say synthetic, are neither input, are not each other, and are writable: before any work."""
    require_synthetic_name(args.output)
    require_synthetic_name(label_out)
    for source in (args.input, args.mask):
        _check_input(source)
        for target in (args.output, label_out):
            if Path(source).expanduser().exists():
                check_not_input(Path(source).expanduser(), Path(target).expanduser())
    if Path(args.output).expanduser().resolve() == label_out.expanduser().resolve():
        raise ValueError(f"{label_out}: the label map and the image would be the same file; give --label-out "
                         "another name")
    for target in (args.output, label_out):
        check_output_path(target, overwrite=args.overwrite, suffixes=VOLUME_SUFFIXES)


def cmd_insert_lesion(args: argparse.Namespace) -> int:
    from ..core.io import read_volume, write_volume
    from ..core.progress import report
    from ..tasks.lesion import insert_lesion

    label_out = Path(args.label_out) if args.label_out else default_label_path(args.output)
    _check_outputs(args, label_out)
    with contextlib.ExitStack() as claims:
        claims.enter_context(claim_output(args.output))
        claims.enter_context(claim_output(label_out))
        progress = claims.enter_context(_progress(args, "inserting a lesion"))
        report(progress, 0.0, "reading the scan and the mask")
        volume = read_volume(args.input, force=args.force, series_uid=args.series_uid)
        mask = read_volume(args.mask, force=True)  # a label map: its values are not HU
        report(progress, 0.3, f"rendering a {args.lesion_kind} lesion")
        image, label = insert_lesion(volume, mask, kind=args.lesion_kind, hu=args.lesion_hu, texture=args.texture,
                                     seed=args.seed, edge_mm=args.edge_mm)
        report(progress, 0.8, "writing the result and its label map")
        pixel_type = write_result(args, image)
        write_volume(label, label_out, overwrite=args.overwrite, pixel_type="int16")
        report(progress, 1.0, "done")
    _say(args, f"wrote {args.output}: a SYNTHETIC image, {pixel_type} ({image.metadata['history'][-1]})")
    _say(args, f"wrote {label_out}: the lesion's label map (1 = lesion), marked synthetic")
    return 0
