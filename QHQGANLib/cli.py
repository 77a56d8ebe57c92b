"""The ``qhqgan`` command line.

Usage::

    qhqgan info                                   # versions, compute device, models
    qhqgan demo [--input CT] [--dose 0.25]        # simulate low dose on a real CT, figure + metrics
    qhqgan simulate-low-dose IN OUT --dose 0.25 --seed 0
    qhqgan degrade-resolution IN OUT --scale 2

Errors print one line and exit with status 2 (1 for an unexpected failure);
``--debug`` shows the traceback instead. Long steps draw a progress bar on stderr.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import List, Optional

from . import __version__

EXPECTED_ERRORS = (ValueError, FileExistsError, FileNotFoundError, PermissionError, ImportError)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .resources import model_cards, models_dir

    info = {"qhqgan": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "pennylane", "pennylane-lightning", "SimpleITK", "pydicom", "numpy",
                    "vtk", "astra-toolbox", "scikit-image"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["cuda"] = "torch not installed"
    info["models_dir"] = str(models_dir())
    info["models"] = [card["name"] for card in model_cards()]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "models":
            value = ", ".join(value) if value else "none shipped yet (enhancement models come with the next release)"
        print(f"{key:<{width}}  {value}")
    return 0


def _check_output(input_path: Path, output_path: Path) -> None:
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"the output {output_path} is the input: QHQGAN never overwrites its input")


def cmd_simulate_low_dose(args: argparse.Namespace) -> int:
    from .io import read_volume, write_volume
    from .lowdose import simulate_low_dose

    _check_output(Path(args.input), Path(args.output))
    volume = read_volume(args.input, force=args.force, series_uid=args.series_uid)
    with _progress(args, f"simulating {args.dose:.0%} dose") as progress:
        low = simulate_low_dose(volume, args.dose, seed=args.seed, progress=progress)
    write_volume(low, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {low.shape[0]} slice(s) at {args.dose:.0%} of the input dose (seed {args.seed})")
    return 0


def cmd_degrade_resolution(args: argparse.Namespace) -> int:
    from .io import read_volume, write_volume
    from .lowdose import degrade_resolution

    _check_output(Path(args.input), Path(args.output))
    volume = read_volume(args.input, force=args.force, series_uid=args.series_uid)
    low = degrade_resolution(volume, args.scale)
    write_volume(low, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {low.size_xyz} voxels at spacing {tuple(round(s, 4) for s in low.spacing)} mm")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(input_path=args.input, dose=args.dose, seed=args.seed, output_dir=args.output_dir,
                      max_slices=args.max_slices, show_progress=not args.quiet, force=args.force)
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------
def _progress(args: argparse.Namespace, description: str):
    from .progress import progress_reporter

    return progress_reporter(description, "none" if args.quiet else args.progress)


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    common.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    common.add_argument("--progress", choices=("bar", "lines", "none"), default="bar",
                        help="progress display: a bar on stderr (default), machine-readable "
                             "'QHQGAN-PROGRESS <fraction> <message>' lines on stdout, or none")

    parser = argparse.ArgumentParser(
        prog="qhqgan", parents=[common],
        description="Hybrid quantum-classical GAN tools for CT: low-dose simulation, enhancement, synthesis.")
    parser.add_argument("--version", action="version", version=f"qhqgan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", parents=[common], help="versions, compute device and available models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    def add_io(p: argparse.ArgumentParser) -> None:
        p.add_argument("input", help="input CT: DICOM folder or file, .nrrd, .nii(.gz), .mha")
        p.add_argument("output", help="output file: .nrrd, .nhdr, .nii(.gz), .mha, .mhd")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
        p.add_argument("--series-uid", help="the series to read when the DICOM folder holds several")

    p = sub.add_parser("simulate-low-dose", parents=[common],
                       help="simulate a lower-dose acquisition of a CT (physics-based noise insertion)")
    add_io(p)
    p.add_argument("--dose", type=_dose, default=0.25, help="dose fraction in (0, 1], default 0.25")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_simulate_low_dose)

    p = sub.add_parser("degrade-resolution", parents=[common],
                       help="blur and downsample in-plane like a lower-resolution acquisition")
    add_io(p)
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="in-plane factor (default 2)")
    p.set_defaults(func=cmd_degrade_resolution)

    p = sub.add_parser("demo", parents=[common],
                       help="run the main job on a real CT (pydicom's CT_small.dcm unless --input)")
    p.add_argument("--input", help="a CT to use instead of the bundled CT_small.dcm")
    p.add_argument("--dose", type=_dose, default=0.25, help="simulated dose fraction (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output-dir", help="folder for the outputs (default: qhqgan-demo-<time> here)")
    p.add_argument("--max-slices", type=int, default=8, help="use at most this many central slices (default 8)")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    p.set_defaults(func=cmd_demo)
    return parser


def _dose(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"dose fraction must be in (0, 1], got {text}")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .progress import OperationCancelled

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("qhqgan: interrupted; no output was written", file=sys.stderr)
        return 130
    except OperationCancelled:
        print("qhqgan: cancelled; no output was written", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(f"qhqgan: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(f"qhqgan: unexpected {type(exc).__name__}: {exc} (run again with --debug for details)",
              file=sys.stderr)
        return 1


def timestamped_folder(prefix: str, parent: Optional[str] = None) -> Path:
    """A new folder ``<prefix>-YYYYmmdd-HHMMSS`` (suffixed when it exists)."""
    base = Path(parent or ".") / f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


if __name__ == "__main__":  # python -m QHQGANLib.cli
    sys.exit(main())
