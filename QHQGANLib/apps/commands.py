"""What each ``qhqgan`` command does, given its parsed arguments (the parser is :mod:`QHQGANLib.apps.cli`).

Every ``cmd_*`` function takes the ``argparse.Namespace`` of its command and
returns the exit status; errors are raised and turned into one line by
:func:`QHQGANLib.apps.cli.main`. Heavy imports (torch, SimpleITK) happen inside.

Console usage::

    >>> from QHQGANLib.apps.cli import build_parser
    >>> from QHQGANLib.apps.commands import cmd_simulate_low_dose
    >>> cmd_simulate_low_dose(build_parser().parse_args(["simulate-low-dose", "ct.nrrd", "low.nrrd"]))
    0
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import warnings
from importlib import metadata

from ..core.constants import __version__
from ..core.kinds import default_model, preferred_models
from ..core.outputs import claim_output, require_synthetic_name, write_text_output
from .command_checks import (check_input as _check_input, check_model_files as _check_model_files,  # noqa: F401
                             check_model_task as _check_model_task, model_files as _model_files,
                             prepare_output as _prepare_output, prepare_report as _prepare_report,
                             progress_for as _progress, read_input as _read_input, say as _say)
from .output_types import check_output_type, write_result
from .series_input import read_series

def cmd_info(args: argparse.Namespace) -> int:
    from ..core.resources import model_cards, models_dir

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
            value = ", ".join(value) if value else "none installed"
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_simulate_low_dose(args: argparse.Namespace) -> int:
    from ..physics.lowdose import simulate_low_dose

    check_output_type(args)
    with _prepare_output(args, folder=args.dicom):
        if args.dicom:
            from ..core.dicom_derived import check_series_folder

            check_series_folder(args.output, args.overwrite)
        volume = _read_input(args, slice_wise=True)
        with _progress(args, f"simulating {args.dose:.0%} dose") as progress:
            low = simulate_low_dose(volume, args.dose, seed=args.seed, progress=progress,
                                    reference_noise_hu=args.reference_noise_hu, photons=args.photons)
        pixel_type = (_write_derived_series(args, low, volume, simulated=True) if args.dicom
                      else write_result(args, low))
    _say(args, f"wrote {args.output}: {low.shape[0]} slice(s) at {args.dose:.0%} of the input dose (seed {args.seed}), "
               f"{pixel_type}")
    info = low.metadata["low_dose"]
    if args.dose < 1.0:
        if info["reference_noise_hu"] is None:
            reference = "input noise not used: a fixed photon count" if args.photons else "input noise unmeasurable"
        else:
            reference = (f"target {info['target_inserted_noise_hu']:.1f} HU = sqrt(1/{args.dose:g} - 1) x "
                         f"{info['reference_noise_hu']:.1f} HU input noise ({info['reference_noise_source']})")
        _say(args, f"inserted noise {info['inserted_noise_hu']:.1f} HU ({reference}); {info['photons']:.3g} photons; "
                   f"truncated slices {info['truncation'].get('truncated_slices', 'not checked')}")
    return 0


def cmd_degrade_resolution(args: argparse.Namespace) -> int:
    from ..physics.resolution import degrade_resolution

    with _prepare_output(args):
        volume = _read_input(args)
        low = degrade_resolution(volume, args.scale)
        pixel_type = write_result(args, low)
    _say(args, f"wrote {args.output}: {low.size_xyz} voxels at spacing {tuple(round(s, 4) for s in low.spacing)} mm, "
               f"{pixel_type}")
    return 0


def _run_model_command(args: argparse.Namespace, task: str) -> int:
    from ..tasks.enhance import enhance, super_resolve

    dicom = bool(getattr(args, "dicom", False))
    if getattr(args, "deidentify", False) and not dicom:
        raise ValueError("--deidentify is for a DICOM output: add --dicom (OUTPUT is then a folder)")
    check_output_type(args)
    through_plane = task == "super-resolve" and getattr(args, "axis", "in-plane") == "z"
    # through-plane: None lets super_resolve name the default model, or say none is installed and what to do
    model = args.model or (None if through_plane else
                           default_model(task) if task == "enhance" else default_model(task, args.scale))
    _check_model_task(model, task)
    _check_model_files(model)
    with _prepare_output(args, folder=dicom):
        if dicom:  # with --overwrite too: a folder holding anything QHQGAN did not write is refused now
            from ..core.dicom_derived import check_series_folder

            check_series_folder(args.output, args.overwrite)
        volume = _read_input(args, through_plane, slice_wise=not through_plane)
        said = _before_super_resolution(args, volume, model) if task == "super-resolve" else set()
        options = dict(device=args.device, quantum_backend=args.quantum_backend, tile_size=args.tile_size,
                       overlap=args.overlap, tile_batch=args.tile_batch)
        with _progress(args, task) as progress:
            with warnings.catch_warnings():  # super-resolve: said above; enhance: said as it warns, before the work
                if task == "enhance":
                    warnings.simplefilter("always", UserWarning)
                    warnings.showwarning = _say_at_once(said)
                else:
                    warnings.simplefilter("ignore", UserWarning)
                if task == "enhance":
                    result = enhance(volume, model=model, progress=progress, strength=args.strength,
                                     target_noise_hu=args.target_noise_hu, adapt_steps=args.adapt_steps,
                                     adapt_time_limit=args.adapt_time_limit, **options)
                else:
                    result = super_resolve(volume, scale=args.scale, model=model, progress=progress,
                                           axis=args.axis, fine_tune_steps=args.fine_tune_steps, **options)
        if dicom:
            written = _write_derived_series(args, result, volume)
        else:
            written = f"{result.size_xyz} voxels, {write_result(args, result)}"
    from ..core.file_checks import printable

    for note in result.metadata.get("warnings", []):
        if note not in said:  # those said before the work are not repeated
            print(f"qhqgan: warning: {printable(note)}", file=sys.stderr)
    _say(args, f"wrote {args.output}: {written}, spacing "
               f"{tuple(round(s, 4) for s in result.spacing)} mm ({result.metadata['history'][-1]})")
    info = result.metadata.get("enhancement") or {}
    if "noise_hu_input" in info:  # --target-noise-hu: what it measured and chose
        _say(args, f"noise in uniform soft tissue: {info['noise_hu_input']:.1f} HU in, {info['noise_hu_output']:.1f} "
                   f"HU out (target {info['target_noise_hu']:g} HU; strength {info['strength']:.2f})")
    return 0


def _say_at_once(said: set):
    """A ``warnings.showwarning`` that prints a task's warning as one line when it is raised (enhance warns
    about its input before the work, issue #31) and remembers it, so it is not repeated after the work."""
    from ..core.file_checks import printable

    def show(message, category, filename, lineno, file=None, line=None):
        said.add(str(message))
        print(f"qhqgan: warning: {printable(str(message))}", file=sys.stderr)
    return show


def _before_super_resolution(args: argparse.Namespace, volume, model) -> set:
    """Before the work (issue #31): the output's size (refused above the reader's voxel limit) and the
    pixel-size warning; returns the warnings said, so they are not repeated after the work."""
    from ..core.file_checks import printable
    from ..core.io import DEFAULT_MAX_VOXELS
    from ..tasks.enhance import _input_spacing_range, spacing_warning

    from .request import output_size

    s = args.scale
    shape = output_size("super-resolve", volume.size_xyz, s, args.axis)
    n = shape[0] * shape[1] * shape[2]
    if n > DEFAULT_MAX_VOXELS:
        raise ValueError(f"the result would have {n:,} voxels ({n * 4 / 2**30:.1f} GiB), above the limit of "
                         f"{DEFAULT_MAX_VOXELS:,}: crop the input first")
    _say(args, f"super-resolve x{s}{' along z' if args.axis == 'z' else ''}: output about "
               f"{shape[0]} x {shape[1]} x {shape[2]} voxels ({n * 4 / 2**20:,.0f} MB as float32)")
    note = None if args.axis == "z" or model is None else spacing_warning(volume, _input_spacing_range(model, s))
    if note:
        print(f"qhqgan: warning: {printable(note)}", file=sys.stderr)
    return {note} if note else set()


def _write_derived_series(args: argparse.Namespace, result, source, simulated: bool = False) -> str:
    """--dicom: the derived series (core.dicom_derived); a note when the patient is not kept unasked. A dose
    simulation is no acquisition of the patient: always de-identified, in a new study."""
    from ..core.dicom_derived import export_derived_series, plan_derived_series

    deidentify = simulated or args.deidentify
    plan = plan_derived_series(result, source, deidentify=deidentify)
    files = export_derived_series(result, args.output, source, deidentify=deidentify, overwrite=args.overwrite)
    note = plan.note or ("a simulated dose is no acquisition of the patient: the series is de-identified, in a "
                         "new study" if simulated and plan.mode == "deidentified" and source.metadata.get("dicom")
                         else None)
    if note:
        print(f"qhqgan: note: {note}", file=sys.stderr)
    filed = {"patient": "in the input's patient and study (identifiable, not de-identified)",
             "deidentified": "de-identified, in a new study",
             "synthetic": "marked synthetic, synthetic patient, new study"}[plan.mode]
    kept = ", every slice at its own source position" if result.metadata.get("slice_positions") else ""
    return f"DICOM series {plan.series_number} '{plan.series_description}' of {len(files)} file(s), {filed}{kept}"


def cmd_enhance(args: argparse.Namespace) -> int:
    return _run_model_command(args, "enhance")


def cmd_super_resolve(args: argparse.Namespace) -> int:
    return _run_model_command(args, "super-resolve")


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..core.io import write_volume
    from ..tasks.synthesize import synthesize

    require_synthetic_name(args.output)
    model = args.model or default_model("synthesize")
    _check_model_task(model, "synthesize")
    _check_model_files(model)
    with _prepare_output(args, folder=args.dicom):
        with _progress(args, "synthesizing") as progress:
            volume = synthesize(model, n=args.n_samples, seed=args.seed,
                                progress=progress, quantum_backend=args.quantum_backend, device=args.device)
        if args.dicom:
            from ..core.dicom_export import export_dicom_series

            export_dicom_series(volume, args.output, overwrite=args.overwrite)
        else:
            write_volume(volume, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {args.n_samples} SYNTHETIC slice(s) ({volume.metadata['history'][-1]})")
    return 0


def _print_rows(rows, keys) -> None:
    print(" | ".join(["method"] + [k for k in keys]))
    for row in rows:
        print(" | ".join([str(row.get("method"))] + [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k))
                                                    for k in keys]))


def cmd_evaluate(args: argparse.Namespace) -> int:
    models = [m for m in args.models.split(",") if m] if args.models else list(preferred_models(args.task))
    for path in args.input:
        _check_input(path)
    for m in models:
        _check_model_files(m)
    report = _prepare_report(args, list(args.input) + [f for m in models for f in _model_files(m)])
    with claim_output(report) if report else contextlib.nullcontext():
        return _evaluate(args, models, report)


def _evaluate(args: argparse.Namespace, models, report) -> int:
    from ..tasks.evaluate import evaluate_enhancement, evaluate_super_resolution

    from ..training.provenance import voxel_sha256

    # slice by slice, no image written: an uneven series is read at its slices' own positions (apps.series_input)
    volumes = [read_series(args, p, keep_positions=True, label=f"input {i + 1}") for i, p in enumerate(args.input)]
    with _progress(args, f"evaluating {len(models)} model(s) on {sum(v.shape[0] for v in volumes)} slice(s)") as progress:
        if args.task == "enhance":
            doses = [float(d) for d in args.doses.split(",")]
            rows = evaluate_enhancement({m: m for m in models}, volumes, doses=doses, seed=args.seed,
                                        progress=progress)
            keys = ["dose", "psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu", "seconds_per_slice"]
        else:
            rows = evaluate_super_resolution({m: m for m in models}, volumes, progress=progress)
            keys = ["psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu", "seconds_per_slice"]
    inputs = [voxel_sha256(v)[:16] for v in volumes]  # which images, without their names (no patient paths)
    for row in rows:
        row["inputs_voxel_sha256_16"] = inputs
    _say(args, "columns *_abdomen: the soft-tissue window [-160, 240] HU (any anatomy); *_full: [-1024, 3071] HU")
    _print_rows(rows, keys)
    if report:
        write_text_output(report, json.dumps(rows, indent=2), overwrite=args.overwrite)
    return 0


def cmd_evaluate_synth(args: argparse.Namespace) -> int:
    inputs = [args.samples] + list(args.real) + list(args.train or [])
    for path in inputs:
        _check_input(path)
    report = _prepare_report(args, inputs)
    with claim_output(report) if report else contextlib.nullcontext():
        return _evaluate_synth(args, report)


def _evaluate_synth(args: argparse.Namespace, report) -> int:
    from ..core.io import read_volume
    from ..metrics.synthetic import evaluate_synthetic
    from ..training.slices import training_slices

    samples = read_volume(args.samples, force=True).array
    size = samples.shape[-1]
    real = training_slices([read_volume(p, force=args.force) for p in args.real], size)
    train = training_slices([read_volume(p, force=args.force) for p in args.train], size) if args.train else None
    result = evaluate_synthetic(samples, real, train, seed=args.seed, c2st=getattr(args, "c2st", True))
    from .model_info import SYNTH_METRIC_NOTES

    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            note = SYNTH_METRIC_NOTES.get(key)
            print(f"{key:<28} {value:.4g}" + (f"  ({note})" if note else ""))
    if isinstance(result.get("memorization"), dict):
        mem = result["memorization"]
        print(f"{'memorization max SSIM':<28} {mem['max']:.4g}  (share > 0.9: {mem['fraction_above_0.9']:.3g})")
    c2st = result.get("c2st")
    if isinstance(c2st, dict):
        low, high = c2st["ci95"]
        print(f"{'C2ST real vs synthetic':<28} {c2st['accuracy']:.3f}  (95 % CI {low:.3f}-{high:.3f}, "
              f"{c2st['n_per_class']} per class, {len(c2st['fold_accuracies'])} folds; 0.5 = indistinguishable)")
        ref = c2st["reference"]
        print(f"{'C2ST real vs real':<28} {ref['accuracy']:.3f}  (two halves of the real slices, "
              f"{ref['n_per_class']} each)")
    elif result.get("c2st_reason"):
        print(f"{'C2ST':<28} skipped: {result['c2st_reason']}")
    if report:
        write_text_output(report, json.dumps(result, indent=2, default=str), overwrite=args.overwrite)
    return 0


from .model_info import validation_summary  # noqa: E402  (kept importable from here: the panel uses it)


def cmd_list_models(args: argparse.Namespace) -> int:
    from ..nn.weights import list_models

    cards = list_models()
    if not cards:
        print("no models ship in this installation")
    for card in cards:
        print(f"{card['name']:<18} {card.get('task', '?'):<14} {card.get('n_parameters', 0):>9,} params  "
              f"{validation_summary(card)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    model = args.model
    if model is not None:
        _check_model_task(model, "enhance")
        _check_model_files(model)
    result = run_demo(input_path=args.input, dose=args.dose, seed=args.seed, output_dir=args.output_dir,
                      max_slices=args.max_slices, show_progress=not args.quiet, force=args.force, model=model,
                      read_options=dict(series_uid=args.series_uid, regularize_tilt=args.regularize_tilt,
                                        resample_z=args.resample_z, series_block=args.series_block))
    print(result.summary())
    return 0
