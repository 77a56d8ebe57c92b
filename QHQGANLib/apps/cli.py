"""The ``qhqgan`` command line: the parser and the entry point (the commands are :mod:`QHQGANLib.apps.commands`).

The options of the tasks (enhance, super-resolve, synthesize, simulate-low-dose)
come from :mod:`QHQGANLib.core.options`, so they have the same defaults and ranges
as the Slicer panel and the background runner; a value out of range is refused
with the allowed range.

Console usage::

    qhqgan info                                   # versions, compute device, models
    qhqgan demo [--input CT] [--dose 0.25] [--model redcnn-enhance]   # low dose + enhancement, figure + metrics
    qhqgan simulate-low-dose IN OUT --dose 0.25 --seed 0
    qhqgan enhance IN OUT [--model hqgan-enhance] [--device cuda] [--tile-batch 16]
    qhqgan enhance CT_FOLDER OUT_FOLDER --dicom [--deidentify]   # a derived DICOM series
    qhqgan enhance CT_FOLDER OUT.nrrd --resample-z 3             # uneven gaps or two blocks: a 3 mm grid
    qhqgan simulate-low-dose CT_FOLDER OUT.nrrd --series-block 2 # or one regular block as acquired
    python -m QHQGANLib degrade-resolution IN OUT --scale 2
    qhqgan insert-lesion IN MASK OUT_synthetic.nrrd --kind hypodense   # a synthetic lesion + its label map
    qhqgan train-from-labels --input CT --save-model M                 # a label-conditioned model
    qhqgan synthesize-from-labels LABELS OUT_synthetic.nrrd --model M.safetensors --samples 4

Errors print one line and exit with status 2 (1 for an unexpected failure);
``--debug`` shows the traceback instead. Long steps draw a progress bar on stderr.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import List, Optional

from ..core.constants import __version__
from ..core.devices import DEVICES
from ..core.kinds import ENHANCE_ARCHS, SYNTH_METHODS, TRAINABLE_IMAGE_TASKS, default_model, preferred_models
from ..core.options import add_option_argument, add_task_arguments, check_task_values
from . import commands, train_commands
from .label_commands import add_label_commands
from .lesion_commands import add_lesion_command
from .reader_cli import add_reader_study_commands

#: Errors with a message meant for the user (OSError: full disk, a folder given as output, permissions).
EXPECTED_ERRORS = (ValueError, OSError, ImportError)

#: One line of help per task command.
TASK_HELP = {
    "enhance": "denoise a low-dose CT with an enhancement model",
    "super-resolve": "x2 in-plane super-resolution of a CT, or thick slices to thin ones (--axis z --scale 2|3|4)",
    "synthesize": "generate synthetic CT slices (marked synthetic in names, headers and DICOM)",
    "simulate-low-dose": "simulate a lower-dose acquisition of a CT (physics-based noise insertion)",
}


class TaskArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that also refuses task options that do not go together
    (:func:`QHQGANLib.core.options.check_task_values`, e.g. ``super-resolve --scale 4`` without ``--axis z``)."""

    qhqgan_task: Optional[str] = None

    def parse_known_args(self, args=None, namespace=None):
        namespace, rest = super().parse_known_args(args, namespace)
        if self.qhqgan_task:
            try:
                check_task_values(self.qhqgan_task, vars(namespace))
            except ValueError as exc:
                self.error(str(exc))
        return namespace, rest


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--steps 0`` would save an untrained model)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (a spacing in mm)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input CT: DICOM folder or file, .nrrd, .nii(.gz), .mha")
    p.add_argument("output", help="output file: .nrrd, .nhdr, .nii(.gz), .mha, .mhd")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    _add_series_options(p)


def _add_series_options(p: argparse.ArgumentParser, every: bool = False) -> None:
    """How a DICOM series is read (apps.series_input); ``every``: applied to every --input."""
    each = " (applied to every --input)" if every else ""
    if not every:
        p.add_argument("--series-uid", help="the series to read when the DICOM folder holds several")
    p.add_argument("--regularize-tilt", action="store_true",
                   help="resample a gantry-tilted DICOM series onto a regular grid (refused otherwise)" + each)
    p.add_argument("--resample-z", type=positive_float, metavar="MM",
                   help="resample along z to a regular grid of MM mm from the slices' real positions (linear, "
                        "no extrapolation): for a DICOM series with uneven gaps or several blocks (refused "
                        "otherwise); stated in the output's history and header" + each)
    p.add_argument("--series-block", type=positive_int, metavar="N",
                   help="read only the N-th regular block (from 1, in slice order) of a multi-block DICOM series"
                        + each)


def _add_task_commands(sub, common: argparse.ArgumentParser) -> None:
    """enhance, super-resolve, synthesize and simulate-low-dose, their options from the schema."""
    for task, func in (("simulate-low-dose", commands.cmd_simulate_low_dose), ("enhance", commands.cmd_enhance),
                       ("super-resolve", commands.cmd_super_resolve), ("synthesize", commands.cmd_synthesize)):
        help_text = TASK_HELP[task]
        if default_model(task):
            help_text += f" (default model {default_model(task)})"
        p = sub.add_parser(task, parents=[common], help=help_text)
        p.qhqgan_task = task
        if task == "synthesize":
            p.add_argument("output", help="OUT_synthetic.nrrd (or a folder with --dicom); the name must say "
                                          "'synthetic'")
            p.add_argument("--dicom", action="store_true", help="write a DICOM series folder (SyntheticData YES)")
            p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        else:
            _add_io(p)
        if task in ("enhance", "super-resolve"):
            p.add_argument("--dicom", action="store_true",
                           help="OUTPUT is a folder: a derived DICOM series, in the input's patient and study when "
                                "the input is DICOM (the one output that carries the patient's identity); an "
                                "uneven series keeps every slice's own position")
            p.add_argument("--deidentify", action="store_true",
                           help="with --dicom: a de-identified series in a new study, for sharing")
        elif task == "simulate-low-dose":
            p.add_argument("--dicom", action="store_true",
                           help="OUTPUT is a folder: a DICOM series, always de-identified in a new study (a simulation "
                                "is no acquisition of the patient); an uneven series keeps every slice's position")
        add_task_arguments(p, task)
        p.set_defaults(func=func)


def _add_training_commands(sub, common: argparse.ArgumentParser) -> None:
    def add_compute(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", choices=DEVICES, help="compute device (default auto: CUDA "
                                                                          "when available)")
        p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (faster, less memory)")

    p = sub.add_parser("train-enhance", parents=[common],
                       help="train an enhancement / super-resolution model on normal-dose CT "
                            "(also under torchrun --nproc_per_node N -m QHQGANLib train-enhance ...)")
    p.add_argument("--input", action="append", required=True, help="a normal-dose CT (repeatable)")
    p.add_argument("--arch", default=ENHANCE_ARCHS[0], choices=ENHANCE_ARCHS)
    p.add_argument("--task", default=TRAINABLE_IMAGE_TASKS[0], choices=TRAINABLE_IMAGE_TASKS)
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--patch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adv-weight", type=float, default=1e-3, help="adversarial weight (0 = regression)")
    p.add_argument("--ssim-weight", type=float, default=0.1)
    p.add_argument("--dose-min", type=float, default=0.05, help="lowest simulated dose fraction (default 0.05)")
    p.add_argument("--dose-max", type=float, default=0.5)
    p.add_argument("--pool-size", type=positive_int, default=4, help="low-dose realisations per volume")
    p.add_argument("--width", type=positive_int, default=16)
    p.add_argument("--n-qubits", type=positive_int, default=8)
    p.add_argument("--n-layers", type=positive_int, default=2)
    p.add_argument("--redcnn-width", type=positive_int, default=96)
    p.add_argument("--redcnn-context", type=int, default=0, choices=(0, 1),
                   help="RED-CNN's neighbour slices each side: 0 = one slice (published), 1 = 3 slices as HQGAN")
    p.add_argument("--loss", default="l1-ssim-adv", choices=("l1-ssim-adv", "mse"),
                   help="l1-ssim-adv (default): L1 + SSIM + adversarial; mse: MSE alone, no critic "
                        "(RED-CNN's published loss)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", help="checkpoints, config and losses.jsonl go here (a new or empty folder, "
                                        "unless --resume or --overwrite)")
    p.add_argument("--checkpoint-every", type=positive_int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    p.add_argument("--save-model", help="write the trained model as PATH.safetensors + PATH.json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save-model PATH and an earlier run in a non-empty --output-dir")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    _add_series_options(p, every=True)
    add_compute(p)
    p.set_defaults(func=train_commands.cmd_train_enhance)

    p = sub.add_parser("train-synth", parents=[common],
                       help="train a synthetic-CT generator on the slices of CT volumes")
    p.add_argument("--input", action="append", required=True, help="a CT volume or DICOM folder (repeatable)")
    p.add_argument("--roi", action="append", help="a segmentation/label volume per input: crop slices to it")
    p.add_argument("--method", default=SYNTH_METHODS[0], choices=SYNTH_METHODS)
    p.add_argument("--size", type=int, default=64, choices=(64, 128))
    p.add_argument("--steps", type=positive_int,
                   help="generator updates (default 1200: about 5 min at 64x64 on 2 idle CPU cores)")
    p.add_argument("--batch-size", type=positive_int, help="default 32")
    p.add_argument("--n-qubits", type=positive_int, help="default 8")
    p.add_argument("--n-layers", type=positive_int, help="default 4")
    p.add_argument("--n-circuits", type=positive_int,
                   help="methods with a circuit slot (hqgan and its controls): runs of the block (same weights) "
                        "on independent noise per sample; their n-qubit outputs are concatenated (default 4)")
    p.add_argument("--n-critic", type=positive_int,
                   help="critic updates per generator update of the WGAN-GP methods (default 2; "
                        "the paper's 5 takes about twice as long)")
    p.add_argument("--width", type=positive_int, help="decoder channels at the last stage, x8 at 4x4 (default 16)")
    p.add_argument("--blocks", choices=("plain", "residual"),
                   help="decoder stages: plain (default) or residual (more capacity, for anatomy at 128x128)")
    p.add_argument("--lr-g", type=float, help="generator learning rate (default: the method's setting)")
    p.add_argument("--lr-d", type=float, help="critic learning rate (default: the method's setting)")
    p.add_argument("--diffaugment",
                   help="augmentation of the critic's inputs, comma-separated from translation,cutout; "
                        "'' for none (default translation)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--output-dir", help="config, losses.jsonl and checkpoint.pt go here (a new or empty folder, "
                                        "unless --resume or --overwrite)")
    p.add_argument("--checkpoint-every", type=positive_int, help="updates between checkpoints (default 500)")
    p.add_argument("--resume", action="store_true", help="continue from --output-dir's checkpoint.pt")
    p.add_argument("--save-model", required=True, help="write PATH.safetensors + PATH.json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save-model PATH and an earlier run in a non-empty --output-dir")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    _add_series_options(p, every=True)
    add_compute(p)
    p.set_defaults(func=train_commands.cmd_train_synth)


def _add_evaluation_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[common],
                       help="score enhancement / SR models side by side on normal-dose CT (PSNR, SSIM, noise, speed)")
    p.add_argument("--input", action="append", required=True, help="a held-out normal-dose CT (repeatable)")
    p.add_argument("--models", help="comma-separated model names or files (default, enhance: "
                                    f"{','.join(preferred_models('enhance'))}; super-resolve: "
                                    f"{','.join(preferred_models('super-resolve'))})")
    p.add_argument("--task", default=TRAINABLE_IMAGE_TASKS[0], choices=TRAINABLE_IMAGE_TASKS)
    p.add_argument("--doses", default="0.25,0.1", help="comma-separated dose fractions (enhance)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", help="also write the rows to this JSON file (a new file, checked before the run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--force", action="store_true")
    _add_series_options(p, every=True)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("evaluate-synth", parents=[common],
                       help="fidelity, diversity and memorization of synthetic slices against real ones")
    p.add_argument("samples", help="the synthetic volume (e.g. from qhqgan synthesize)")
    p.add_argument("--real", action="append", required=True, help="held-out real CT (repeatable)")
    p.add_argument("--train", action="append", help="the training CT, for the memorization check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--c2st", action=argparse.BooleanOptionalAction, default=True,
                   help="classifier two-sample test: 5-fold accuracy of a small CNN telling samples from "
                        "the real slices, and real half vs real half (~0.5); seconds on a CPU (default: on)")
    p.add_argument("--json", help="also write the full result to this JSON file (a new file, checked before the run)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=commands.cmd_evaluate_synth)


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """--debug, --quiet, --progress: accepted before the command and after it.

    The command's copy has no defaults (``SUPPRESS``), so ``qhqgan --quiet enhance ...`` keeps
    the value given before the command instead of the command's default silently replacing it.
    """
    def default(value):
        return argparse.SUPPRESS if suppress else value

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=default(False),
                        help="show the full traceback on errors")
    common.add_argument("--quiet", action="store_true", default=default(False), help="no progress bars or messages")
    common.add_argument("--progress", choices=("bar", "lines", "none"), default=default("bar"),
                        help="progress display: a bar on stderr (default), machine-readable "
                             "'QHQGAN-PROGRESS <fraction> <message>' lines on stdout, or none")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(suppress=True)
    parser = TaskArgumentParser(
        prog="qhqgan", parents=[_global_options(suppress=False)],
        description="Hybrid quantum-classical GAN tools for CT: low-dose simulation, enhancement, synthesis.")
    parser.add_argument("--version", action="version", version=f"qhqgan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", parents=[common], help="versions, compute device and available models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=commands.cmd_info)

    _add_task_commands(sub, common)

    p = sub.add_parser("degrade-resolution", parents=[common],
                       help="blur and downsample in-plane like a lower-resolution acquisition")
    _add_io(p)
    p.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="in-plane factor (default 2)")
    add_option_argument(p, "output_type")
    p.set_defaults(func=commands.cmd_degrade_resolution)

    _add_training_commands(sub, common)
    _add_evaluation_commands(sub, common)
    add_reader_study_commands(sub, common)
    add_lesion_command(sub, common)
    add_label_commands(sub, common, positive_int, _add_series_options)

    p = sub.add_parser("list-models", parents=[common], help="the shipped models and their validation metrics")
    p.set_defaults(func=commands.cmd_list_models)

    p = sub.add_parser("demo", parents=[common],
                       help="run the main job on a real CT (pydicom's CT_small.dcm unless --input)")
    p.add_argument("--input", help="a CT to use instead of the bundled CT_small.dcm")
    p.add_argument("--model", help=f"a shipped enhancement model or weights file (default {default_model('enhance')})")
    add_option_argument(p, "dose")
    add_option_argument(p, "seed")
    p.add_argument("--output-dir", help="folder for the outputs (default: qhqgan-demo-<time> here)")
    p.add_argument("--max-slices", type=int, default=8,
                   help="use at most this many slices, around the slice shown (default 8)")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    _add_series_options(p)
    p.set_defaults(func=commands.cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ..core.file_checks import printable
    from ..core.progress import OperationCancelled

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # clean up temporary files and claims, like Ctrl-C
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("qhqgan: interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated:
        print("qhqgan: terminated; no output was written", file=sys.stderr)
        return 143
    except OperationCancelled:
        print("qhqgan: cancelled; no output was written", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(f"qhqgan: error: {printable(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(f"qhqgan: unexpected {type(exc).__name__}: {printable(exc)} (run again with --debug for details)",
              file=sys.stderr)
        return 1


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so every ``finally`` removes what the run created."""


def _terminate(signum, frame) -> None:
    raise Terminated()


if __name__ == "__main__":  # python -m QHQGANLib.apps.cli (or python -m QHQGANLib)
    sys.exit(main())
