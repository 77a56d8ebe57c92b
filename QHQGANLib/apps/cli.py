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

from ..core.constants import __version__

EXPECTED_ERRORS = (ValueError, FileExistsError, FileNotFoundError, PermissionError, ImportError)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
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
            value = ", ".join(value) if value else "none shipped yet (enhancement models come with the next release)"
        print(f"{key:<{width}}  {value}")
    return 0


def _check_output(input_path: Path, output_path: Path) -> None:
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"the output {output_path} is the input: QHQGAN never overwrites its input")


def cmd_simulate_low_dose(args: argparse.Namespace) -> int:
    from ..core.io import read_volume, write_volume
    from ..physics.lowdose import simulate_low_dose

    _check_output(Path(args.input), Path(args.output))
    volume = read_volume(args.input, force=args.force, series_uid=args.series_uid)
    with _progress(args, f"simulating {args.dose:.0%} dose") as progress:
        low = simulate_low_dose(volume, args.dose, seed=args.seed, progress=progress)
    write_volume(low, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {low.shape[0]} slice(s) at {args.dose:.0%} of the input dose (seed {args.seed})")
    return 0


def cmd_degrade_resolution(args: argparse.Namespace) -> int:
    from ..core.io import read_volume, write_volume
    from ..physics.resolution import degrade_resolution

    _check_output(Path(args.input), Path(args.output))
    volume = read_volume(args.input, force=args.force, series_uid=args.series_uid)
    low = degrade_resolution(volume, args.scale)
    write_volume(low, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {low.size_xyz} voxels at spacing {tuple(round(s, 4) for s in low.spacing)} mm")
    return 0


def _run_model_command(args: argparse.Namespace, task: str) -> int:
    from ..tasks.enhance import enhance, super_resolve
    from ..core.io import read_volume, write_volume

    _check_output(Path(args.input), Path(args.output))
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    volume = read_volume(args.input, force=args.force, series_uid=args.series_uid)
    options = dict(device=args.device, quantum_backend=args.quantum_backend, tile_size=args.tile_size,
                   overlap=args.overlap)
    with _progress(args, task) as progress:
        if task == "enhance":
            result = enhance(volume, model=args.model or "hqgan-enhance", progress=progress, **options)
        else:
            result = super_resolve(volume, scale=args.scale, model=args.model, progress=progress, **options)
    write_volume(result, args.output, overwrite=args.overwrite)
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

    volumes = [read_volume(p, force=args.force) for p in args.input]
    cfg = TrainConfig(arch=args.arch, task=args.task, steps=args.steps, batch_size=args.batch_size,
                      patch_size=args.patch_size, lr=args.lr, adv_weight=args.adv_weight,
                      ssim_weight=args.ssim_weight, dose_range=(args.dose_min, args.dose_max), seed=args.seed,
                      output_dir=args.output_dir, resume=args.resume, pool_size=args.pool_size,
                      checkpoint_every=args.checkpoint_every, redcnn_width=args.redcnn_width,
                      n_qubits=args.n_qubits, n_layers=args.n_layers, width=args.width)
    with _progress(args, f"training {args.arch}") as progress:
        model = train_enhancer(cfg, volumes, progress=progress)
    import os

    if args.save_model and int(os.environ.get("RANK", "0")) == 0:
        card = save_model(model, args.save_model, {"task": args.task, "training": cfg.to_dict(),
                                                   "training_data": [str(p) for p in args.input]})
        _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...)")
    return 0


def _synthetic_output_name(path: str) -> None:
    if "synthetic" not in Path(path).name.lower():
        raise ValueError(f"{path}: synthetic images are marked synthetic in their names too; "
                         "use a name containing 'synthetic', e.g. liver_synthetic.nrrd")


#: train-synth options that set the SynthConfig field of the same name when given
SYNTH_OPTIONS = ("steps", "batch_size", "seed", "n_qubits", "n_layers", "n_circuits", "n_critic", "lr_g", "lr_d",
                 "diffaugment", "checkpoint_every")


def cmd_train_synth(args: argparse.Namespace) -> int:
    from ..core.io import read_volume
    from ..nn.weights import save_model
    from ..training.synthesis import SynthConfig, train_synth

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
    cfg = SynthConfig(method=args.method, size=args.size, output_dir=args.output_dir, resume=args.resume, **given)
    with _progress(args, f"training {args.method} synthesis") as progress:
        model = train_synth(cfg, volumes, roi=roi, progress=progress)
    card = save_model(model, args.save_model, {"task": "synthesize", "training": cfg.to_dict(),
                                                "training_data": [str(p) for p in args.input],
                                                "roi": [str(p) for p in args.roi] if args.roi else None})
    _say(args, f"saved {card['weights']} (sha256 {card['sha256'][:12]}...); generate with "
               f"qhqgan synthesize OUT_synthetic.nrrd --model {Path(args.save_model).with_suffix('.safetensors')}")
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..core.devices import pick_device
    from ..core.io import write_volume
    from ..tasks.synthesize import synthesize

    _synthetic_output_name(args.output)
    pick_device(args.device)  # a clear error when CUDA is asked for and absent; generation is cheap on CPU
    if args.dicom:
        from ..core.dicom_export import export_dicom_series

        out = Path(args.output)
        if out.exists() and any(out.iterdir()) and not args.overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    elif Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    with _progress(args, "synthesizing") as progress:
        volume = synthesize(args.model or "hqgan-synth", n=args.n, seed=args.seed, progress=progress,
                            quantum_backend=args.quantum_backend)
    if args.dicom:
        export_dicom_series(volume, args.output, overwrite=args.overwrite)
    else:
        write_volume(volume, args.output, overwrite=args.overwrite)
    _say(args, f"wrote {args.output}: {args.n} SYNTHETIC slice(s) ({volume.metadata['history'][-1]})")
    return 0


def _print_rows(rows, keys) -> None:
    print(" | ".join(["method"] + [k for k in keys]))
    for row in rows:
        print(" | ".join([str(row.get("method"))] + [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k))
                                                    for k in keys]))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..tasks.evaluate import evaluate_enhancement, evaluate_super_resolution
    from ..core.io import read_volume

    volumes = [read_volume(p, force=args.force) for p in args.input]
    models = [m for m in args.models.split(",") if m]
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
    result = evaluate_synthetic(samples, real, train, seed=args.seed)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            print(f"{key:<28} {value:.4g}")
    if isinstance(result.get("memorization"), dict):
        mem = result["memorization"]
        print(f"{'memorization max SSIM':<28} {mem['max']:.4g}  (share > 0.9: {mem['fraction_above_0.9']:.3g})")
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
    dose or scale for enhancement / SR cards (a list of rows), the headline numbers of a
    synthesis card (a dict), or the card's scalar metrics."""
    validation = card.get("validation")
    if isinstance(validation, list):
        rows = [r for r in validation if isinstance(r, dict)]
        parts = []
        for row in rows:
            if row.get("method") != "model" or "psnr_abdomen" not in row:
                continue
            setting = "dose" if "dose" in row else "scale"
            baseline = next((r for r in rows if r is not row and r.get(setting) == row.get(setting)
                             and "psnr_abdomen" in r), None)
            text = f"{setting} {row.get(setting):g}: PSNR {row['psnr_abdomen']:.2f} dB"
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


# ---------------------------------------------------------------------------
# parser and entry point
# ---------------------------------------------------------------------------
def _progress(args: argparse.Namespace, description: str):
    from ..core.progress import progress_reporter

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

    def add_model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="a shipped model name (qhqgan list-models) or a .safetensors file")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="compute device (default: CUDA when available)")
        p.add_argument("--quantum-backend", default=None,
                       help="torch (fast built-in simulator, default) or pennylane:DEVICE, "
                            "e.g. pennylane:default.qubit or pennylane:lightning.qubit")
        p.add_argument("--tile-size", type=int, default=512,
                       help="largest tile (output pixels) computed at once (default 512); smaller saves memory")
        p.add_argument("--overlap", type=float, default=0.0,
                       help="extra context around each tile as a fraction of the tile (default 0: the "
                            "network's receptive field, which already makes tiling seamless)")

    p = sub.add_parser("enhance", parents=[common], help="denoise a low-dose CT with an enhancement model")
    add_io(p)
    add_model_options(p)
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("super-resolve", parents=[common], help="x2 in-plane super-resolution of a CT")
    add_io(p)
    add_model_options(p)
    p.add_argument("--scale", type=int, default=2, choices=(2,), help="in-plane factor (2)")
    p.set_defaults(func=cmd_super_resolve)

    p = sub.add_parser("train-enhance", parents=[common],
                       help="train an enhancement / super-resolution model on normal-dose CT "
                            "(also under torchrun --nproc_per_node N -m QHQGANLib train-enhance ...)")
    p.add_argument("--input", action="append", required=True, help="a normal-dose CT (repeatable)")
    p.add_argument("--arch", default="hqgan", choices=("hqgan", "ablation", "redcnn"))
    p.add_argument("--task", default="enhance", choices=("enhance", "super-resolve"))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--adv-weight", type=float, default=1e-3, help="adversarial weight (0 = regression)")
    p.add_argument("--ssim-weight", type=float, default=0.1)
    p.add_argument("--dose-min", type=float, default=0.1)
    p.add_argument("--dose-max", type=float, default=0.5)
    p.add_argument("--pool-size", type=int, default=4, help="low-dose realisations per volume")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--n-qubits", type=int, default=8)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--redcnn-width", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", help="checkpoints, config and losses.jsonl go here")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    p.add_argument("--save-model", help="write the trained model as PATH.safetensors + PATH.json")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    p.set_defaults(func=cmd_train_enhance)

    p = sub.add_parser("train-synth", parents=[common],
                       help="train a synthetic-CT generator on the slices of CT volumes")
    p.add_argument("--input", action="append", required=True, help="a CT volume or DICOM folder (repeatable)")
    p.add_argument("--roi", action="append", help="a segmentation/label volume per input: crop slices to it")
    p.add_argument("--method", default="hqgan", choices=("hqgan", "ablation", "wgan-gp", "dcgan"))
    p.add_argument("--size", type=int, default=64, choices=(64, 128))
    p.add_argument("--steps", type=int,
                   help="generator updates (default 1200: about 5 min at 64x64 on 2 idle CPU cores)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--n-qubits", type=int, help="default 8")
    p.add_argument("--n-layers", type=int, help="default 4")
    p.add_argument("--n-circuits", type=int,
                   help="hqgan/ablation: runs of the circuit (same weights) on independent noise per sample; "
                        "their n-qubit outputs are concatenated (default 4)")
    p.add_argument("--n-critic", type=int,
                   help="critic updates per generator update of the WGAN-GP methods (default 2; "
                        "the paper's 5 takes about twice as long)")
    p.add_argument("--lr-g", type=float, help="generator learning rate (default: the method's setting)")
    p.add_argument("--lr-d", type=float, help="critic learning rate (default: the method's setting)")
    p.add_argument("--diffaugment",
                   help="augmentation of the critic's inputs, comma-separated from translation,cutout; "
                        "'' for none (default translation)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--output-dir", help="config, losses.jsonl and checkpoint.pt go here")
    p.add_argument("--checkpoint-every", type=int, help="updates between checkpoints (default 500)")
    p.add_argument("--resume", action="store_true", help="continue from --output-dir's checkpoint.pt")
    p.add_argument("--save-model", required=True, help="write PATH.safetensors + PATH.json")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    p.set_defaults(func=cmd_train_synth)

    p = sub.add_parser("synthesize", parents=[common],
                       help="generate synthetic CT slices (marked synthetic in names, headers and DICOM)")
    p.add_argument("output", help="OUT_synthetic.nrrd (or a folder with --dicom); the name must say 'synthetic'")
    p.add_argument("--model", help="a shipped synthesis model (default hqgan-synth) or a .safetensors file")
    p.add_argument("--n", type=int, default=32, help="number of slices (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quantum-backend", default=None, help="torch (default) or pennylane:DEVICE")
    p.add_argument("--dicom", action="store_true", help="write a DICOM series folder (SyntheticData YES)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("evaluate", parents=[common],
                       help="score enhancement / SR models side by side on normal-dose CT (PSNR, SSIM, noise, speed)")
    p.add_argument("--input", action="append", required=True, help="a held-out normal-dose CT (repeatable)")
    p.add_argument("--models", default="hqgan-enhance,ablation-enhance,redcnn-enhance",
                   help="comma-separated model names or files")
    p.add_argument("--task", default="enhance", choices=("enhance", "super-resolve"))
    p.add_argument("--doses", default="0.25,0.1", help="comma-separated dose fractions (enhance)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("evaluate-synth", parents=[common],
                       help="fidelity, diversity and memorization of synthetic slices against real ones")
    p.add_argument("samples", help="the synthetic volume (e.g. from qhqgan synthesize)")
    p.add_argument("--real", action="append", required=True, help="held-out real CT (repeatable)")
    p.add_argument("--train", action="append", help="the training CT, for the memorization check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the full result to this JSON file")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_evaluate_synth)

    p = sub.add_parser("list-models", parents=[common], help="the shipped models and their validation metrics")
    p.set_defaults(func=cmd_list_models)

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
    from ..core.progress import OperationCancelled

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


if __name__ == "__main__":  # python -m QHQGANLib.apps.cli (or python -m QHQGANLib)
    sys.exit(main())
