"""Benchmark: label-conditioned synthesis, HQGAN against its fair MLP control and the SPADE baseline (issue #30).

The rules below were written before any run of this script; a change to them is a new benchmark.

Data (``protocol.json`` via ``protocol.load_split``; patients are the unit)
---------------------------------------------------------------------------
* **train**: every image of the training split (TotalSegmentator abdomen-pelvis, the Siemens series,
  Pancreas-CT-CB, Lung_Dx-A0001 with both reconstructions, the VTK head): every usable slice, its tissue
  classes by ``tissue_labels``, cropped and resized by ``label_training_pairs``. Nothing else is trained on.
* **tune**: the tuning patient (KiTS, 10 slices) chooses the one tuned setting (below); never trained on.
* **evaluation**: the evaluation patients (dcmqi, LCTSC, Pancreas-CT, CQ500 head, Lung_Dx-A0002 with both
  reconstructions): scored once, after tuning, for the reported table; never trained or tuned on.

Methods, budget, tuning (the same for all three)
------------------------------------------------
* ``hqgan`` (``hqgan-labels``: the circuit makes the style), ``mlp-control`` (the fair MLP in the circuit's
  place), ``spade`` (Gaussian noise through a linear layer): the same generator, critic, losses, data,
  batch (8), size (128), updates (``--steps``, default 1000) and optimiser (``LabelSynthConfig``'s defaults).
  The budget is this machine's (set on 2026-12-08 before any run): about 2 s per update at 128x128, batch 8,
  on one CPU core, so 15 runs of 1,000 updates take about 8 core-hours; a longer budget is a new benchmark.
* **Tuning grid**, identical for every method: ``l1_weight`` in {3, 10, 30}, seed 0. Each setting is
  scored on the tuning patient by the **class agreement error** (below, lower is better); the best
  setting per method is kept (ties: the smaller weight). Nothing else is tuned.
* **Seeds**: the tuned setting is trained with seeds 0, 1, 2 (seed 0 is the tuning run itself).

Scores (evaluation split, once; every slice rendered from its own tissue-class map at 128x128, one
sample per slice per seed, style seed ``1000 + seed``, compared with the real slice of that map)
--------------------------------------------------------------------------------------------------
* **Class agreement** (the primary score): per class, the mean and SD of the pixels whose label fraction
  is >= 0.99, synthetic against real; the slice's error is the pixel-weighted mean over classes of
  |mean difference| + |SD difference| (HU). Per method: patients as the unit
  (``metrics.statistics.patient_interval``, seeds averaged within patient), and the paired patient
  differences hqgan - mlp-control and hqgan - spade with 95 % t intervals (5 patients: wide).
* **Per-class table**: mean and SD per class, synthetic vs real, pooled over patients and seeds.
* **Label consistency**: ``tissue_labels`` of the synthetic slice (at the crop's median pixel size)
  against the input map (its majority class per pixel): Dice per class, mean over slices.
* **FRD, KID, C2ST, memorization**: ``metrics.synthetic.evaluate_synthetic`` of the synthetic slices
  against the real evaluation slices with the same maps (label-matched: the classifier can use only
  texture and detail), training slices for memorization; mean +- sd over seeds. Slices are pooled over
  patients here (few slices; said in the table).
* **Figure**: label map | hqgan | mlp-control | spade | real for one evaluation slice per patient.
* Whatever the numbers show is reported; no threshold is chosen after seeing them.

Commands (runs are resumable: a finished run's model is kept, an interrupted one resumes from its checkpoint)
------------------------------------------------------------------------------------------------------------
    python Testing/Benchmarks/bench_labels.py train --runs-dir /tmp/label_runs [--steps 1000] [--device cuda]
    python Testing/Benchmarks/bench_labels.py evaluate --runs-dir /tmp/label_runs   # BENCHMARKS.md "labels"
    python Testing/Benchmarks/bench_labels.py ship --runs-dir /tmp/label_runs       # seed-0 models + cards

``--smoke`` (train and evaluate): 64x64, 3 updates, batch 2, one grid setting, one seed, a few slices:
checks the script works; it never writes BENCHMARKS.md, Resources/Images or Resources/Models.
Shipping a model also needs the task in ``core.kinds.KINDS`` (the panel) and ``Testing/test_shipped_models.py``
to know it: ``ship`` writes the cards, it does not change the code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from protocol import load_split  # noqa: E402
from report import write_section  # noqa: E402

from QHQGANLib.core.figures import save_panels_png  # noqa: E402
from QHQGANLib.core.resources import models_dir  # noqa: E402
from QHQGANLib.metrics.statistics import patient_interval  # noqa: E402
from QHQGANLib.metrics.synthetic import evaluate_synthetic  # noqa: E402
from QHQGANLib.nn.label_synthesis import ARCH_OF_METHOD, METHODS, N_CLASSES  # noqa: E402
from QHQGANLib.nn.synthesis import unit_to_hu  # noqa: E402
from QHQGANLib.nn.weights import load_model, save_model  # noqa: E402
from QHQGANLib.physics.tissue_classes import TISSUE_CLASSES, tissue_labels  # noqa: E402
from QHQGANLib.training.label_pairs import label_training_pairs  # noqa: E402
from QHQGANLib.training.label_synthesis import LabelSynthConfig, train_from_labels  # noqa: E402
from QHQGANLib.training.provenance import speed, training_data  # noqa: E402
from QHQGANLib.training.slices import training_pixel_spacing  # noqa: E402
from QHQGANLib.core.volume import Volume  # noqa: E402

GRID = (3.0, 10.0, 30.0)
SEEDS = (0, 1, 2)
PURE = 0.99 * 255  # a pixel counts for its class when its label fraction is at least 0.99
FIGURE = HERE.parents[1] / "Resources" / "Images" / "benchmark-labels.png"
SMOKE = dict(size=64, steps=3, batch_size=2, width=4, hidden=8)


def _data(split: str, smoke: bool) -> List[Volume]:
    volumes = load_split(split)
    if smoke:  # a few slices of each of the first volumes: does the script run?
        volumes = [v if v.shape[0] <= 2 else v.with_geometry(v.array[v.shape[0] // 2: v.shape[0] // 2 + 2],
                                                              v.spacing, v.origin) for v in volumes[:2]]
    return volumes


def _pairs(volumes: List[Volume], size: int):
    """Per volume: (real HU (n, s, s), labels uint8 (n, 7, s, s), patient)."""
    return [(*label_training_pairs([v], size), v.metadata["protocol"]["patient"]) for v in volumes]


@torch.no_grad()
def render(model, onehot: np.ndarray, seed: int) -> np.ndarray:
    """One sample per label slice (HU), style from ``1000 + seed`` (one style for the set: one synthetic scanner)."""
    model = model.eval()
    latent = model.sample_latent(1, torch.Generator().manual_seed(1000 + seed))
    out = []
    for k in range(len(onehot)):
        labels = torch.from_numpy(onehot[k: k + 1]).float() / 255
        noise = model.draw_noise(1, torch.Generator().manual_seed(10_000 * seed + k))
        out.append(model(labels, latent, noise=noise)[0, 0].numpy())
    return unit_to_hu(np.stack(out))


def class_agreement(synthetic: np.ndarray, real: np.ndarray, onehot: np.ndarray) -> Dict:
    """Per class mean/SD of pure pixels, synthetic vs real, and the slice's weighted error (rules above)."""
    rows, error, weight = {}, 0.0, 0
    for c in range(N_CLASSES):
        pure = onehot[c] >= PURE
        n = int(pure.sum())
        if n < 10:
            continue
        s, r = synthetic[pure], real[pure]
        rows[c] = {"n": n, "mean_synthetic": float(s.mean()), "mean_real": float(r.mean()),
                   "sd_synthetic": float(s.std()), "sd_real": float(r.std())}
        error += n * (abs(s.mean() - r.mean()) + abs(s.std() - r.std()))
        weight += n
    return {"classes": rows, "error": float(error / max(weight, 1))}


def _run(args, method: str, l1_weight: float, seed: int, train, label_maps):
    """The model of one (method, setting, seed) run: loaded when finished, else trained (resuming)."""
    name = f"{method}-l1w{l1_weight:g}-seed{seed}"
    path = args.runs_dir / f"{name}.safetensors"
    if path.exists():
        return load_model(path), name
    run_dir = args.runs_dir / name
    options = dict(SMOKE) if args.smoke else dict(steps=args.steps)
    cfg = LabelSynthConfig(method=method, seed=seed, l1_weight=l1_weight, output_dir=str(run_dir),
                           resume=(run_dir / "checkpoint.pt").exists(), device=args.device, **options)
    t0 = time.time()
    model = train_from_labels(train, cfg, label_maps=label_maps, show_progress=True)
    save_model(model, args.runs_dir / name, {"task": "synthesize-from-labels", "training": {
        **cfg.to_dict(), "output_dir": None, "seconds": round(time.time() - t0)}, "training_data": training_data(train),
        **speed(model), **model.training_pixel_spacing})
    return model.cpu(), name


def cmd_train(args) -> None:
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    train, tune = _data("train", args.smoke), _data("tune", args.smoke)
    label_maps = [tissue_labels(v) for v in train]
    size = SMOKE["size"] if args.smoke else 128
    tune_pairs = _pairs(tune, size)
    grid, seeds = (GRID[1:2], SEEDS[:1]) if args.smoke else (GRID, SEEDS)
    tuning = {}
    for method in args.methods:
        scores = {}
        for l1_weight in grid:
            model, name = _run(args, method, l1_weight, 0, train, label_maps)
            errors = [class_agreement(s, r, o)["error"] for real, onehot, _ in tune_pairs
                      for s, r, o in zip(render(model, onehot, 0), real, onehot)]
            scores[l1_weight] = float(np.mean(errors))
            print(method, name, "tuning error", round(scores[l1_weight], 2), flush=True)
        best = min(sorted(scores), key=lambda w: scores[w])
        tuning[method] = {"scores": {f"{w:g}": v for w, v in scores.items()}, "l1_weight": best}
        for seed in seeds[1:]:
            _run(args, method, best, seed, train, label_maps)
    path = args.runs_dir / "tuning.json"  # workers that train other methods in parallel add to the same record
    record = json.loads(path.read_text()) if path.exists() else {"methods": {}}
    record.update(smoke=args.smoke, seeds=list(seeds), methods={**record.get("methods", {}), **tuning})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _dice(synthetic: np.ndarray, onehot: np.ndarray, pixel_mm: float) -> Dict[int, float]:
    derived = np.rint(tissue_labels(Volume(synthetic, (pixel_mm, pixel_mm, 1.0))).array[0]).astype(int)
    given = onehot.argmax(0)
    out = {}
    for c in range(N_CLASSES):
        a, b = derived == c, given == c
        if b.sum() >= 10:
            out[c] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return out


def cmd_evaluate(args) -> None:
    tuning = json.loads((args.runs_dir / "tuning.json").read_text())
    smoke = bool(tuning["smoke"])
    size = SMOKE["size"] if smoke else 128
    evaluation = _data("evaluation", smoke)
    pairs = _pairs(evaluation, size)
    pixel_mm = float(training_pixel_spacing(evaluation, size)["pixel_spacing_mm"])
    train_real = np.concatenate([p[0] for p in _pairs(_data("train", smoke), size)])
    real = np.concatenate([p[0] for p in pairs])
    onehot = np.concatenate([p[1] for p in pairs])
    patients = [patient for r, _, patient in pairs for _ in range(len(r))]
    results, figures = {}, {}
    for method, chosen in tuning["methods"].items():
        rows = []
        for seed in tuning["seeds"]:
            model = load_model(args.runs_dir / f"{method}-l1w{chosen['l1_weight']:g}-seed{seed}.safetensors")
            synthetic = render(model, onehot, seed)
            agreement = [class_agreement(s, r, o) for s, r, o in zip(synthetic, real, onehot)]
            dice = [_dice(s, o, pixel_mm) for s, o in zip(synthetic, onehot)]
            metrics = evaluate_synthetic(synthetic, real, train_real, seed=seed)  # C2ST None when too few slices
            rows.append({"seed": seed, "errors": [a["error"] for a in agreement], "agreement": agreement,
                         "dice": dice, "frd": metrics["frd"], "kid": metrics["kid_mean"],
                         "c2st": metrics.get("c2st_accuracy"), "memorization_max": metrics["memorization"]["max"]})
            if seed == tuning["seeds"][0]:
                figures[method] = synthetic
        results[method] = rows
    summary = _summarise(results, patients, tuning)
    out = args.runs_dir / "evaluation.json"
    out.write_text(json.dumps({"smoke": smoke, "summary": summary, "results": results}, indent=1, default=float))
    figure = (args.runs_dir / "benchmark-labels.png") if smoke else FIGURE
    _figure(figure, pairs, figures)
    lines = _markdown(summary, tuning, figure, smoke)
    print("\n".join(lines))
    if not smoke:
        write_section("labels", "\n".join(lines))


def _summarise(results, patients, tuning) -> Dict:
    summary = {}
    for method, rows in results.items():
        errors = [e for r in rows for e in r["errors"]]
        seeds = [r["seed"] for r in rows for _ in r["errors"]]
        summary[method] = {"class_error": patient_interval(errors, patients * len(rows), seeds, higher_is_better=False),
                           **{k: [r[k] for r in rows] for k in ("frd", "kid", "c2st", "memorization_max")},
                           "dice": _mean_dice(rows), "classes": _pooled_classes(rows)}
    if "hqgan" in results:
        for other in (m for m in results if m != "hqgan"):
            diffs = [a - b for ra, rb in zip(results["hqgan"], results[other]) for a, b in zip(ra["errors"], rb["errors"])]
            seeds = [r["seed"] for r in results["hqgan"] for _ in r["errors"]]
            summary[f"hqgan - {other}"] = patient_interval(diffs, patients * len(results["hqgan"]), seeds,
                                                           higher_is_better=False)
    return summary


def _mean_dice(rows) -> Dict[str, float]:
    values: Dict[int, list] = {}
    for row in rows:
        for per_slice in row["dice"]:
            for c, d in per_slice.items():
                values.setdefault(c, []).append(d)
    return {TISSUE_CLASSES[c]: float(np.mean(v)) for c, v in sorted(values.items())}


def _pooled_classes(rows) -> Dict[str, Dict[str, float]]:
    pooled: Dict[int, Dict[str, list]] = {}
    for row in rows:
        for agreement in row["agreement"]:
            for c, stats in agreement["classes"].items():
                for key in ("mean_synthetic", "mean_real", "sd_synthetic", "sd_real"):
                    pooled.setdefault(int(c), {}).setdefault(key, []).append(stats[key])
    return {TISSUE_CLASSES[c]: {k: float(np.mean(v)) for k, v in d.items()} for c, d in sorted(pooled.items())}


def _figure(path: Path, pairs, samples) -> None:
    from PIL import Image

    starts = np.cumsum([0] + [len(p[0]) for p in pairs])[:-1]
    rows, seen = [], set()
    for (real, onehot, patient), start in zip(pairs, starts):
        if patient in seen:  # one slice per patient: the middle slice of its first volume
            continue
        seen.add(patient)
        k = len(real) // 2
        panels = [(f"labels {patient[:12]}", onehot[k].argmax(0) * 200.0 - 1000.0)]
        panels += [(m, s[start + k]) for m, s in samples.items()] + [("real", real[k])]
        tmp = path.with_name(f".{path.stem}-{len(rows)}.png")
        save_panels_png(panels, tmp, windows=[(-1000, 200)] + [(-1000, 400)] * (len(panels) - 1),
                        min_panel_size=128)
        rows.append(tmp)
    images = [Image.open(p) for p in rows]
    canvas = Image.new("L", (max(i.width for i in images), sum(i.height for i in images)))
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    for p in rows:
        p.unlink()


def _markdown(summary, tuning, figure: Path, smoke: bool) -> List[str]:
    def ms(values) -> str:
        v = [x for x in values if x is not None]
        return f"{np.mean(v):.3g} +- {np.std(v):.2g}" if v else "-"

    lines = ["## Label-conditioned synthesis (128x128): hqgan-labels vs mlp-control-labels vs spade-labels" +
             (" (SMOKE RUN: not a result)" if smoke else ""), "",
             "Rules: Testing/Benchmarks/bench_labels.py (written before any run). Tuned l1_weight per method: " +
             ", ".join(f"{m} {t['l1_weight']:g}" for m, t in tuning["methods"].items()) +
             f"; seeds {', '.join(map(str, tuning['seeds']))}.", "",
             "| method | class error, HU (patients, 95 % CI) | FRD | KID | C2ST | max SSIM to training |",
             "|---|---|---|---|---|---|"]
    for method in tuning["methods"]:
        s = summary[method]
        ce = s["class_error"]
        lines.append(f"| {method} | {ce['mean']:.1f} [{ce['ci_low']:.1f}, {ce['ci_high']:.1f}] | {ms(s['frd'])} | "
                     f"{ms(s['kid'])} | {ms(s['c2st'])} | {ms(s['memorization_max'])} |")
    lines.append("")
    for key in (k for k in summary if k.startswith("hqgan - ")):
        d = summary[key]
        lines.append(f"- {key}, class error (lower is better for hqgan when negative): {d['mean']:.1f} HU "
                     f"[{d['ci_low']:.1f}, {d['ci_high']:.1f}], {d['verdict']}")
    lines += ["", "Label consistency (Dice of re-derived tissue classes): " + "; ".join(
        f"{m}: " + ", ".join(f"{c} {v:.2f}" for c, v in summary[m]["dice"].items()) for m in tuning["methods"]), "",
        f"![label map | hqgan | mlp-control | spade | real]({figure.name if smoke else figure.relative_to(HERE.parents[1])})"]
    return lines


def cmd_ship(args) -> None:
    evaluation = json.loads((args.runs_dir / "evaluation.json").read_text())
    if evaluation["smoke"]:
        raise SystemExit("a smoke run is not shipped")
    tuning = json.loads((args.runs_dir / "tuning.json").read_text())
    for method, chosen in tuning["methods"].items():
        path = args.runs_dir / f"{method}-l1w{chosen['l1_weight']:g}-seed0.safetensors"
        model = load_model(path)
        card = dict(model.card)
        for key in ("config", "weights", "sha256", "n_parameters", "qhqgan_version", "created", "name"):
            card.pop(key, None)
        card.update(name=ARCH_OF_METHOD[method], validation={
            k: v for k, v in evaluation["summary"][method].items() if k != "classes"},
            intended_use="data augmentation research; every output is synthetic, not for diagnosis")
        save_model(model, models_dir() / ARCH_OF_METHOD[method], card, overwrite=True)
        print("shipped", ARCH_OF_METHOD[method])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("train", "evaluate", "ship"))
    ap.add_argument("--runs-dir", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="tiny budget: does the script run (never reported)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"train": cmd_train, "evaluate": cmd_evaluate, "ship": cmd_ship}[args.command](args)


if __name__ == "__main__":
    main()
