"""Adaptation to one scan (issue #26, item 4): tune on the tuning patient, then evaluate once on unseen patients.

The rules, written before any run of this script:

* **Tuning** (``tune``): the tuning patient only (KiTS, ``Z-Missing-Slices-Lymphoma``), its first four
  slices by file name (CT2, CT20, CT21, CT22), each adapted alone (the slices are not contiguous). Two
  noise conditions: the calibrated simulator at 25 % dose, and Gaussian noise of 30 HU with the real
  noise spectrum of the GE water phantom (``reference`` split; a texture that is not the simulator's).
  Base model ``hqgan-enhance``; ``alpha`` 0.5 (R2R's small-recorruption regime, the model is applied to
  the scan itself). Learning rate from (1e-4, 3e-4, 1e-3) at 300 updates: the highest mean PSNR gain
  over the unadapted model (soft-tissue window, mean over slices and both conditions). Then updates from
  (100, 300, 600) at that rate: the smallest within 0.1 dB of the best, which becomes the panel's
  default (``ADAPT_DEFAULT_STEPS``) if it also fits 10 minutes for a 100-slice 512x512 volume.
* **Evaluation** (``evaluate``), once, with the tuned values: every evaluation patient (dcmqi 99000,
  LCTSC, PANCREAS_0001, CQ500 head, Lung_Dx-A0002 with slices 10-19 of both its kernels: B40f and the
  sharp B70f, a kernel no training scan has), under the simulator at 25 % dose and the phantom-texture
  noise at 30 HU. Methods: ``hqgan-enhance`` and ``redcnn-enhance`` each as shipped and adapted; blind
  BM3D (noise level estimated from the image; no oracle); and the frozen-slot rows of item 5:
  ``hqgan-enhance`` with its circuit's output frozen to its mean over the image, ``mlp-control-enhance``
  (the fair classical control in the circuit's place) as shipped and with its MLP frozen the same way
  (``QHQGANLib.tasks.frozen_circuit``). Every figure is averaged over a patient's
  slices (and, for Lung_Dx-A0002, its two kernels) first; intervals are t intervals over patients
  (n - 1 degrees of freedom), and per-patient signs are given. With 5 patients an interval that holds 0
  is "not resolvable", not "no difference".

* **Re-tuning for the retrained models** (``retune --model NAME``; rule written on 2026-12-08, before
  these runs): the retraining of item 1 made the models better and the adaptation tuned above harmful
  on them (``Testing/test_adapt.py``). On the same tuning slices and the same two conditions, with the
  same alpha and 300 updates, the learning rate is chosen again for each retrained model from (1e-5,
  3e-5, 1e-4, 3e-4): the highest mean gain over the unadapted model. If that gain is below
  ``WITHIN_DB`` (0.1 dB), adaptation is **not recommended** for that model: its card says so and
  ``enhance(..., adapt_steps=N)`` warns; otherwise the card records the rate and the adaptation uses it.
  Written to ``adapt_retune_<model>.json``; the evaluation patients are not touched by this rule.

    python Testing/Benchmarks/bench_adapt.py tune       # writes adapt_tuning.json beside this file
    python Testing/Benchmarks/bench_adapt.py retune --model hqgan-film-enhance   # adapt_retune_<model>.json
    python Testing/Benchmarks/bench_adapt.py evaluate   # BENCHMARKS.md section 'adapt' (continues a stopped run)
    python Testing/Benchmarks/bench_adapt.py render     # the section again from adapt_rows.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import load_split  # noqa: E402
from report import write_section  # noqa: E402

from QHQGANLib import Volume  # noqa: E402
from QHQGANLib.metrics.image import psnr  # noqa: E402
from QHQGANLib.physics.calibration import estimate_noise  # noqa: E402
from QHQGANLib.physics.lowdose import simulate_low_dose  # noqa: E402
from QHQGANLib.physics.noise_texture import NoiseTexture, estimate_nps  # noqa: E402
from QHQGANLib.tasks.adapt import ADAPT_ALPHA, adapt_model  # noqa: E402
from QHQGANLib.tasks.classical import bm3d_denoise  # noqa: E402
from QHQGANLib.tasks.enhance import enhance  # noqa: E402
from QHQGANLib.tasks.frozen_circuit import freeze_mixer  # noqa: E402

HERE = Path(__file__).resolve().parent
TUNING_JSON = HERE / "adapt_tuning.json"
TUNE_SLICES = ("CT2.dcm", "CT20.dcm", "CT21.dcm", "CT22.dcm")
LRS = (1e-4, 3e-4, 1e-3)
STEPS = (100, 300, 600)
TUNE_STEPS = 300
WITHIN_DB = 0.1
PHANTOM_HU = 30.0
DOSE = 0.25
A0002_SLICES = slice(10, 20)


def phantom_texture():
    """The GE water phantom's measured noise spectrum (both water images pooled by averaging the profiles)."""
    textures = [estimate_nps(v) for v in load_split("reference")]
    power = np.mean([t.power for t in textures], axis=0)
    return NoiseTexture(textures[0].frequencies, tuple(float(p) for p in power), PHANTOM_HU,
                                 sum(t.n_rois for t in textures), textures[0].roi_px)


def degrade(volume: Volume, condition: str, seed: int, texture) -> Volume:
    if condition == "simulator 25 %":
        return simulate_low_dose(volume, DOSE, seed=seed)
    noise = texture.sample(volume.shape, np.random.default_rng(seed))
    return volume.with_array(volume.array + noise, note=f"+ phantom-texture noise {PHANTOM_HU:g} HU")


CONDITIONS = ("simulator 25 %", f"phantom texture {PHANTOM_HU:g} HU")


def gain(out: np.ndarray, low: Volume, ref: Volume) -> float:
    return psnr(out, ref.array, "abdomen") - psnr(low.array, ref.array, "abdomen")


def tuning_rule() -> str:
    """The docstring's tuning rule alone (its evaluation rule is not part of the tuning record)."""
    return " ".join(__doc__.split("* **Tuning**", 1)[1].split("* **Evaluation**", 1)[0].split())


def tune() -> None:
    torch.set_num_threads(1)
    texture = phantom_texture()
    slices = [v for v in load_split("tune") if v.metadata["protocol"]["path"].endswith(TUNE_SLICES)]
    assert len(slices) == len(TUNE_SLICES)
    cases = [(c, i, v, degrade(v, c, 100 + i, texture)) for c in CONDITIONS for i, v in enumerate(slices)]
    base = {(c, i): gain(enhance(low, "hqgan-enhance").array, low, v) for c, i, v, low in cases}
    results: Dict[str, dict] = {"base_gain_db": float(np.mean(list(base.values()))), "lr": {}, "steps": {}}

    def run(lr: float, steps: int) -> Tuple[float, float]:
        gains, seconds = [], 0.0
        for c, i, v, low in cases:
            t0 = time.perf_counter()
            model, _ = adapt_model(low, "hqgan-enhance", steps=steps, lr=lr, seed=i)
            seconds += time.perf_counter() - t0
            gains.append(gain(enhance(low, model).array, low, v) - base[(c, i)])
        mean = float(np.mean(gains))
        print(f"lr {lr:g} steps {steps}: adaptation adds {mean:+.3f} dB ({seconds / len(cases):.0f} s each)", flush=True)
        return mean, seconds / len(cases)

    for lr in LRS:
        results["lr"][str(lr)] = run(lr, TUNE_STEPS)[0]
    best_lr = max(LRS, key=lambda lr: results["lr"][str(lr)])
    for steps in STEPS:
        results["steps"][str(steps)] = (results["lr"][str(best_lr)], None) if steps == TUNE_STEPS else run(best_lr, steps)
        results["steps"][str(steps)] = list(results["steps"][str(steps)])
    best = max(r[0] for r in results["steps"].values())
    chosen = min(s for s in STEPS if results["steps"][str(s)][0] >= best - WITHIN_DB)
    results.update(chosen_lr=best_lr, chosen_steps=chosen, alpha=ADAPT_ALPHA, rule="Tuning " + tuning_rule())
    TUNING_JSON.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("chosen_lr", "chosen_steps")}))


RETUNE_LRS = (1e-5, 3e-5, 1e-4, 3e-4)


def retune(model_name: str) -> None:
    """The re-tuning rule of the docstring, for one retrained model (resumable: one line per lr)."""
    torch.set_num_threads(1)
    out = HERE / f"adapt_retune_{model_name}.json"
    results = json.loads(out.read_text()) if out.exists() else {"model": model_name, "lr": {}}
    texture = phantom_texture()
    slices = [v for v in load_split("tune") if v.metadata["protocol"]["path"].endswith(TUNE_SLICES)]
    assert len(slices) == len(TUNE_SLICES)
    cases = [(c, i, v, degrade(v, c, 100 + i, texture)) for c in CONDITIONS for i, v in enumerate(slices)]
    base = {(c, i): gain(enhance(low, model_name).array, low, v) for c, i, v, low in cases}
    results["base_gain_db"] = float(np.mean(list(base.values())))
    for lr in RETUNE_LRS:
        if str(lr) in results["lr"]:
            continue
        added, seconds = [], 0.0
        for c, i, v, low in cases:
            t0 = time.perf_counter()
            model, _ = adapt_model(low, model_name, steps=TUNE_STEPS, lr=lr, seed=i)
            seconds += time.perf_counter() - t0
            added.append(gain(enhance(low, model).array, low, v) - base[(c, i)])
        results["lr"][str(lr)] = {"added_db": float(np.mean(added)), "per_case": [float(a) for a in added],
                                  "seconds_each": seconds / len(cases)}
        print(f"{model_name} lr {lr:g}: adaptation adds {np.mean(added):+.3f} dB ({seconds / len(cases):.0f} s each)",
              flush=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    best = max(RETUNE_LRS, key=lambda lr: results["lr"][str(lr)]["added_db"])
    results.update(steps=TUNE_STEPS, alpha=ADAPT_ALPHA, best_lr=best,
                   recommended=results["lr"][str(best)]["added_db"] >= WITHIN_DB,
                   rule=" ".join(__doc__.split("* **Re-tuning", 1)[1].split("python Testing", 1)[0].split()))
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("best_lr", "recommended")}))
    _record_in_card(model_name, results)


def _record_in_card(model_name: str, results: dict) -> None:
    """The rule's outcome into the shipped model's card (``"adaptation"``; read by
    ``QHQGANLib.tasks.adapt.card_advice``). Only the JSON card changes, never the weights."""
    import os

    from QHQGANLib.core.resources import models_dir

    path = models_dir() / f"{model_name}.json"
    card = json.loads(path.read_text())
    best = results["lr"][str(results["best_lr"])]
    card["adaptation"] = {
        "recommended": bool(results["recommended"]), "lr": results["best_lr"], "steps": results["steps"],
        "alpha": results["alpha"], "added_db": round(best["added_db"], 3),
        "added_db_per_lr": {lr: round(r["added_db"], 3) for lr, r in results["lr"].items()},
        "unadapted_gain_db": round(results["base_gain_db"], 3),
        "tuned_on": "the tuning patient's slices CT2/20/21/22, simulator 25 % and phantom-texture noise "
                    "(Testing/Benchmarks/bench_adapt.py retune)"}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"{path.name}: adaptation {'recommended' if results['recommended'] else 'not recommended'}")


def _evaluation_cases() -> List[Tuple[str, Volume]]:
    cases = []
    for v in load_split("evaluation"):
        patient = v.metadata["protocol"]["patient"]
        if patient == "Lung_Dx-A0002":
            origin = v.index_to_physical((0, 0, A0002_SLICES.start))
            v = v.with_geometry(v.array[A0002_SLICES].copy(), v.spacing, origin)
        cases.append((patient, v))
    return cases


def _t_interval(values: List[float]) -> Tuple[float, float, float]:
    from QHQGANLib.metrics.statistics import t_interval

    return t_interval(values)


METHODS = ("hqgan-enhance", "hqgan-enhance circuit frozen", "hqgan-enhance adapted", "mlp-control-enhance",
           "mlp-control-enhance MLP frozen", "redcnn-enhance", "redcnn-enhance adapted", "BM3D (blind)")
#: one JSON row per (condition, case, method) as it is measured: a run stopped anywhere continues there
ROWS = HERE / "adapt_rows.jsonl"


def _rows() -> List[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()] if ROWS.exists() else []


def import_log(log: Path) -> int:
    """Rows from the printed lines of an ``evaluate`` run that kept no row file (the first run did not):
    ``condition | patient (n slices) | method: +g dB, noise x HU`` in the order of the loops."""
    import re

    cases = _evaluation_cases()
    done = {(r["condition"], r["case"], r["method"]) for r in _rows()}
    order = [(c, k, m) for c in CONDITIONS for k in range(len(cases)) for m in METHODS]
    pattern = re.compile(r"^(.*) \| (.*) \((\d+) slices\) \| (.*): ([-+]\d+\.\d+) dB, noise ([\d.]+|nan) HU$")
    lines = [ln for ln in log.read_text().splitlines() if pattern.match(ln)]
    added = 0
    with ROWS.open("a") as f:
        for (condition, k, method), line in zip(order, lines):
            m = pattern.match(line)
            assert (m.group(1), m.group(2), m.group(4)) == (condition, cases[k][0], method), line
            if (condition, k, method) in done:
                continue
            f.write(json.dumps({"condition": condition, "case": k, "patient": cases[k][0], "method": method,
                                "slices": int(m.group(3)), "gain_db": float(m.group(5)),
                                "noise_hu": float(m.group(6)), "seconds": None, "from_log": True}) + "\n")
            added += 1
    return added


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "(one patient: no interval)"


def evaluate() -> None:
    torch.set_num_threads(2)
    tuning = json.loads(TUNING_JSON.read_text())
    lr, steps = tuning["chosen_lr"], tuning["chosen_steps"]
    texture = phantom_texture()
    done = {(r["condition"], r["case"], r["method"]) for r in _rows()}
    for condition in CONDITIONS:
        for k, (patient, v) in enumerate(_evaluation_cases()):
            todo = [m for m in METHODS if (condition, k, m) not in done]
            if not todo:
                continue
            low = degrade(v, condition, 500 + k, texture)
            for method in todo:
                t0 = time.perf_counter()
                if method == "BM3D (blind)":
                    out = bm3d_denoise(low).array
                elif method.endswith("frozen"):
                    out = enhance(low, freeze_mixer(method.split()[0], low)[0]).array
                elif method.endswith("adapted"):
                    model, _ = adapt_model(low, method.split()[0], steps=steps, lr=lr, seed=k)
                    out = enhance(low, model).array
                else:
                    out = enhance(low, method).array
                row = {"condition": condition, "case": k, "patient": patient, "method": method,
                       "slices": v.shape[0], "gain_db": gain(out, low, v),
                       "noise_hu": estimate_noise(low.with_array(out)).noise_hu,
                       "seconds": time.perf_counter() - t0}
                with ROWS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{condition} | {patient} ({v.shape[0]} slices) | {method}: {row['gain_db']:+.2f} dB, "
                      f"noise {row['noise_hu']:.1f} HU", flush=True)


def _accumulate(rows: List[dict]):
    """Per (condition, method, patient): slice-weighted sums of gain and noise, and the slice count."""
    acc: Dict[Tuple[str, str, str], List[float]] = {}
    seconds: Dict[str, float] = {}
    timed: Dict[str, int] = {}
    for r in rows:
        row = acc.setdefault((r["condition"], r["method"], r["patient"]), [0.0, 0.0, 0.0])
        row[0] += r["gain_db"] * r["slices"]
        row[1] += r["noise_hu"] * r["slices"]
        row[2] += r["slices"]
        if r.get("seconds") is not None:
            seconds[r["method"]] = seconds.get(r["method"], 0.0) + r["seconds"]
            timed[r["method"]] = timed.get(r["method"], 0) + r["slices"]
    return acc, seconds, timed


def render(acc, methods, tuning, seconds, slices_timed=None) -> str:
    slices_timed = slices_timed or {}
    patients = list(dict.fromkeys(k[2] for k in acc))
    lines = ["## Adaptation to one scan (issue #26): self-supervised fine-tuning on the user's own volume", "",
             "`enhance(volume, adapt_steps=N)` / `qhqgan enhance --adapt-steps N` / the panel's *Adapt to this "
             "scan first*: the model is fine-tuned on the scan it is about to enhance by Recorrupted-to-Recorrupted "
             "(the scan plus noise of its own measured spectrum and level, alpha 0.5), then applied "
             "(`QHQGANLib/tasks/adapt.py`). Script: `Testing/Benchmarks/bench_adapt.py`; its docstring holds the "
             "rules, written before the runs.", "",
             "**Tuning** (KiTS tuning patient, 4 slices, both conditions; `adapt_tuning.json`): adaptation added "
             + ", ".join(f"{float(k):g}: {v:+.2f} dB" for k, v in tuning["lr"].items())
             + " by learning rate at 300 updates; "
             + ", ".join(f"{k} updates {v[0]:+.2f} dB" for k, v in tuning["steps"].items())
             + f" at {tuning['chosen_lr']:g}. Chosen: learning rate {tuning['chosen_lr']:g}, "
             f"{tuning['chosen_steps']} updates (the best rate lies at the edge of the grid written in the rules: a "
             "wider sweep may find more).", "",
             "**Evaluation** (once; the evaluation patients, never trained or tuned on). PSNR gain over the noisy "
             "input in the soft-tissue window [-160, 240] HU, averaged over each patient's slices first "
             "(Lung_Dx-A0002: slices 10-19 of B40f and of the sharp B70f together); the mean over patients with "
             "a t interval over patients (n - 1 degrees of freedom). BM3D is blind: its noise level comes from "
             "the image itself.", ""]
    for condition in CONDITIONS:
        lines += [f"### {condition}", "", "| method | " + " | ".join(patients) + " | mean over patients [95 % t] | "
                  "noise in soft tissue (HU, mean over patients) |",
                  "|---|" + "---|" * len(patients) + "---|---|"]
        per = {}
        for method in methods:
            rows = [acc.get((condition, method, p)) for p in patients]  # None: not measured yet
            gains = [None if r is None else r[0] / r[2] for r in rows]
            if all(g is None for g in gains):
                continue
            per[method] = gains
            mean, lo, hi = _t_interval([g for g in gains if g is not None])
            noise = np.mean([r[1] / r[2] for r in rows if r is not None])
            lines.append(f"| {method} | " + " | ".join("-" if g is None else f"{g:+.2f}" for g in gains)
                         + f" | {mean:+.2f} {_ci(lo, hi)} | {noise:.1f} |")
        lines.append("")
        for a, b in (("hqgan-enhance adapted", "hqgan-enhance"), ("redcnn-enhance adapted", "redcnn-enhance"),
                     ("hqgan-enhance adapted", "BM3D (blind)"), ("hqgan-enhance adapted", "redcnn-enhance adapted"),
                     ("hqgan-enhance", "hqgan-enhance circuit frozen"),
                     ("mlp-control-enhance", "mlp-control-enhance MLP frozen"),
                     ("hqgan-enhance", "mlp-control-enhance"), ("hqgan-enhance", "redcnn-enhance")):
            if a not in per or b not in per:
                continue
            d = [x - y for x, y in zip(per[a], per[b]) if x is not None and y is not None]
            if not d:
                continue
            mean, lo, hi = _t_interval(d)
            ahead = sum(x > 0 for x in d)
            verdict = (f"not resolvable with {len(d)} patient" if len(d) < 2 else f"{a} better" if lo > 0 else
                       f"{b} better" if hi < 0 else f"not resolvable with {len(d)} patients")
            lines.append(f"- {a} minus {b}: {mean:+.2f} dB {_ci(lo, hi)}; ahead on {ahead} of {len(d)} "
                         f"patients: {verdict}.")
        lines.append("")
    if seconds:
        lines.append("Seconds per slice of the rows timed (adaptation included, 2 threads, while other work shared "
                     "the 2 cores): " + ", ".join(f"{m} {seconds[m] / slices_timed[m]:.2f}" for m in methods
                                                  if m in seconds and slices_timed.get(m)) + ".")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("tune", "retune", "evaluate", "render", "import-log"))
    ap.add_argument("--log", help="import-log: the printed output of an evaluate run")
    ap.add_argument("--model", default="hqgan-film-enhance", help="retune: the retrained model")
    args = ap.parse_args()
    if args.command == "retune":
        return retune(args.model)
    if args.command == "tune":
        tune()
    if args.command == "import-log":
        print(f"{import_log(Path(args.log))} rows imported into {ROWS.name}")
    if args.command == "evaluate":
        evaluate()
    if args.command in ("evaluate", "render"):  # render: BENCHMARKS.md from the rows measured so far
        rows = _rows()
        acc, seconds, timed = _accumulate(rows)
        expected = len(CONDITIONS) * len(_evaluation_cases()) * len(METHODS)
        body = render(acc, [m for m in METHODS if any(k[1] == m for k in acc)],
                      json.loads(TUNING_JSON.read_text()), seconds, timed)
        if len(rows) < expected:
            body = body.replace("**Evaluation** (once;", f"**Evaluation, partial: {len(rows)} of {expected} "
                                "(condition, scan, method) rows measured so far; patients missing from a table "
                                "are not measured yet** (once;", 1)
        write_section("adapt", body)
        print(body)


if __name__ == "__main__":
    main()
