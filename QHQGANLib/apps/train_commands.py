"""The ``qhqgan train-enhance`` and ``qhqgan train-synth`` commands (the parser is :mod:`QHQGANLib.apps.cli`).

Both refuse a non-empty ``--output-dir`` before any work unless ``--resume`` or ``--overwrite``, claim
it while they run, and save the model with a card recording its training data (voxel sha256 of each
volume, :mod:`QHQGANLib.training.provenance`), never file paths.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from ..training.provenance import speed, training_data
from .command_checks import (check_input as _check_input, check_model_outputs as _check_model_outputs, progress_for as _progress, say as _say)
from .series_input import read_series


def cmd_train_enhance(args: argparse.Namespace) -> int:
    _check_model_outputs(args)
    with _prepare_training_dir(args):
        return _train_enhance(args)


def _prepare_training_dir(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """--output-dir: a non-empty folder is refused before any work unless --resume or --overwrite; the
    folder is claimed (by rank 0, the one that writes) until the command ends. Inputs are checked too."""
    from ..training.loop import check_output_dir, claim_output_dir

    for path in args.input:
        _check_input(path)
    check_output_dir(args.output_dir, resume=args.resume, overwrite=args.overwrite)
    return claim_output_dir(args.output_dir, int(os.environ.get("RANK", "0")))


def _read_inputs(args: argparse.Namespace) -> list:
    """Every --input, read with the series options (apps.series_input): an uneven series is refused unless
    --resample-z or --series-block puts it on one regular grid (training takes 2.5D stacks of neighbours)."""
    return [read_series(args, p, label=f"input {i + 1}") for i, p in enumerate(args.input)]


def _train_enhance(args: argparse.Namespace) -> int:
    from ..nn.weights import save_model
    from ..training.enhancement import TrainConfig, train_enhancer

    volumes = _read_inputs(args)
    cfg = TrainConfig(arch=args.arch, task=args.task, steps=args.steps, batch_size=args.batch_size,
                      patch_size=args.patch_size, lr=args.lr, adv_weight=args.adv_weight,
                      ssim_weight=args.ssim_weight, dose_range=(args.dose_min, args.dose_max), seed=args.seed,
                      output_dir=args.output_dir, resume=args.resume, pool_size=args.pool_size,
                      checkpoint_every=args.checkpoint_every, redcnn_width=args.redcnn_width,
                      redcnn_context=args.redcnn_context, loss=args.loss,
                      n_qubits=args.n_qubits, n_layers=args.n_layers, width=args.width,
                      device=args.device, amp=args.amp, overwrite=args.overwrite)
    with _progress(args, f"training {args.arch}") as progress:
        model = train_enhancer(cfg, volumes, progress=progress)
    if args.save_model and int(os.environ.get("RANK", "0")) == 0:
        card = save_model(model, args.save_model, {"task": args.task, "training": {**cfg.to_dict(), "output_dir": None},
                                                   "training_data": training_data(volumes), **speed(model)},
                          overwrite=args.overwrite)
        _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...)")
    return 0


#: train-synth options that set the SynthConfig field of the same name when given
SYNTH_OPTIONS = ("steps", "batch_size", "seed", "n_qubits", "n_layers", "n_circuits", "n_critic", "lr_g", "lr_d",
                 "width", "blocks",
                 "diffaugment", "checkpoint_every")


def cmd_train_synth(args: argparse.Namespace) -> int:
    _check_model_outputs(args)
    for path in args.roi or ():
        _check_input(path)
    with _prepare_training_dir(args):
        return _train_synth(args)


def _train_synth(args: argparse.Namespace) -> int:
    from ..core.io import read_volume
    from ..nn.weights import save_model
    from ..training.synthesis import SynthConfig, train_synth

    volumes = _read_inputs(args)
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
    cfg = SynthConfig(method=args.method, size=args.size, output_dir=args.output_dir, resume=args.resume,
                      overwrite=args.overwrite, **given)
    with _progress(args, f"training {args.method} synthesis") as progress:
        model = train_synth(cfg, volumes, roi=roi, progress=progress)
    card = save_model(model, args.save_model, {"task": "synthesize", "training": {**cfg.to_dict(), "output_dir": None},
                                                "training_data": training_data(volumes), **speed(model),
                                                "roi": f"{len(args.roi)} label volume(s)" if args.roi else None,
                                                **getattr(model, "training_pixel_spacing", {})},
                      overwrite=args.overwrite)
    _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...); generate with "
               f"qhqgan synthesize OUT_synthetic.nrrd --model {Path(args.save_model).with_suffix('.safetensors')}")
    return 0
