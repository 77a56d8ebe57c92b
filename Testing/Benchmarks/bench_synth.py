"""Benchmark: synthetic CT from HQGAN, its classical controls, WGAN-GP and DCGAN, side by side (one process).

The reported table (BENCHMARKS.md "synth": tuning on the tuning patient with the same grid for every
method, 3 seeds, resumable runs) is ``synth_protocol.py``'s; this script is the quick single-process
comparison of chosen settings, written to the section "synth-quick" unless ``--section`` says otherwise.

Every method is trained on the same slices (``synth_data.py``) with the same number of
generator updates and batch size, for each seed; then 200 samples per run are scored
against the real slices of ``--split`` (the tuning patient while choosing a design; the
evaluation patients once, for the reported table) with ``QHQGANLib.metrics.synthetic.evaluate_synthetic``
(FRD, KID, precision/recall, density/coverage, diversity, memorization, HU Wasserstein).
Writes its section of BENCHMARKS.md (mean +- sd and median over seeds) and a
PNG grid of samples per method beside real slices (``benchmark-<section>.png``). With ``--ship``, the seed-0 model
of each method is written to Resources/Models as ``<method>-synth`` with its model card.

    python Testing/Benchmarks/bench_synth.py --steps 1200 --seeds 0 1 2 --ship --save-dir /tmp/synth_runs

With ``--save-dir``, every run's samples (``<method>-seed<k>.npz``), model and metrics
(``results.jsonl``, appended as runs finish) are kept there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import write_section  # noqa: E402
from synth_data import DESCRIPTION, load_slices  # noqa: E402

from QHQGANLib.core.figures import save_panels_png  # noqa: E402
from QHQGANLib.nn.weights import save_model  # noqa: E402
from QHQGANLib.core.resources import models_dir  # noqa: E402
from QHQGANLib.metrics.synthetic import evaluate_synthetic  # noqa: E402
from QHQGANLib.nn.synthesis import METHODS, MIXER_OF_METHOD
from QHQGANLib.training.synthesis import SynthConfig, train_synth
from QHQGANLib.tasks.synthesize import synthesize  # noqa: E402

FIGURE = HERE.parents[1] / "Resources" / "Images" / "benchmark-synth.png"
SHIP_NAMES = {"hqgan": "hqgan-synth", "bottleneck-ablation": "ablation-synth", "mlp-control": "mlp-control-synth",
              "no-circuit": "no-circuit-synth", "wgan-gp": "wgangp-synth", "dcgan": "dcgan-synth"}
KEYS = [("frd", "FRD"), ("kid_mean", "KID"), ("precision", "precision"), ("recall", "recall"),
        ("density", "density"), ("coverage", "coverage"), ("diversity_samples", "MS-SSIM among samples"),
        ("memorization_max", "max SSIM to training"), ("memorization_fraction_above_0.9", "share > 0.9"),
        ("hu_wasserstein", "HU W1")]


def flat(metrics: dict) -> dict:
    """The scalar numbers of ``evaluate_synthetic``'s result, under the names of KEYS."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}_{sub}"] = float(v)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value):
            out[f"{key}_mean"], out[f"{key}_std"] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ship", action="store_true", help="write the seed-0 models to Resources/Models")
    ap.add_argument("--save-dir", type=Path, help="keep every run's samples, model and metrics here")
    ap.add_argument("--n-circuits", type=int, default=4,
                    help="methods with a circuit slot (hqgan and its controls): runs of the block (shared weights) on "
                         "independent noise per sample")
    ap.add_argument("--split", default="tune", choices=("tune", "evaluation"),
                    help="real slices the samples are scored against: the tuning patient (default: choosing a "
                         "design, learning rates, critic steps) or, once, for the reported table, the evaluation "
                         "patients (synth_data.py)")
    ap.add_argument("--size", type=int, default=64, choices=(64, 128))
    ap.add_argument("--blocks", default="plain", choices=("plain", "residual"), help="decoder stages")
    ap.add_argument("--width", type=int, default=16, help="decoder width")
    ap.add_argument("--section", default="synth-quick",
                    help="BENCHMARKS.md section (and figure suffix) to write; e.g. synth-long for a longer budget")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    figure = FIGURE.with_name(f"benchmark-{args.section}.png")
    data = load_slices(args.size)
    results, grids = {}, {}
    for seed in args.seeds:  # seed-major: an interrupted run still has every method for the first seeds
        for method in args.methods:
            cfg = SynthConfig(method=method, steps=args.steps, seed=seed, size=args.size, blocks=args.blocks,
                              width=args.width, n_circuits=args.n_circuits if method in MIXER_OF_METHOD else 1)
            t0 = time.time()
            model = train_synth(cfg, slices=data["train"], show_progress=True)
            seconds = time.time() - t0
            samples = synthesize(model, args.n_samples, seed=1000 + seed).array
            metrics = evaluate_synthetic(samples, data[args.split], data["train"], seed=seed)
            row = {"seconds": seconds, **flat(metrics)}
            results.setdefault(method, []).append(row)
            print(method, seed, json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
            if args.save_dir is not None:
                args.save_dir.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(args.save_dir / f"{method}-seed{seed}.npz", samples=samples)
                save_model(model, args.save_dir / f"{method}-seed{seed}", {"task": "synthesize"})
                with open(args.save_dir / "results.jsonl", "a") as log:
                    log.write(json.dumps({"method": method, "seed": seed, **row}) + "\n")
            if seed == args.seeds[0]:
                grids[method] = samples[:6]
                if args.ship:
                    ship(model, method, cfg, seconds, row)
    title = f"## Synthetic CT ({args.size}x{args.size}, {args.blocks} decoder, scored on the {args.split} split): {' vs '.join(args.methods)}, {args.steps} updates"
    if any(m in MIXER_OF_METHOD for m in args.methods):
        title += f", {args.n_circuits} circuit run(s) per sample"
    lines = [title, "",
             f"Training: {DESCRIPTION}; {len(data['train'])} training slices, {len(data[args.split])} {args.split} "
             f"slices. Same budget for every method: {args.steps} generator updates, batch 32; "
             f"every method but DCGAN trains with the WGAN-GP loss, {cfg.n_critic} critic updates per "
             "generator update and Adam 2e-4, betas (0, 0.9) (published: 5 and 1e-4; halved time for a CPU "
             "budget), DCGAN with BCE, 1 discriminator update and Adam 2e-4, betas (0.5, 0.999) as published. "
             f"hqgan: {cfg.n_qubits} qubits, {cfg.n_layers} layers ({2 * cfg.n_qubits * cfg.n_layers} trainable angles); "
             "mlp-control: an MLP of at least the circuit's width and parameters in its place; no-circuit: the "
             "noise straight to the decoder; bottleneck-ablation: the earlier narrow MLP (not a fair control); "
             f"each run on {args.n_circuits} independent noise vector(s) per sample "
             f"({args.n_circuits * cfg.n_qubits} features into the decoder; wgan-gp and dcgan: 100-d Gaussian noise). "
             f"All: the same resize-convolution decoder (width {cfg.width}), critic family, left-right flips, "
             f"DiffAugment ({cfg.diffaugment}) on the critic's inputs, samples from an EMA ({cfg.ema_decay}) "
             "of the generator weights. "
             f"{args.n_samples} samples per run scored against the {args.split} slices. Seeds: "
             f"{', '.join(map(str, args.seeds))}; mean +- sd (median).", "",
             "| method | train s | " + " | ".join(label for _, label in KEYS) + " |",
             "|---|---|" + "---|" * len(KEYS)]
    for method, rows in results.items():
        cells = [f"{np.mean([r['seconds'] for r in rows]):.0f}"]
        for key, _ in KEYS:
            values = np.array([r.get(key, np.nan) for r in rows])
            cells.append(f"{np.mean(values):.4g} +- {np.std(values):.2g} ({np.median(values):.4g})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    reference = evaluate_synthetic(data[args.split], data[args.split], data["train"], seed=0, c2st=False)
    lines += ["", f"Reference (real against real): the training slices scored as if they were samples give "
              f"FRD {reference['frd_real_reference']:.4g} and KID {reference['kid_real_reference']:.4g} "
              f"against the {args.split} slices, the level of a generator as good as the data. "
              f"The {args.split} slices have MS-SSIM among themselves "
              f"{reference['diversity_real']:.3f} and max SSIM to a training slice "
              f"{reference['memorization_heldout_reference']['max']:.3f} (neighbouring anatomy); "
              "FID with InceptionV3 is not reported (its weights are not on this machine and nothing is downloaded).", ""]
    panels = [(f"real {i}", data[args.split][i]) for i in range(0, min(18, len(data[args.split])), 3)][:6]
    rows_png = [panels] + [[(f"{m} {i}", img) for i, img in enumerate(grid)] for m, grid in grids.items()]
    figure.parent.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows_png):
        save_panels_png(row, figure.with_name(f"{figure.stem}-{index}.png"), window=(-160, 240), min_panel_size=128)
    _stack_rows([figure.with_name(f"{figure.stem}-{i}.png") for i in range(len(rows_png))], figure)
    lines += [f"![real {args.split} slices (first row) and samples of each method]"
              f"({figure.relative_to(HERE.parents[1])})", ""]
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


def ship_name(method: str, size: int) -> str:
    """The shipped name: ``hqgan-synth`` at 64x64, ``hqgan-synth-128`` at 128x128."""
    return SHIP_NAMES[method] + ("" if size == 64 else f"-{size}")


def ship(model, method: str, cfg: SynthConfig, seconds: float, row: dict, extra: Optional[dict] = None) -> dict:
    """Write ``model`` to Resources/Models as ``SHIP_NAMES[method]`` with its model card (``extra``: more card keys)."""
    card = {
        "name": ship_name(method, cfg.size), "task": "synthesize", "arch": model.config["arch"],
        "size": cfg.size, "window_hu": [-1024, 1024], "training_data": DESCRIPTION,
        "validation_data": "slices of other patients (synth_data.py: protocol.json's tuning or evaluation patients), "
                           "200 samples",
        "training": {**cfg.to_dict(), "output_dir": None, "seconds": round(seconds)},
        "validation": {k: row[k] for k in [key for key, _ in KEYS] + ["frd_real_reference", "kid_real_reference"]
                       if k in row},
        "intended_use": "data augmentation research; every output is synthetic, not for diagnosis",
        **(extra or {}),
    }
    models_dir().mkdir(parents=True, exist_ok=True)
    return save_model(model, models_dir() / ship_name(method, cfg.size), card, overwrite=True)


def _stack_rows(paths, out):
    from PIL import Image

    images = [Image.open(p) for p in paths]
    canvas = Image.new("L", (max(i.width for i in images), sum(i.height for i in images)))
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height
    canvas.save(out)
    for p in paths:
        Path(p).unlink()


if __name__ == "__main__":
    main()
