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
import hashlib
import json
import os
import platform
import sys
import warnings
from importlib import metadata
from pathlib import Path

from ..core.constants import __version__
from ..core.kinds import default_model, preferred_models
from ..core.outputs import check_not_input, check_output_path, claim_output, require_synthetic_name

#: Endings of the volume files the commands write (DICOM goes to a folder).
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def _prepare_output(args: argparse.Namespace, folder: bool = False) -> contextlib.AbstractContextManager:
    """Check the output path before any work (exists, missing folder, a folder, wrong ending, the input
    itself) and claim it for this run; the returned context holds the claim until the command ends."""
    if getattr(args, "input", None) and isinstance(args.input, str):
        check_not_input(args.input, args.output)
    out = check_output_path(args.output, overwrite=args.overwrite, suffixes=VOLUME_SUFFIXES, folder=folder)
    return claim_output(out)


def _check_model_outputs(args: argparse.Namespace) -> None:
    """--save-model PATH: both PATH.safetensors and PATH.json are checked before training starts."""
    from ..nn.weights import model_paths

    if args.save_model:
        for target in model_paths(args.save_model):
            check_output_path(target, overwrite=args.overwrite)


def _training_data(volumes) -> dict:
    """What a model card records of its training data: how many volumes and a content hash of each.

    File paths are never recorded: they often hold patient names or record numbers.
    """
    hashes = []
    for v in volumes:
        digest = hashlib.sha256(repr((v.shape, tuple(round(s, 6) for s in v.spacing))).encode())
        digest.update(v.array.tobytes())
        hashes.append(digest.hexdigest()[:16])
    return {"n_volumes": len(volumes), "n_slices": int(sum(v.shape[0] for v in volumes)), "voxel_sha256_16": hashes}


def _speed(model) -> dict:
    """Updates per second of this training run (this process's updates: a resumed run counts its own)."""
    seconds, updates = getattr(model, "training_seconds", None), getattr(model, "training_updates", None)
    if not seconds or updates is None:
        return {}
    return {"speed": {"updates": int(updates), "seconds": round(float(seconds), 1),
                      "updates_per_second": round(updates / seconds, 4), "machine": platform.processor() or
                      platform.machine()}}


def _check_model_task(model, task: str) -> None:
    """Refuse a shipped model made for another task before any work (not a tensor shape error later)."""
    from ..core.resources import model_cards

    if not isinstance(model, str) or model.endswith((".json", ".safetensors")) or os.path.sep in model:
        return  # custom files are checked when loaded
    card = next((c for c in model_cards() if c.get("name") == model), None)
    if card is not None and card.get("task") not in (task, None):
        fitting = [c["name"] for c in model_cards() if c.get("task") == task]
        raise ValueError(f"{model} is a {card.get('task')} model, not a {task} model; use one of: "
                         f"{', '.join(fitting) or 'none installed'}")


def _progress(args: argparse.Namespace, description: str):
    from ..core.progress import progress_reporter

    return progress_reporter(description, "none" if args.quiet else args.progress)


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)


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
    from ..core.io import read_volume, write_volume
    from ..physics.lowdose import simulate_low_dose

    with _prepare_output(args):
        volume = read_volume(args.input, force=args.force, series_uid=args.series_uid,
                             regularize_tilt=args.regularize_tilt)
        with _progress(args, f"simulating {args.dose:.0%} dose") as progress:
            low = simulate_low_dose(volume, args.dose, seed=args.seed, progress=progress,
                                    reference_noise_hu=args.reference_noise_hu, photons=args.photons)
        write_volume(low, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {low.shape[0]} slice(s) at {args.dose:.0%} of the input dose (seed {args.seed})")
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
    from ..core.io import read_volume, write_volume
    from ..physics.resolution import degrade_resolution

    with _prepare_output(args):
        volume = read_volume(args.input, force=args.force, series_uid=args.series_uid,
                             regularize_tilt=args.regularize_tilt)
        low = degrade_resolution(volume, args.scale)
        write_volume(low, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {low.size_xyz} voxels at spacing {tuple(round(s, 4) for s in low.spacing)} mm")
    return 0


def _run_model_command(args: argparse.Namespace, task: str) -> int:
    from ..core.io import read_volume, write_volume
    from ..tasks.enhance import enhance, super_resolve

    through_plane = task == "super-resolve" and getattr(args, "axis", "in-plane") == "z"
    # through-plane: None lets super_resolve name the default model, or say none is installed and what to do
    model = args.model or (None if through_plane else
                           default_model(task) if task == "enhance" else default_model(task, args.scale))
    _check_model_task(model, task)
    with _prepare_output(args):
        volume = read_volume(args.input, force=args.force, series_uid=args.series_uid,
                             regularize_tilt=args.regularize_tilt)
        options = dict(device=args.device, quantum_backend=args.quantum_backend, tile_size=args.tile_size,
                       overlap=args.overlap, tile_batch=args.tile_batch)
        with _progress(args, task) as progress:
            if task == "enhance":
                result = enhance(volume, model=model, progress=progress, strength=args.strength,
                                 target_noise_hu=args.target_noise_hu, adapt_steps=args.adapt_steps,
                                 adapt_time_limit=args.adapt_time_limit, **options)
            else:
                with warnings.catch_warnings():  # said once, below, as one line
                    warnings.simplefilter("ignore", UserWarning)
                    result = super_resolve(volume, scale=args.scale, model=model, progress=progress,
                                           axis=args.axis, fine_tune_steps=args.fine_tune_steps, **options)
        write_volume(result, args.output, overwrite=args.overwrite)
    for note in result.metadata.get("warnings", []):
        print(f"qhqgan: warning: {note}", file=sys.stderr)
    _say(args, f"wrote {args.output}: {result.size_xyz} voxels, spacing "
               f"{tuple(round(s, 4) for s in result.spacing)} mm ({result.metadata['history'][-1]})")
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    return _run_model_command(args, "enhance")


def cmd_super_resolve(args: argparse.Namespace) -> int:
    return _run_model_command(args, "super-resolve")


def cmd_train_enhance(args: argparse.Namespace) -> int:
    from ..core.io import read_volume
    from ..nn.weights import save_model
    from ..training.enhancement import TrainConfig, train_enhancer

    _check_model_outputs(args)
    volumes = [read_volume(p, force=args.force) for p in args.input]
    cfg = TrainConfig(arch=args.arch, task=args.task, steps=args.steps, batch_size=args.batch_size,
                      patch_size=args.patch_size, lr=args.lr, adv_weight=args.adv_weight,
                      ssim_weight=args.ssim_weight, dose_range=(args.dose_min, args.dose_max), seed=args.seed,
                      output_dir=args.output_dir, resume=args.resume, pool_size=args.pool_size,
                      checkpoint_every=args.checkpoint_every, redcnn_width=args.redcnn_width,
                      redcnn_context=args.redcnn_context, loss=args.loss,
                      n_qubits=args.n_qubits, n_layers=args.n_layers, width=args.width,
                      device=args.device, amp=args.amp)
    with _progress(args, f"training {args.arch}") as progress:
        model = train_enhancer(cfg, volumes, progress=progress)
    if args.save_model and int(os.environ.get("RANK", "0")) == 0:
        card = save_model(model, args.save_model, {"task": args.task, "training": {**cfg.to_dict(), "output_dir": None},
                                                   "training_data": _training_data(volumes), **_speed(model)},
                          overwrite=args.overwrite)
        _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...)")
    return 0


#: train-synth options that set the SynthConfig field of the same name when given
SYNTH_OPTIONS = ("steps", "batch_size", "seed", "n_qubits", "n_layers", "n_circuits", "n_critic", "lr_g", "lr_d",
                 "width", "blocks",
                 "diffaugment", "checkpoint_every")


def cmd_train_synth(args: argparse.Namespace) -> int:
    from ..core.io import read_volume
    from ..nn.weights import save_model
    from ..training.synthesis import SynthConfig, train_synth

    _check_model_outputs(args)
    volumes = [read_volume(p, force=args.force) for p in args.input]
    roi = None
    if args.roi:
        if len(args.roi) != len(volumes):
            raise ValueError(f"give one --roi per --input ({len(volumes)} inputs, {len(args.roi)} ROIs)")
        roi = []
        for path, volume in zip(args.roi, volumes):
            mask = read_volume(path, force=True)
            if mask.shape != volume.shape:
                raise ValueError(f"{path}: ROI shape {mask.shape} differs from its volume {volume.shape}")
            roi.append(mask.array > 0)
    # options left out keep SynthConfig's defaults (the parser does not repeat them)
    given = {key: getattr(args, key) for key in SYNTH_OPTIONS if getattr(args, key) is not None}
    given.update(device=args.device, amp=args.amp)
    cfg = SynthConfig(method=args.method, size=args.size, output_dir=args.output_dir, resume=args.resume, **given)
    with _progress(args, f"training {args.method} synthesis") as progress:
        model = train_synth(cfg, volumes, roi=roi, progress=progress)
    card = save_model(model, args.save_model, {"task": "synthesize", "training": {**cfg.to_dict(), "output_dir": None},
                                                "training_data": _training_data(volumes), **_speed(model),
                                                "roi": f"{len(args.roi)} label volume(s)" if args.roi else None},
                      overwrite=args.overwrite)
    _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...); generate with "
               f"qhqgan synthesize OUT_synthetic.nrrd --model {Path(args.save_model).with_suffix('.safetensors')}")
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..core.io import write_volume
    from ..tasks.synthesize import synthesize

    require_synthetic_name(args.output)
    model = args.model or default_model("synthesize")
    _check_model_task(model, "synthesize")
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
    from ..core.io import read_volume
    from ..tasks.evaluate import evaluate_enhancement, evaluate_super_resolution

    volumes = [read_volume(p, force=args.force) for p in args.input]
    models = [m for m in args.models.split(",") if m] if args.models else list(preferred_models(args.task))
    if args.task == "enhance":
        doses = [float(d) for d in args.doses.split(",")]
        rows = evaluate_enhancement({m: m for m in models}, volumes, doses=doses, seed=args.seed)
        keys = ["dose", "psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu", "seconds_per_slice"]
    else:
        rows = evaluate_super_resolution({m: m for m in models}, volumes)
        keys = ["psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu", "seconds_per_slice"]
    _print_rows(rows, keys)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def cmd_evaluate_synth(args: argparse.Namespace) -> int:
    from ..core.io import read_volume
    from ..metrics.synthetic import evaluate_synthetic
    from ..training.slices import training_slices

    samples = read_volume(args.samples, force=True).array
    size = samples.shape[-1]
    real = training_slices([read_volume(p, force=args.force) for p in args.real], size)
    train = training_slices([read_volume(p, force=args.force) for p in args.train], size) if args.train else None
    result = evaluate_synthetic(samples, real, train, seed=args.seed, c2st=getattr(args, "c2st", True))
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            print(f"{key:<28} {value:.4g}")
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
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    from ..nn.weights import list_models

    cards = list_models()
    if not cards:
        print("no models ship in this installation")
    for card in cards:
        print(f"{card['name']:<18} {card.get('task', '?'):<14} {card.get('n_parameters', 0):>9,} params  "
              f"{validation_summary(card)}")
    return 0


def validation_summary(card: dict) -> str:
    """One line of a model card's held-out validation: PSNR of the model (and of its input) per
    dose, scale or noise condition for enhancement / SR cards (a list of rows), the headline numbers of a
    synthesis card (a dict), or the card's scalar metrics."""
    validation = card.get("validation")
    if isinstance(validation, list):
        rows = [r for r in validation if isinstance(r, dict)]
        parts = []
        for row in rows:
            if row.get("method") != "model" or "psnr_abdomen" not in row:
                continue
            setting = next((k for k in ("dose", "scale", "condition") if k in row), "scale")
            baseline = next((r for r in rows if r is not row and r.get(setting) == row.get(setting)
                             and "psnr_abdomen" in r), None)
            value = row.get(setting)
            value = f"{value:g}" if isinstance(value, (int, float)) else str(value)
            text = f"{setting} {value}: PSNR {row['psnr_abdomen']:.2f} dB"
            if baseline is not None:
                text += f" ({baseline.get('method', 'input')} {baseline['psnr_abdomen']:.2f})"
            parts.append(text)
        return "; ".join(parts) + (" (abdomen window, held out)" if parts else "")
    if isinstance(validation, dict):
        names = {"frd": "FRD", "kid_mean": "KID", "diversity_samples": "MS-SSIM among samples",
                 "memorization_max": "max SSIM to training"}
        chosen = [(names[k], validation[k]) for k in names if isinstance(validation.get(k), (int, float))]
        chosen = chosen or [(k, v) for k, v in validation.items() if isinstance(v, (int, float))]
        return ", ".join(f"{k} {v:.3g}" for k, v in chosen)
    return ""


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(input_path=args.input, dose=args.dose, seed=args.seed, output_dir=args.output_dir,
                      max_slices=args.max_slices, show_progress=not args.quiet, force=args.force)
    print(result.summary())
    return 0
