"""Evidence benchmark (issue #9), part 1: tune and train every enhancement method under the patient protocol.

Every method gets the same data (the training patients of ``protocol.json``), the same calibrated
low-dose simulation over a wide dose range, the same number of updates, batch and patch size, and
the same tuning budget: a learning-rate sweep of the same candidates and length, scored on the
tuning patient only (never on the evaluation patients). The runs are a resumable queue: every job
checkpoints, and running the command again continues where the last one stopped (a session may
end at any time), so the queue spans sessions:

    nohup python Testing/Benchmarks/evidence_train.py tune  > runs/evidence/tune.log 2>&1 &
    nohup python Testing/Benchmarks/evidence_train.py train > runs/evidence/train.log 2>&1 &   # one per free core
    python Testing/Benchmarks/evidence_train.py status
    python Testing/Benchmarks/evidence_train.py snapshot   # tuning results into evidence_tuning.json, to commit
    python Testing/Benchmarks/evidence_train.py ship       # after evidence_eval.py: seed 0 into Resources/Models
    python Testing/Benchmarks/evidence_train.py converge --earlier 2000 --steps 3000   # worth extending again?

The runs go to ``$QHQGAN_EVIDENCE_RUNS`` (default ``runs/evidence`` in the checkout; point it outside
the checkout, e.g. ``~/qhqgan-runs/evidence``, when the checkout may be laid anew between sessions).
Several ``tune`` processes may run at once on different ``--methods`` (they merge ``tuning.json``).

A larger ``--steps`` later (``train --steps 3000``) extends the finished runs exactly from their
checkpoints; ``evidence_eval.py`` then scores the longer-trained models (its cache is per model sha256).
Extending keeps the shorter model beside the run (``model-2000.safetensors``); ``converge`` scores both
on the tuning patient, which decides whether another extension is worth it (``CONVERGED_DB``), so the
training budget, like the learning rate, is chosen without the evaluation patients.

``tune`` picks each method's learning rate (``runs/evidence/tuning.json``; when the best value
sits at an edge of the sweep the sweep is widened by one value on that side); ``train`` trains
the seeds with it (``runs/evidence/<method>/seed<k>/model.safetensors``). Evaluation on the
evaluation patients is ``evidence_eval.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import load_split  # noqa: E402
from run_queue import claim, keep_budget, load_json, save_json, trained_steps, weights_of  # noqa: E402

from QHQGANLib.nn.weights import save_model  # noqa: E402
from QHQGANLib.tasks.evaluate import evaluate_enhancement  # noqa: E402
from QHQGANLib.training.enhancement import TrainConfig, train_enhancer  # noqa: E402
from QHQGANLib.training.pairs import use_disk_cache  # noqa: E402

RUNS = Path(os.environ.get("QHQGAN_EVIDENCE_RUNS", Path(__file__).resolve().parents[2] / "runs" / "evidence"))

#: The methods compared, each a TrainConfig (same data, updates, batch, patch for all).
#: RED-CNN runs at width 32: the published 96 costs ~6.6 s per update on this 2-core CPU (said in BENCHMARKS.md).
METHODS: Dict[str, dict] = {
    "hqgan": dict(arch="hqgan"),
    "mlp-control": dict(arch="mlp-control"),               # the circuit replaced by an MLP of >= its width and parameters
    "no-circuit": dict(arch="no-circuit"),                 # the same network with the quantum block removed
    "redcnn-3slice": dict(arch="redcnn", redcnn_width=32, redcnn_context=1),           # HQGAN's input and loss
    "redcnn-1slice": dict(arch="redcnn", redcnn_width=32, redcnn_context=0),           # the published input
    "redcnn-mse": dict(arch="redcnn", redcnn_width=32, redcnn_context=0, loss="mse"),  # the published recipe (width cut)
    # issue #26 item 5: the circuit and its fair MLP control where their outputs modulate the features
    "hqgan-film": dict(arch="hqgan-film"),
    "mlp-control-film": dict(arch="mlp-control-film"),
}
#: Placement variants take their residual twin's tuned learning rate (a rule written before their first run,
#: 2026-12-07: both twins were tuned to 1e-3 with the same sweep, so the circuit and its control get the same
#: rate and neither gets a sweep of its own).
LR_OF_TWIN = {"hqgan-film": "hqgan", "mlp-control-film": "mlp-control"}
COMMON = dict(task="enhance", batch_size=16, patch_size=64, dose_range=(0.05, 0.5), pool_size=4,
              checkpoint_every=100, threads=1)
LR_CANDIDATES = (3e-3, 1e-3, 3e-4, 1e-4)
TUNE_STEPS = 300
#: 1,000 updates per run: 18 runs (6 methods x 3 seeds) at ~0.6-1.3 s per update on one core fit one
#: 3-hour CPU session on this 2-core machine (runs do not survive between sessions here); 3.3x the
#: tuning length. The same for every method.
TRAIN_STEPS = 1000
SEEDS = (0, 1, 2)
TUNE_DOSES = (0.25, 0.1)
#: The tuning results so far, committed: a fresh machine (no runs folder) continues from them.
TUNING_SNAPSHOT = Path(__file__).resolve().parent / "evidence_tuning.json"


def _config(method: str, **changes) -> TrainConfig:
    return TrainConfig(**{**COMMON, **METHODS[method], **changes})


def _tuning_score(model, tune) -> float:
    """Mean soft-tissue-window PSNR over the tuning patient's slices at the tuning doses."""
    rows = evaluate_enhancement({"m": model}, tune, doses=TUNE_DOSES, include_input=False, seed=4321)
    return float(sum(r["psnr_abdomen"] for r in rows) / len(rows))


def _load_json(path: Path) -> dict:
    if not path.exists() and path.name == "tuning.json" and TUNING_SNAPSHOT.exists():
        results = json.loads(TUNING_SNAPSHOT.read_text())  # a fresh machine: the committed results
    else:
        results = load_json(path)
    if path.name == "tuning.json":
        for method, twin in LR_OF_TWIN.items():
            if method not in results and "lr" in results.get(twin, {}):
                results[method] = {"lr": results[twin]["lr"], "inherited_from": twin}
    return results


def tuned_rates() -> Dict[str, float]:
    """Each tuned method's learning rate (the runs folder's tuning.json, else the committed snapshot)."""
    return {m: t["lr"] for m, t in _load_json(RUNS / "tuning.json").items() if "lr" in t}


def _update_tuning(path: Path, method: str, entry: dict) -> None:
    """Write one method's tuning result, keeping what other (parallel) tuning processes wrote."""
    results = _load_json(path)
    results[method] = entry
    save_json(path, results)


def widened_lr(scores: Dict[float, float], factor: float = math.sqrt(10)) -> Optional[float]:
    """The next learning rate to try when the best of ``scores`` (higher is better) sits at an edge of the
    sweep (one step of ``factor`` beyond it, within [1e-5, 1e-2]); None when the best is interior (issue #9)."""
    best, ordered = max(scores, key=scores.get), sorted(scores)
    if best == ordered[-1] and best < 1e-2:
        return best * factor
    if best == ordered[0] and best > 1e-5:
        return best / factor
    return None


def tune(methods: List[str]) -> None:
    """Learning-rate sweeps; several processes may tune different methods at once (one method each)."""
    split = {"train": load_split("train"), "tune": load_split("tune")}
    path = RUNS / "tuning.json"
    for method in methods:
        scores = {float(k): v for k, v in _load_json(path).get(method, {}).get("scores", {}).items()}
        candidates = list(LR_CANDIDATES)
        while True:
            for lr in candidates:
                if lr in scores:
                    continue
                run = RUNS / "tune" / method / f"lr{lr:g}"
                t0 = time.time()
                cfg = _config(method, lr=lr, steps=TUNE_STEPS, seed=0, output_dir=str(run), resume=True)
                model = train_enhancer(cfg, split["train"])
                scores[lr] = _tuning_score(model, split["tune"])
                print(f"{method} lr {lr:g}: tuning PSNR {scores[lr]:.3f} dB ({time.time() - t0:.0f} s)", flush=True)
                _update_tuning(path, method, {"scores": {str(k): v for k, v in sorted(scores.items())}})
            best, more = max(scores, key=scores.get), widened_lr(scores)
            if more is None:
                break
            candidates = [more]
        _update_tuning(path, method, {"scores": {str(k): v for k, v in sorted(scores.items())}, "lr": best})
        print(f"{method}: learning rate {best:g}", flush=True)


def train(methods: List[str], seeds: List[int], steps: int) -> None:
    tuning = _load_json(RUNS / "tuning.json")
    volumes = load_split("train")
    for seed in seeds:  # seed-major: every method gets seed 0 before any gets seed 1
        for method in methods:
            if "lr" not in tuning.get(method, {}):
                print(f"{method}: not tuned yet (run 'tune' first); skipped", flush=True)
                continue
            run = RUNS / method / f"seed{seed}"
            if trained_steps(run) >= steps or not claim(run):
                continue  # done (a run of fewer updates is extended exactly from its checkpoint)
            t0 = time.time()
            keep_budget(run)
            cfg = _config(method, lr=tuning[method]["lr"], steps=steps, seed=seed, output_dir=str(run), resume=True)
            model = train_enhancer(cfg, volumes, show_progress=False)
            card = {"name": f"{method}-seed{seed}", "task": "enhance", "method": method,
                    "training": {**cfg.to_dict(), "output_dir": None, "resume": None},
                    "training_data": "protocol.json: train split", "seconds_this_session": round(time.time() - t0)}
            save_model(model, run / "model", card, overwrite=True)
            (run / "worker.pid").unlink(missing_ok=True)
            print(f"{method} seed {seed}: trained ({time.time() - t0:.0f} s this session)", flush=True)


#: A longer budget is worth another extension while some method still gains this much (dB, mean over seeds)
#: on the tuning patient per extension (stated before the 3,000-update runs were scored).
CONVERGED_DB = 0.2


def converge(earlier: int, later: int) -> None:
    """Score every run's kept ``earlier``-update model and its ``later``-update model on the tuning patient
    (the data that chooses budgets; never the evaluation patients); write ``convergence-<later>.json``."""
    tune_volumes = load_split("tune")
    out: Dict[str, dict] = {}
    for method in METHODS:
        changes = []
        for seed in SEEDS:
            run = RUNS / method / f"seed{seed}"
            old, new = weights_of(run, earlier), weights_of(run, later)
            if trained_steps(run) != later or not old.exists():
                continue
            a, b = (_cached_tuning_score(path, tune_volumes) for path in (old, new))
            changes.append({"seed": seed, "earlier": a, "later": b, "change": b - a})
            print(f"{method} seed {seed}: tuning PSNR {a:.3f} -> {b:.3f} dB", flush=True)
        if changes:
            mean = sum(c["change"] for c in changes) / len(changes)
            out[method] = {"seeds": changes, "mean_change": mean, "still_gaining": mean >= CONVERGED_DB}
    save_json(RUNS / f"convergence-{later}.json", {"earlier": earlier, "later": later, "threshold_db": CONVERGED_DB,
                                                    "methods": out})
    print(convergence_table(RUNS / f"convergence-{later}.json"))


def _cached_tuning_score(weights: Path, tune_volumes) -> float:
    """``_tuning_score`` of the model in ``weights``, cached by its sha256 (``converge`` may run again as
    the runs finish)."""
    from QHQGANLib.nn.weights import load_model, sha256_of

    cache_path = RUNS / "tuning_score_cache.json"
    key = sha256_of(weights)
    cached = load_json(cache_path).get(key)
    if cached is None:
        cached = _tuning_score(load_model(str(weights), device="cpu"), tune_volumes)
        save_json(cache_path, {**load_json(cache_path), key: cached})  # read again: keep what others wrote meanwhile
    return cached


def convergence_table(path: Path) -> str:
    """The markdown table of a ``convergence-<later>.json``."""
    data = load_json(path)
    lines = [f"| method | seeds | tuning PSNR at {data['earlier']:,} (dB) | at {data['later']:,} | change | "
             f"still gaining (>= {data['threshold_db']} dB) |", "|---|---|---|---|---|---|"]
    for method, r in data["methods"].items():
        n = len(r["seeds"])
        a, b = (sum(s[k] for s in r["seeds"]) / n for k in ("earlier", "later"))
        spread = ", ".join(f"{s['change']:+.2f}" for s in r["seeds"])
        lines.append(f"| {method} | {n} | {a:.2f} | {b:.2f} | {r['mean_change']:+.2f} ({spread}) | "
                     f"{'yes' if r['still_gaining'] else 'no'} |")
    return "\n".join(lines)


#: The seed-0 run of these methods ships (``ship``): the names the panel and the CLI offer.
#: RED-CNN ships as its published recipe (one slice, MSE; width cut to 32), the baseline users know.
SHIPPED = {"hqgan": "hqgan-enhance", "mlp-control": "mlp-control-enhance", "no-circuit": "no-circuit-enhance",
           "redcnn-mse": "redcnn-enhance"}
DESCRIPTIONS = {
    "hqgan": "hybrid quantum-classical generator: classical encoder/decoder, an 8-qubit, 2-layer variational circuit "
             "(exact torch simulation of the PennyLane circuit) at every position of the 1/4-resolution feature "
             "map; L1 + SSIM + WGAN-GP patch critic",
    "mlp-control": "the HQGAN generator with its circuit replaced by a classical MLP of at least the circuit's "
                   "width and parameters (the fair classical control of issue #9)",
    "no-circuit": "the HQGAN generator with the quantum block removed (the second control of issue #9)",
    "redcnn-mse": "RED-CNN (Chen et al. 2017) with its published recipe: one slice in, MSE loss; width 32 "
                  "(published 96: ~6.6 s per update on this 2-core CPU)",
}

EXTRA_LIMITATIONS = {"redcnn-mse": "; at this budget (learning rate 1e-4, chosen on the tuning patient) it keeps a "
                                   "bias of about -5 to -6 HU in uniform soft tissue of the evaluation slices"}


def ship(out: Path) -> None:
    """Write the seed-0 model of each ``SHIPPED`` method, with its card, into ``out`` (Resources/Models)."""
    from QHQGANLib.training.provenance import training_data as _training_data
    from QHQGANLib.nn.weights import load_model

    tuning = _load_json(RUNS / "tuning.json")
    evaluation = _load_json(RUNS / "evaluation.json").get("rows", {})
    volumes = load_split("train")
    for method, name in SHIPPED.items():
        run = RUNS / method / "seed0"
        trained = json.loads((run / "model.json").read_text())
        model = load_model(str(run / "model.safetensors"), device="cpu")
        validation = [{"method": who, "condition": cond, "psnr_abdomen": round(sum(r[key]) / len(r[key]), 3),
                       "n_slices": len(r[key])}
                      for cond, r in evaluation.items() if f"{method} seed0" in r
                      for who, key in (("low-dose input", "input"), ("model", f"{method} seed0"))]
        card = {
            "name": name, "task": "enhance", "arch": METHODS[method]["arch"], "description": DESCRIPTIONS[method],
            "training_data": {"description": "the training patients of Testing/Benchmarks/protocol.json",
                              **_training_data(volumes)},
            "tuning_data": "the tuning patient of protocol.json (learning rate only)",
            "validation_data": "the evaluation patients of protocol.json, never trained or tuned on",
            "dose_range": list(COMMON["dose_range"]),
            "training": {**trained.get("training", {}), "seconds_this_session": trained.get("seconds_this_session")},
            "lr_sweep_tuning_psnr_abdomen": tuning.get(method, {}).get("scores"),
            "validation": validation,  # this seed on the evaluation patients; BENCHMARKS.md "evidence": all seeds
            "intended_use": "research on low-dose CT enhancement; not for diagnosis",
            "speed": _speed(run),
            "limitations": f"trained for {trained['training']['steps']:,} updates on three patients' CT (a CPU budget); "
                           "simulated low dose "
                           "(calibrated parallel-beam noise insertion), not real low-dose scans; on an independent "
                           "image-domain noise model it gains far less than BM3D with the noise spectrum "
                           "(BENCHMARKS.md 'evidence')" + EXTRA_LIMITATIONS.get(method, ""),
        }
        saved = save_model(model, out / name, card, overwrite=True)
        print(f"{name}: from {run} ({saved['sha256'][:12]})", flush=True)


def _speed(run: Path) -> dict:
    """Updates per second of the run's last training segment (a run extended over sessions: the last one's)."""
    summary = _load_json(run / "summary.json")
    if not summary.get("updates_per_second"):
        return {}
    import platform

    return {"updates_per_second": round(summary["updates_per_second"], 3), "device": summary.get("device", "cpu"),
            "threads": COMMON["threads"], "machine": platform.processor() or platform.machine()}


def snapshot() -> None:
    """Copy the tuning results into the repository (``evidence_tuning.json``), to commit."""
    save_json(TUNING_SNAPSHOT, _load_json(RUNS / "tuning.json"))
    print(f"wrote {TUNING_SNAPSHOT}")


def status() -> None:
    """Each method's learning rate and, per seed, the updates of its kept model and of its log
    (a run being extended holds its shorter model while its log grows)."""
    tuning = _load_json(RUNS / "tuning.json")
    for method in METHODS:
        t = tuning.get(method, {})
        seeds = []
        for s in SEEDS:
            run = RUNS / method / f"seed{s}"
            log = run / "losses.jsonl"
            logged = sum(1 for _ in open(log)) if log.exists() else 0
            kept = trained_steps(run)
            seeds.append(f"seed{s}: {kept}" + (f" (log at {logged})" if logged > kept else ""))
        print(f"{method:<15} lr {t.get('lr', '-')!s:<8} tuned on {len(t.get('scores', {}))} values; " + ", ".join(seeds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("tune", "train", "status", "snapshot", "ship", "converge"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--steps", type=int, default=TRAIN_STEPS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recon-filters", help="the simulator's reconstruction filters the training pairs draw from "
                    "(comma-separated, e.g. hann,hamming,cosine,shepp-logan,ram-lak: issue #26's realistic noise; "
                    "default hann alone, as the issue #9 runs)")
    ap.add_argument("--earlier", type=int, help="converge: the shorter budget kept beside each run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if args.recon_filters:
        COMMON["recon_filters"] = tuple(f for f in args.recon_filters.split(",") if f)
    if args.command in ("tune", "train", "converge"):
        # the queue's runs share their low-dose realisations (a pool of the training patients costs ~an hour
        # of simulation; resumed runs and parallel processes read it back); delete the folder when the
        # simulator changes
        use_disk_cache(RUNS / "simulations")
    if args.command == "tune":
        tune(methods)
    elif args.command == "train":
        train(methods, [int(s) for s in args.seeds.split(",")], args.steps)
    elif args.command == "converge":
        if not args.earlier:
            raise SystemExit("converge needs --earlier N (the kept shorter budget) and --steps M")
        converge(args.earlier, args.steps)
    elif args.command == "snapshot":
        snapshot()
    elif args.command == "ship":
        from QHQGANLib.core.resources import models_dir

        ship(models_dir())
    else:
        status()


if __name__ == "__main__":
    main()
