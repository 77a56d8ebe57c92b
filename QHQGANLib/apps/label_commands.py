"""``qhqgan synthesize-from-labels`` and ``qhqgan train-from-labels``: label-conditioned synthesis (issue #30, item 1).

``synthesize-from-labels`` renders a label map (tissue classes 0-6, or a user's label map recoded with
``--map VALUE=CLASS``) with a label-conditioned model (:func:`QHQGANLib.tasks.label_synthesis.synthesize_from_labels`).
Its outputs are synthetic: the file name must say so, every header carries the mark; with ``--samples N`` > 1,
sample ``i`` goes to OUT with ``_sample<i>`` before the suffix (i = 0 .. N-1). Every output is checked and
claimed before any work; all samples are written beside their targets and moved into place only when every
one is written (:func:`write_samples`: all or none), never over an existing file without ``--overwrite``
(:mod:`QHQGANLib.core.outputs`).

``train-from-labels`` trains one (:func:`QHQGANLib.training.label_synthesis.train_from_labels`) on CT
volumes and their tissue classes (derived, or given with ``--labels``, on each CT's grid), and saves it
with a card that records its training data (voxel sha256 per volume) and the crops' pixel size; its
settings are checked before any volume is read; a non-empty ``--output-dir`` is refused unless
``--resume`` or ``--overwrite``, like the other trainings.

Both read their input series with the series options of the other commands (``--regularize-tilt``,
``--resample-z MM``, ``--series-block N``; ``--series-uid`` for the label map;
:func:`QHQGANLib.apps.series_input.read_series`): train-from-labels applies them to every ``--input`` CT
(``--labels`` maps are read as they are and must lie on the grid that gives).

Console usage::

    qhqgan train-from-labels --input ct1/ --input ct2.nrrd --method hqgan --save-model runs/hqgan-labels
    qhqgan synthesize-from-labels labels.nrrd abdomen_synthetic.nrrd --model runs/hqgan-labels.safetensors \\
        --samples 4 --seed 0
    qhqgan synthesize-from-labels painted.nrrd painted_synthetic.nii.gz --model M.safetensors --map 1=4,2=6
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from ..core.kinds import LABEL_SYNTH_DEFAULT_MODEL, LABEL_SYNTH_METHODS, LABEL_SYNTH_TASK
from ..core.options import add_option_argument
from ..core.outputs import check_not_input, check_output_path, claim_output, require_synthetic_name
from .command_checks import (VOLUME_SUFFIXES, check_input as _check_input, check_model_files as _check_model_files, check_model_outputs as _check_model_outputs, progress_for as _progress, say as _say)
from .series_input import read_series
from .train_commands import _prepare_training_dir

#: train-from-labels options that set the LabelSynthConfig field of the same name when given.
TRAIN_OPTIONS = ("size", "context", "steps", "batch_size", "seed", "width", "hidden", "n_qubits", "n_layers",
                 "n_circuits", "adversarial", "n_critic", "l1_weight", "fm_weight", "adv_weight", "lr_g", "lr_d",
                 "checkpoint_every")


def parse_mapping(text: str) -> Dict[float, int]:
    """``"1=4,2=6"`` -> {1.0: 4, 2.0: 6} (argparse type of ``--map``)."""
    mapping = {}
    for item in (t for t in text.split(",") if t.strip()):
        value, sep, code = item.partition("=")
        try:
            if not sep:
                raise ValueError
            mapping[float(value)] = int(code)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: give VALUE=CLASS pairs, e.g. 1=4,2=6") from None
    return mapping


def _merge_maps(maps) -> Dict[float, int]:
    merged: Dict[float, int] = {}
    for one in maps or ():
        merged.update(one)
    return merged


def add_label_commands(sub, common: argparse.ArgumentParser, positive_int: Callable[[str], int],
                       series_options: Callable[..., None]) -> None:
    """Register both commands (called by :func:`QHQGANLib.apps.cli.build_parser`, which hands in its
    ``positive_int`` and ``_add_series_options``: importing them from ``apps.cli`` would be an import cycle)."""
    map_help = ("recode label values to tissue classes, VALUE=CLASS pairs (repeatable or comma-separated); "
                "classes: 0 outside the body, 1 air inside it, 2 lung, 3 fat, 4 soft tissue, 5 enhanced tissue and "
                "vessels, 6 bone")
    p = sub.add_parser("synthesize-from-labels", parents=[common],
                       help="render synthetic CT from a label map of tissue classes (marked synthetic)")
    p.add_argument("labels", help="the label map: tissue classes 0-6 (e.g. from tissue_labels), or a labelmap with "
                                  "--map; .nrrd, .nii(.gz), .mha")
    p.add_argument("output", help="OUT_synthetic.nrrd (the name must say 'synthetic'); with --samples N > 1, "
                                  "OUT_synthetic_sample0.nrrd ...")
    p.add_argument("--model", help=f"a label-conditioned model file (.safetensors) or shipped name (default "
                                   f"{LABEL_SYNTH_DEFAULT_MODEL}; none is shipped yet: train-from-labels makes one)")
    p.add_argument("--samples", type=positive_int, default=1, help="samples of the map, one file each (default 1)")
    add_option_argument(p, "seed")
    p.add_argument("--map", action="append", type=parse_mapping, metavar="VALUE=CLASS", help=map_help)
    p.add_argument("--write-labels", action="store_true", help="also write the class map the samples were "
                   "rendered from as OUT_label (int16, marked synthetic): image + label pairs for training")
    p.add_argument("--batch-size", type=positive_int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--force", action="store_true",
                   help="render a map whose pixel size at the model size is more than 2x from the model's")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_option_argument(p, "device")
    add_option_argument(p, "quantum_backend")
    series_options(p)  # a DICOM label series; --resample-z interpolates, so only where it mixes no classes
    p.set_defaults(func=cmd_synthesize_from_labels)

    p = sub.add_parser("train-from-labels", parents=[common],
                       help="train a label-conditioned synthesis model on CT volumes and their tissue classes")
    p.add_argument("--input", action="append", required=True, help="a CT volume or DICOM folder (repeatable)")
    p.add_argument("--labels", action="append",
                   help="a label map per --input, on its grid as read (after the series options); default: its "
                        "tissue classes by HU and morphology")
    p.add_argument("--map", action="append", type=parse_mapping, metavar="VALUE=CLASS", help=map_help)
    p.add_argument("--method", default=LABEL_SYNTH_METHODS[0], choices=LABEL_SYNTH_METHODS,
                   help="hqgan: the circuit makes each sample's style; mlp-control: its fair MLP control; spade: "
                        "the classical baseline (default hqgan)")
    p.add_argument("--size", type=int, choices=(64, 128, 256), help="model size (default 128)")
    p.add_argument("--context", type=int, choices=(0, 1, 2), help="neighbouring label slices each side (default 0)")
    for flag, text in (("--steps", "generator updates (default 2000)"), ("--batch-size", "default 8"),
                       ("--width", "generator channels at the last stage (default 16)"),
                       ("--hidden", "label-feature channels per stage (default 32)"),
                       ("--n-qubits", "default 8"), ("--n-layers", "default 4"),
                       ("--n-circuits", "circuit runs per sample (style width n-circuits x n-qubits; default 4)"),
                       ("--n-critic", "critic updates per generator update (default 1)"),
                       ("--checkpoint-every", "updates between checkpoints (default 500)")):
        p.add_argument(flag, type=positive_int, help=text)
    p.add_argument("--adversarial", choices=("hinge", "wgan-gp"), help="critic loss (default hinge)")
    for flag, text in (("--l1-weight", "default 10"), ("--fm-weight", "feature matching (default 10)"),
                       ("--adv-weight", "default 1"), ("--lr-g", "default 1e-4"), ("--lr-d", "default 4e-4")):
        p.add_argument(flag, type=float, help=text)
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--output-dir", help="config, losses.jsonl, checkpoint.pt and training_data.json go here (a new "
                                        "or empty folder, unless --resume or --overwrite)")
    p.add_argument("--resume", action="store_true", help="continue from --output-dir's checkpoint.pt")
    p.add_argument("--save-model", required=True, help="write PATH.safetensors + PATH.json")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --save-model PATH and an earlier run in a non-empty --output-dir")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    add_option_argument(p, "device")
    p.add_argument("--amp", action="store_true", help="mixed precision")
    series_options(p, every=True)
    p.set_defaults(func=cmd_train_from_labels)


def sample_paths(output, n: int) -> List[Path]:
    """``[OUT]`` for one sample; ``a/b_synthetic.nii.gz`` -> ``a/b_synthetic_sample0.nii.gz`` ... for several."""
    out = Path(output)
    if n == 1:
        return [out]
    name = out.name
    suffix = max((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), key=len, default=out.suffix)
    stem = name[: len(name) - len(suffix)]
    return [out.with_name(f"{stem}_sample{i}{name[len(name) - len(suffix):]}") for i in range(n)]


def label_path(output) -> Path:
    """Where ``--write-labels`` puts the class map of every sample: ``a/b_synthetic.nrrd`` -> ``a/b_synthetic_label.nrrd``."""
    out = Path(output)
    name = out.name
    suffix = max((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), key=len, default=out.suffix)
    return out.with_name(f"{name[: len(name) - len(suffix)]}_label{name[len(name) - len(suffix):]}")


def cmd_synthesize_from_labels(args: argparse.Namespace) -> int:
    from ..tasks.label_synthesis import check_seed, synthesize_from_labels

    require_synthetic_name(args.output)
    check_seed(args.seed)
    _check_input(args.labels)
    if args.model:
        _check_model_files(args.model)
    targets = [t.expanduser() for t in sample_paths(args.output, args.samples)]
    if args.write_labels:  # the pair's label: the class map every sample was rendered from
        targets.append(label_path(args.output).expanduser())
    for target in targets:
        if Path(args.labels).expanduser().exists():
            check_not_input(Path(args.labels).expanduser(), target)
        check_output_path(target, overwrite=args.overwrite, suffixes=VOLUME_SUFFIXES)
    with contextlib.ExitStack() as claims:
        for target in targets:
            claims.enter_context(claim_output(target))
        # a label map: its values are not HU (--force here means the scale check)
        labels = read_series(argparse.Namespace(**{**vars(args), "force": True}), args.labels, label="label map")
        with _progress(args, "synthesizing from labels") as progress:
            samples = synthesize_from_labels(labels, model=args.model, n=args.samples, seed=args.seed,
                                             mapping=_merge_maps(args.map) or None, force=args.force,
                                             progress=progress, batch_size=args.batch_size,
                                             quantum_backend=args.quantum_backend, device=args.device)
        types = ["float32"] * len(samples)
        if args.write_labels:
            from ..physics.tissue_classes import class_codes

            codes = class_codes(labels, _merge_maps(args.map) or None).astype("float32")
            label = labels.with_array(codes, note="tissue classes 0-6 the synthetic samples were rendered from")
            label.metadata["synthetic"] = True  # one half of a synthetic image + label pair
            samples, types = list(samples) + [label], types + ["int16"]
        write_samples(samples, targets, overwrite=args.overwrite, pixel_types=types)
    images = len(targets) - (1 if args.write_labels else 0)
    for volume, target in zip(samples[:images], targets):
        _say(args, f"wrote {target}: a SYNTHETIC image ({volume.metadata['history'][0]})")
    if args.write_labels:
        _say(args, f"wrote {targets[-1]}: the tissue classes 0-6 the samples were rendered from (int16)")
    return 0


def write_samples(samples: Sequence, targets: Sequence[Path], overwrite: bool = False,
                  pixel_types: Sequence[str] = ()) -> None:
    """All samples or none. Each is written and checked (``write_volume``) into one temporary folder beside
    the targets (one folder: ``sample_paths``); only when every one is there are they moved into place. A
    failure removes what this run wrote and puts back what ``overwrite`` had replaced."""
    from ..core.io import write_volume
    from ..core.outputs import commit_file, make_temp_folder, raise_if_disk_full

    parent = targets[0].parent
    tmp = make_temp_folder(parent)
    moved: List[list] = []  # [target, the file it replaced (kept in tmp) or None, moved into place]
    safe = True
    try:
        for i, (volume, target) in enumerate(zip(samples, targets)):
            try:
                write_volume(volume, tmp / target.name, pixel_type=(list(pixel_types) or ["float32"] * len(targets))[i])
            except OSError as exc:
                raise_if_disk_full(target, exc, f"No sample was written (sample {i} of {len(targets)} failed).")
                raise
        headers = {t.name for t in targets}
        staged = sorted((p for p in tmp.iterdir() if p.is_file()), key=lambda p: p.name in headers)  # headers last
        for item in staged:
            if not overwrite and (parent / item.name).exists():
                raise FileExistsError(f"{parent / item.name} appeared while this run was computing; no sample "
                                      "was written (pass --overwrite to replace it)")
        kept = tmp / ".replaced"
        for item in staged:
            target = parent / item.name
            entry = [target, None, False]
            moved.append(entry)
            if overwrite and target.exists():
                kept.mkdir(exist_ok=True)
                entry[1] = kept / item.name
                os.replace(target, entry[1])
            commit_file(item, target, overwrite)
            entry[2] = True
    except BaseException:
        for target, replaced, done in reversed(moved):
            try:
                if done:
                    target.unlink()
                if replaced is not None:
                    os.replace(replaced, target)
            except OSError:
                safe = False  # keep tmp: it may still hold a file that was replaced
        raise
    finally:
        if safe:
            shutil.rmtree(tmp, ignore_errors=True)


def cmd_train_from_labels(args: argparse.Namespace) -> int:
    from ..training.label_synthesis import check_config

    cfg = _config(args)
    check_config(cfg)  # before any volume is read
    _check_model_outputs(args)
    for path in args.labels or ():
        _check_input(path)
    if args.labels and len(args.labels) != len(args.input):
        raise ValueError(f"give one --labels per --input ({len(args.input)} inputs, {len(args.labels)} label maps)")
    with _prepare_training_dir(args):
        return _train(args, cfg)


def _config(args: argparse.Namespace):
    from ..training.label_synthesis import LabelSynthConfig

    given = {key: getattr(args, key) for key in TRAIN_OPTIONS if getattr(args, key) is not None}
    return LabelSynthConfig(method=args.method, output_dir=args.output_dir, resume=args.resume,
                            overwrite=args.overwrite, device=args.device, amp=args.amp, **given)


def _train(args: argparse.Namespace, cfg) -> int:
    from ..core.io import read_volume
    from ..nn.weights import save_model
    from ..physics.tissue_classes import TISSUE_CLASSES
    from ..training.label_synthesis import train_from_labels
    from ..training.provenance import speed, training_data

    volumes = [read_series(args, p, label=f"input {i + 1}") for i, p in enumerate(args.input)]
    label_maps = [read_volume(p, force=True) for p in args.labels] if args.labels else None
    with _progress(args, f"training {args.method} from labels") as progress:
        model = train_from_labels(volumes, cfg, label_maps=label_maps, mapping=_merge_maps(args.map) or None,
                                  progress=progress)
    card = save_model(model, args.save_model,
                      {"task": LABEL_SYNTH_TASK, "training": {**cfg.to_dict(), "output_dir": None},
                       "training_data": training_data(volumes), **speed(model),
                       "labels": ("given label maps" + (" (recoded with --map)" if args.map else "")) if args.labels
                       else "tissue classes by HU and morphology (physics.tissue_classes.tissue_labels)",
                       "classes": {str(c): name for c, name in TISSUE_CLASSES.items()},
                       **getattr(model, "training_pixel_spacing", {})},
                      overwrite=args.overwrite)
    _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...); render with qhqgan synthesize-from-labels "
               f"LABELS OUT_synthetic.nrrd --model {Path(args.save_model).with_suffix('.safetensors')}")
    return 0
