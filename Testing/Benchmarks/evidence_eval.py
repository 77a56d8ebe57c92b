"""Evidence benchmark (issue #9), part 2: every trained method on the evaluation patients, once.

The evaluation patients of ``protocol.json`` were never trained or tuned on. Each of their slices
is degraded two independent ways: the calibrated projection-domain simulator the models were
trained with (25 % and 10 % dose, seeded), and an image-domain noise model the models never saw
(CT-like ramp-spectrum noise at 20 / 40 / 80 HU, ``QHQGANLib.physics.image_noise``), so a model
that learned one simulator's quirks is caught. Scored: PSNR in the soft-tissue window
[-160, 240] HU against the normal-dose slice, per slice. For every trained method the score of a
slice is the mean over its seeds; against HQGAN the per-slice paired difference gets a
bootstrap 95 % interval (``QHQGANLib.metrics.statistics.paired_difference``); a claim is made
only where the interval excludes 0. BM3D gets the noise power spectrum estimated from the
tuning patient's residuals of the same noise condition.

    python Testing/Benchmarks/evidence_eval.py            # after evidence_train.py; writes BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evidence_train import METHODS, RUNS, SEEDS  # noqa: E402
from protocol import load_split  # noqa: E402
from report import write_section  # noqa: E402

from QHQGANLib import Volume  # noqa: E402
from QHQGANLib.metrics.image import psnr  # noqa: E402
from QHQGANLib.metrics.statistics import paired_difference, seed_summary  # noqa: E402
from QHQGANLib.physics.image_noise import add_ct_noise  # noqa: E402
from QHQGANLib.physics.lowdose import simulate_low_dose  # noqa: E402
from QHQGANLib.tasks.classical import bm3d_denoise, estimate_noise_psd  # noqa: E402
from QHQGANLib.tasks.enhance import enhance  # noqa: E402

#: (name, degrade(volume, seed) -> degraded volume)
CONDITIONS: List[Tuple[str, Callable[[Volume, int], Volume]]] = [
    ("sim 25 %", lambda v, s: simulate_low_dose(v, 0.25, seed=s)),
    ("sim 10 %", lambda v, s: simulate_low_dose(v, 0.10, seed=s)),
    ("noise 20 HU", lambda v, s: add_ct_noise(v, 20.0, seed=s)),
    ("noise 40 HU", lambda v, s: add_ct_noise(v, 40.0, seed=s)),
    ("noise 80 HU", lambda v, s: add_ct_noise(v, 80.0, seed=s)),
]
WINDOW = "abdomen"  # [-160, 240] HU: the soft-tissue window
REFERENCE = "hqgan"


def per_slice_psnr(output: Volume, reference: Volume) -> List[float]:
    return [psnr(output.array[k], reference.array[k], window=WINDOW) for k in range(reference.shape[0])]


def trained_models() -> Dict[str, List[Path]]:
    found = {m: [RUNS / m / f"seed{s}" / "model.safetensors" for s in SEEDS] for m in METHODS}
    return {m: [p for p in paths if p.exists()] for m, paths in found.items()}


def evaluation_volumes() -> List[Volume]:
    """The evaluation patients' volumes; single-slice files of one patient in one folder (the dcmqi
    series) are read together as one series, so each slice has its real neighbours as 2.5D context."""
    from protocol import data_root, load_protocol

    from QHQGANLib import read_volume

    groups: Dict[Tuple[str, str], list] = {}
    for entry in load_protocol().entries_of("evaluation"):
        groups.setdefault((entry.patient, str(Path(entry.path).parent)), []).append(entry)
    volumes = []
    for (patient, folder), entries in groups.items():
        path = data_root() / (folder if len(entries) > 1 else entries[0].path)
        volume = read_volume(path)
        volume.metadata["protocol"] = {"path": str(path.relative_to(data_root())), "patient": patient,
                                       "split": "evaluation"}
        volumes.append(volume)
    return volumes


def evaluate(seed: int = 2026, conditions=None, bm3d: bool = True) -> Dict:
    evaluation = evaluation_volumes()
    tune = load_split("tune")
    models = trained_models()
    chosen = [(n, f) for n, f in CONDITIONS if conditions is None or n in conditions]
    rows: Dict[str, Dict[str, Dict[str, List[float]]]] = {}  # condition -> method -> patient/slice -> scores
    seconds: Dict[str, float] = {}
    for name, degrade in chosen:
        if bm3d:  # BM3D's noise spectrum from the tuning patient's residuals of this very condition
            residuals = np.concatenate([degrade(v, seed + 100 + i).array - v.array for i, v in enumerate(tune)])
            psd = estimate_noise_psd(residuals)
        table: Dict[str, List[float]] = {}
        labels: List[str] = []
        for i, normal in enumerate(evaluation):
            patient = normal.metadata["protocol"]["patient"]
            low = degrade(normal, seed + i)
            labels += [f"{patient}[{k}]" for k in range(normal.shape[0])]
            table.setdefault("input", []).extend(per_slice_psnr(low, normal))
            if bm3d:
                t0 = time.perf_counter()
                table.setdefault("bm3d (PSD)", []).extend(per_slice_psnr(bm3d_denoise(low, psd=psd), normal))
                seconds["bm3d (PSD)"] = seconds.get("bm3d (PSD)", 0.0) + time.perf_counter() - t0
            for method, paths in models.items():
                if not paths:
                    continue
                per_seed = []
                for path in paths:
                    t0 = time.perf_counter()
                    per_seed.append(per_slice_psnr(enhance(low, model=str(path), device="cpu"), normal))
                    seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - t0
                table.setdefault(method, []).extend(np.mean(per_seed, axis=0).tolist())
                for s, scores in zip((p.parent.name for p in paths), per_seed):
                    table.setdefault(f"{method} {s}", []).extend(scores)
        rows[name] = {"labels": labels, **table}
        print(f"{name}: done", flush=True)
    return {"rows": rows, "models": {m: [str(p) for p in ps] for m, ps in models.items()}, "seconds": seconds}


def markdown(result: Dict) -> str:
    rows = result["rows"]
    methods = [m for m in ["input", "bm3d (PSD)"] + list(METHODS) if any(m in r for r in rows.values())]
    out = ["Evaluation patients only (never trained or tuned on): " + ", ".join(sorted(
        {label.split("[")[0] for r in rows.values() for label in r["labels"]})) + ". PSNR (dB) in the soft-tissue "
           "window [-160, 240] HU against the normal-dose slice, mean over slices; trained methods: mean over "
           f"seeds (n seeds in brackets). Conditions: the calibrated simulator (25 %, 10 % dose) and an independent "
           "image-domain ramp-spectrum noise model at fixed std (20 / 40 / 80 HU).", "",
           "| method | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for m in methods:
        n_seeds = len(result["models"].get(m, [])) if m in METHODS else None
        label = f"{m} ({n_seeds})" if n_seeds else m
        out.append(f"| {label} | " + " | ".join(f"{np.mean(r[m]):.2f}" if m in r else "-" for r in rows.values()) + " |")
    out += ["", f"Per-slice paired difference against {REFERENCE} (PSNR, dB; positive: {REFERENCE} better), "
                "mean and bootstrap 95 % interval (BCa, 10,000 resamples) over the evaluation slices; the verdict "
                "says 'no measurable difference' when the interval contains 0.", "",
            "| condition | method | n | difference | 95 % interval | verdict |", "|---|---|---|---|---|---|"]
    for cond, r in rows.items():
        if REFERENCE not in r:
            continue
        for m in methods:
            if m == REFERENCE or m not in r:
                continue
            d = paired_difference(r[REFERENCE], r[m])
            verdict = {"A better": f"{REFERENCE} better", "B better": f"{m} better"}.get(d["verdict"], d["verdict"])
            out.append(f"| {cond} | {m} | {d['n']} | {d['mean_difference']:+.2f} | "
                       f"[{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | {verdict} |")
    out += ["", "Seed spread (mean PSNR over the evaluation slices per seed, sim 25 %):", "",
            "| method | mean | sd | min | max | n |", "|---|---|---|---|---|---|"]
    r = rows.get("sim 25 %", {})
    for m in METHODS:
        per_seed = [np.mean(v) for k, v in r.items() if k.startswith(f"{m} seed")]
        if per_seed:
            s = seed_summary(per_seed)
            out.append(f"| {m} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:.2f} | {s['max']:.2f} | {s['n']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(RUNS / "evaluation.json"))
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    ap.add_argument("--conditions", help="comma-separated subset of: " + ", ".join(n for n, _ in CONDITIONS)
                    + " (a smoke run; the benchmark uses all)")
    ap.add_argument("--no-bm3d", action="store_true", help="leave BM3D out (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    conditions = args.conditions.split(",") if args.conditions else None
    result = evaluate(conditions=conditions, bm3d=not args.no_bm3d)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    text = markdown(result)
    if args.no_write:
        print(text)
    else:
        write_section("evidence", "## Evidence on unseen patients (issue #9)\n\n" + text)


if __name__ == "__main__":
    main()
