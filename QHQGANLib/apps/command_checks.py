"""What every ``qhqgan`` command checks before its work and how it talks (shared by :mod:`commands`,
:mod:`train_commands`, :mod:`lesion_commands` and :mod:`label_commands`): inputs that are regular files or
folders, output paths checked and claimed before any work, model files, the progress display and the
one-line messages.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Optional

from ..core.file_checks import require_regular_file
from ..core.outputs import check_not_input, check_output_path, check_report_path, claim_output
from .series_input import read_series

#: Endings of the volume files the commands write (DICOM goes to a folder).
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def prepare_output(args: argparse.Namespace, folder: bool = False) -> contextlib.AbstractContextManager:
    """Check the output path before any work (exists, missing folder, a folder, wrong ending, the input
    itself) and claim it for this run; the returned context holds the claim until the command ends."""
    if getattr(args, "input", None) and isinstance(args.input, str):
        check_input(args.input)
        check_not_input(args.input, args.output)
    out = check_output_path(args.output, overwrite=args.overwrite, suffixes=VOLUME_SUFFIXES, folder=folder)
    return claim_output(out)


def read_input(args: argparse.Namespace, through_plane: bool = False, slice_wise: bool = False):
    """The command's input, read with its series options (apps.series_input: an uneven series is kept at
    its slices' positions for a slice-wise task's DICOM output); notes on stderr say what reading changed."""
    return read_series(args, args.input, slice_wise=slice_wise, through_plane=through_plane)


def check_input(path) -> None:
    """An input that exists must be a folder or a regular file: a FIFO, socket or device is refused
    before anything opens it (reading one blocks for ever). A missing input is left to the reader."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        require_regular_file(p)


def model_files(model) -> list:
    """The files a ``--model`` given as a path is made of (the path, its weights and its card); [] for a name."""
    from ..nn.weights import model_paths

    if not isinstance(model, (str, os.PathLike)):
        return []
    text = str(model)
    if not (text.endswith((".json", ".safetensors")) or os.path.sep in text or Path(text).expanduser().exists()):
        return []  # a shipped model's name
    path = Path(text).expanduser()
    return [path] + model_paths(path)


def check_model_files(model) -> None:
    """Every file of a model given as a path is a regular file, checked before any is opened (a FIFO as
    ``--model`` would block the loader for ever)."""
    for f in model_files(model):
        if f.exists():
            require_regular_file(f, role="model")


def prepare_report(args: argparse.Namespace, inputs) -> Optional[Path]:
    """``--json PATH``: checked before any work like a volume output (folder exists, not an input,
    not existing unless --overwrite) and claimed by the caller; None when not asked for."""
    if not args.json:
        return None
    return check_report_path(args.json, inputs, overwrite=args.overwrite)


def check_model_outputs(args: argparse.Namespace) -> None:
    """--save-model PATH: both PATH.safetensors and PATH.json are checked before training starts."""
    from ..nn.weights import model_paths

    if args.save_model:
        for target in model_paths(args.save_model):
            check_output_path(target, overwrite=args.overwrite)


def check_model_task(model, task: str) -> None:
    """Refuse a shipped model made for another task before any work (not a tensor shape error later)."""
    from ..core.resources import model_cards

    if not isinstance(model, str) or model.endswith((".json", ".safetensors")) or os.path.sep in model:
        return  # custom files are checked when loaded
    card = next((c for c in model_cards() if c.get("name") == model), None)
    if card is not None and card.get("task") not in (task, None):
        fitting = [c["name"] for c in model_cards() if c.get("task") == task]
        raise ValueError(f"{model} is a {card.get('task')} model, not a {task} model; use one of: "
                         f"{', '.join(fitting) or 'none installed'}")


def progress_for(args: argparse.Namespace, description: str):
    from ..core.progress import progress_reporter

    return progress_reporter(description, "none" if args.quiet else args.progress)


def say(args: argparse.Namespace, message: str) -> None:
    from ..core.file_checks import printable

    if not args.quiet:
        print(printable(message))
