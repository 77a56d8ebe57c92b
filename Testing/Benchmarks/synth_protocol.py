"""Synthesis benchmark under the patient protocol (issue #10): tune, train, score once, report, ship.

Every compared method (``COMPARED``: HQGAN, its fair classical control, WGAN-GP, DCGAN) gets the
same training slices (``synth_data.py``: the training patients' abdomen volumes), the same tuning
budget and the same training budget:

1. ``tune``: every method trains the same ``GRID`` of designs (decoder stages, learning-rate scale)
   for ``--steps`` updates on seed 0; each is scored by its FRD against the **tuning patient**'s
   slices (never the evaluation patients); the lowest wins (``tuning.json``).
2. ``train``: every method trains its chosen design for ``--steps`` updates on each seed, with
   checkpoints and exact resume (a session may end at any time: run it again to continue; a larger
   ``--steps`` later extends the finished runs exactly, and each budget keeps its own scores); then
   200 samples are scored once on the **evaluation patients'** abdomen slices with
   ``evaluate_synthetic`` and, for a test with power, a C2ST against the training slices
   (``c2st_train``; read with the memorization check: copies would score low).
3. ``report``: the "synth" section of BENCHMARKS.md and its figure (``--steps 4000``: its own section,
   with every run scored at both budgets on the tuning patient and the one budget for every method chosen
   there); ``ship``: seed 0 of every method into Resources/Models with its card (``--steps``: that budget).

``--size 128`` runs the same protocol at 128x128 (runs under ``size128/``, section "synth-128",
models ``<name>-128``); without its own tuning runs it trains each method with the design chosen
at 64x64 (a choice still made on the tuning patient only, said in the report).

The runs are a queue that several processes can share (one per free core)::

    nohup python Testing/Benchmarks/synth_protocol.py tune  > runs/synth/tune-1.log 2>&1 &
    nohup python Testing/Benchmarks/synth_protocol.py train > runs/synth/train-1.log 2>&1 &
    python Testing/Benchmarks/synth_protocol.py status
    python Testing/Benchmarks/synth_protocol.py report
    python Testing/Benchmarks/synth_protocol.py ship
    nohup python Testing/Benchmarks/synth_protocol.py train --size 128 > runs/synth/train128-1.log 2>&1 &

Runs go to ``$QHQGAN_SYNTH_RUNS`` (default ``runs/synth`` in the checkout).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_synth import KEYS, _stack_rows, flat, ship  # noqa: E402
from report import write_section  # noqa: E402
from run_queue import claim, keep_budget, load_json, save_json, trained_steps, weights_of  # noqa: E402
from synth_data import DESCRIPTION, load_slices, pixel_spacing  # noqa: E402

from QHQGANLib.core.figures import save_panels_png  # noqa: E402
from QHQGANLib.metrics.c2st import c2st_accuracy  # noqa: E402
from QHQGANLib.metrics.synthetic import evaluate_synthetic  # noqa: E402
from QHQGANLib.nn.weights import load_model, save_model  # noqa: E402
from QHQGANLib.tasks.synthesize import synthesize  # noqa: E402
from QHQGANLib.nn.synthesis import MIXER_OF_METHOD  # noqa: E402
from QHQGANLib.training.synthesis import SynthConfig, _default_lrs, train_synth  # noqa: E402

RUNS = Path(os.environ.get("QHQGAN_SYNTH_RUNS", HERE.parents[1] / "runs" / "synth"))
COMPARED = ("hqgan", "mlp-control", "wgan-gp", "dcgan")
#: the designs every method is tuned over (same candidates, same length): decoder stages and a
#: scale on the method's published/default learning rates (generator and critic alike)
GRID: Dict[str, dict] = {
    "plain-lr1": dict(blocks="plain", lr_scale=1.0),
    "residual-lr1": dict(blocks="residual", lr_scale=1.0),
    "residual-lr2": dict(blocks="residual", lr_scale=2.0),
}
N_SAMPLES = 200


def runs_for(size: int) -> Path:
    return RUNS if size == 64 else RUNS / f"size{size}"


#: The training budget of the protocol's main table; a longer one (``train --steps 4000``: the same runs
#: continued exactly) is reported in its own section beside it.
DEFAULT_STEPS = 1000


def section_for(size: int, steps: int = DEFAULT_STEPS) -> str:
    """The BENCHMARKS.md section of a size and budget: 'synth', 'synth-128', 'synth-4000', 'synth-128-4000'."""
    return "synth" + ("" if size == 64 else f"-{size}") + ("" if steps == DEFAULT_STEPS else f"-{steps}")


def figure_for(size: int, steps: int = DEFAULT_STEPS) -> Path:
    return HERE.parents[1] / "Resources" / "Images" / f"benchmark-{section_for(size, steps)}.png"


def config(method: str, design: str, **changes) -> SynthConfig:
    """The SynthConfig of ``method`` under the design ``GRID[design]`` (4 circuit runs for slot methods)."""
    spec = GRID[design]
    lr_g, lr_d, _ = _default_lrs(method)
    return SynthConfig(method=method, blocks=spec["blocks"], lr_g=lr_g * spec["lr_scale"],
                       lr_d=lr_d * spec["lr_scale"], n_circuits=4 if method in MIXER_OF_METHOD else 1,
                       **changes)


def _train_run(run: Path, cfg: SynthConfig, train: np.ndarray):
    """Train to ``cfg.steps`` (resuming from ``run``'s checkpoint: a run trained for fewer updates is
    extended exactly) and keep the model; None when another process holds the run."""
    stored = trained_steps(run)
    if stored == cfg.steps:
        return load_model(run / "model.safetensors")
    if stored > cfg.steps:
        raise ValueError(f"{run} holds a model of {stored} updates, more than the {cfg.steps} asked for")
    if not claim(run):
        return None
    keep_budget(run)  # the shorter budget's model stays beside the run (model-<N>.safetensors), for `ship`
    cfg.output_dir, cfg.resume, cfg.checkpoint_every = str(run), (run / "checkpoint.pt").exists(), 200
    cfg.overwrite = not cfg.resume  # no checkpoint yet: a fresh start in the run folder (it holds the queue's claim)
    t0 = time.time()
    model = train_synth(cfg, slices=train, show_progress=False)
    card = {"name": run.name, "task": "synthesize", "training": {**cfg.to_dict(), "output_dir": None},
            "seconds_last_session": round(time.time() - t0), "training_seconds": model.training_seconds}
    save_model(model, run / "model", card, overwrite=True)
    (run / "worker.pid").unlink(missing_ok=True)
    return model


def _tuning_metrics(model, data: Dict[str, np.ndarray]) -> dict:
    """The score designs and budgets are chosen by: 200 samples (seed 999) against the tuning patient's slices."""
    samples = synthesize(model, N_SAMPLES, seed=999).array
    return evaluate_synthetic(samples, data["tune"], data["train"], seed=0, c2st=False)


def tune(methods: List[str], steps: int, size: int = 64) -> None:
    data = load_slices(size)
    for method in methods:
        for design in GRID:
            run = runs_for(size) / "tune" / method / design
            score_file = run / "score.json"
            if score_file.exists():
                continue
            model = _train_run(run, config(method, design, steps=steps, seed=0, size=size), data["train"])
            if model is None:
                continue
            metrics = _tuning_metrics(model, data)
            save_json(score_file, {"frd_tune": metrics["frd"], "kid_tune": metrics["kid_mean"], "steps": steps})
            print(f"tune {method} {design}: FRD {metrics['frd']:.2f} on the tuning patient", flush=True)


def tuning_root(size: int) -> Path:
    """Where ``size``'s tuning runs are: its own, else those at 64x64."""
    own = runs_for(size) / "tune"
    return own if own.exists() or size == 64 else runs_for(64) / "tune"


def chosen(size: int = 64) -> Dict[str, str]:
    """Each method's design with the lowest FRD on the tuning patient (only when its grid is complete)."""
    out = {}
    for method in COMPARED:
        scores = {d: load_json(tuning_root(size) / method / d / "score.json").get("frd_tune") for d in GRID}
        if all(v is not None for v in scores.values()):
            out[method] = min(scores, key=scores.get)
    return out


def train(methods: List[str], seeds: List[int], steps: int, size: int = 64) -> None:
    data = load_slices(size)
    designs = chosen(size)
    for seed in seeds:  # seed-major: every method gets seed 0 before any gets seed 1
        for method in methods:
            while method not in designs:  # another process is still tuning it
                print(f"{method}: waiting for its tuning runs", flush=True)
                time.sleep(60)
                designs = chosen(size)
            run = runs_for(size) / method / f"seed{seed}"
            if (run / f"metrics-{steps}.json").exists():
                continue
            cfg = config(method, designs[method], steps=steps, seed=seed, size=size)
            model = _train_run(run, cfg, data["train"])
            if model is None:
                continue
            samples = synthesize(model, N_SAMPLES, seed=1000 + seed).array
            # no C2ST against the 5 evaluation slices (too few for its folds): against the training slices
            metrics = evaluate_synthetic(samples, data["evaluation"], data["train"], seed=seed, c2st=False)
            c2st = c2st_accuracy(samples, data["train"], seed=seed, reference=True)
            row = {"method": method, "seed": seed, "design": designs[method], "steps": steps,
                   "seconds": float(getattr(model, "training_seconds", None) or model.card["training_seconds"]),
                   **flat(metrics),
                   "c2st_train": c2st["accuracy"], "c2st_train_ci95": c2st["ci95"],
                   "c2st_train_reference": c2st["reference"]["accuracy"],
                   "memorization_heldout_max": metrics["memorization_heldout_reference"]["max"]}
            np.savez_compressed(run / f"samples-{steps}.npz", samples=samples)
            save_json(run / f"metrics-{steps}.json", row)
            print(f"{method} seed {seed}: FRD {row['frd']:.2f}, C2ST vs training {row['c2st_train']:.3f}", flush=True)


def _rows(size: int = 64, steps: int = 1000) -> Dict[str, List[dict]]:
    out: Dict[str, List[dict]] = {}
    for method in COMPARED:
        for path in sorted((runs_for(size) / method).glob(f"seed*/metrics-{steps}.json")):
            out.setdefault(method, []).append(load_json(path))
    return out


def status(size: int = 64, steps: int = 1000) -> None:
    print("designs:", chosen(size))
    for method, rows in _rows(size, steps).items():
        print(method, [(r["seed"], round(r["frd"], 2), round(r["c2st_train"], 3)) for r in rows])


def _cell(values: List[float], digits: str = ".3g") -> str:
    v = np.asarray(values, dtype=float)
    return f"{np.mean(v):{digits}} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.2g}"


def report(steps: int, size: int = 64) -> None:
    data = load_slices(size)
    rows, designs, tuning = _rows(size, steps), chosen(size), tuning_root(size)
    tune_steps = load_json(tuning / COMPARED[0] / next(iter(GRID)) / "score.json").get("steps")
    tune_lines = ["| method | " + " | ".join(GRID) + " | chosen |", "|---|" + "---|" * (len(GRID) + 1)]
    for method in COMPARED:
        cells = [f"{load_json(tuning / method / d / 'score.json').get('frd_tune', float('nan')):.1f}" for d in GRID]
        tune_lines.append(f"| {method} | " + " | ".join(cells) + f" | {designs.get(method, '-')} |")
    keys = [("c2st_train", "C2ST vs training"), ("c2st_train_reference", "C2ST real vs real")] + KEYS
    table = ["| method | seeds | train s | " + " | ".join(label for _, label in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for method, rs in rows.items():
        cells = [str(len(rs)), f"{np.mean([r['seconds'] for r in rs]):.0f}"]
        cells += [_cell([r.get(k, np.nan) for r in rs]) for k, _ in keys]
        table.append(f"| {method} | " + " | ".join(cells) + " |")
    per_seed = ["| method | " + " | ".join(f"seed {s}" for s in (0, 1, 2)) + " |", "|---|---|---|---|"]
    for method, rs in rows.items():
        by_seed = {r["seed"]: r for r in rs}
        per_seed.append(f"| {method} | " + " | ".join(
            f"{by_seed[s]['c2st_train']:.3f} [{by_seed[s]['c2st_train_ci95'][0]:.2f}, "
            f"{by_seed[s]['c2st_train_ci95'][1]:.2f}]" if s in by_seed else "-" for s in (0, 1, 2)) + " |")
    reference = evaluate_synthetic(data["evaluation"], data["evaluation"], data["train"], seed=0, c2st=False)
    near = [r["memorization_mean"] for rs in rows.values() for r in rs]
    counts = sorted({len(rs) for rs in rows.values()})  # 3 when the queue is done; said as it is otherwise
    seeds_done = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]} (per method: column 'seeds')"
    lines = [
        f"## Synthetic CT ({size}x{size}) under the patient protocol: {', '.join(COMPARED)}; {steps} updates, "
        f"{seeds_done} seeds", "",
        f"Data: {DESCRIPTION}; {len(data['train'])} training slices, {len(data['tune'])} tuning slices, "
        f"{len(data['evaluation'])} evaluation slices. Every method: batch 32, {steps} generator updates per "
        "run, left-right flips, DiffAugment (translation), samples from an EMA (0.99) of the weights; WGAN-GP loss "
        "with 2 critic updates per generator update for all but DCGAN (BCE, 1 update, betas 0.5/0.999 as published). "
        "hqgan: an 8-qubit, 4-layer circuit run on 4 independent noise vectors per sample; mlp-control: an MLP of "
        "at least its width and parameters in its place; wgan-gp and dcgan: 100-d Gaussian noise.", "",
        f"**Tuning (same grid and length for every method, seed 0, {tune_steps} updates, FRD against the tuning "
        f"patient's slices; lower is better{'' if tuning.parent == runs_for(size) else '; run at 64x64, the designs carried to this size'}):**",
        "", *tune_lines, "",
        f"**Evaluation (once; mean +- sd over seeds; {N_SAMPLES} samples per run).** FRD, KID, precision/recall, "
        "density/coverage and HU W1 against the evaluation patients' abdomen slices; memorization against the "
        "training slices. C2ST vs training: cross-validated accuracy of a small CNN telling the samples from the "
        f"{len(data['train'])} training slices (balanced, 5 folds; 0.5 = indistinguishable); its reference is the "
        "same test between two random halves of the training slices. The C2ST against the evaluation slices themselves is not computed: 5 slices are too "
        "few for its folds.", "", *table, "",
        "C2ST vs training per seed (95 % Wilson interval):", "", *per_seed, "",
        f"Reference: the evaluation slices scored as if they were samples give FRD "
        f"{reference['frd_real_reference']:.4g} and KID {reference['kid_real_reference']:.4g} against the training "
        f"slices; their max SSIM to a training slice is {reference['memorization_heldout_reference']['max']:.3f} "
        "(a sample above that would be closer to a training slice than unseen real slices are) and their mean "
        f"nearest SSIM {reference['memorization_heldout_reference']['mean']:.3f}, against the samples' "
        f"{min(near):.3f}-{max(near):.3f} (mean per run): the samples sit closer to the training slices than unseen "
        "real slices do (they follow the training patients' outlines; no sample is a copy: share > 0.9 above).", ""]
    lines += _goals(rows, size)
    figure = _figure(data["evaluation"], rows, size, steps)
    lines += ["Figure: the evaluation slices (first row), then the first 5 samples of each method's seed-0 run "
              "(one row per method, in the table's order), window [-160, 240] HU.", "",
              f"![evaluation slices (first row) and seed-0 samples of each method]"
              f"({figure.relative_to(HERE.parents[1])})", ""]
    if steps != DEFAULT_STEPS:
        lines += _longer_training(size, steps, data)
    write_section(section_for(size, steps), "\n".join(lines))
    print("\n".join(lines))


#: Issue #10's C2ST goal per size (cross-validated accuracy; 0.5 = indistinguishable).
C2ST_GOAL = {64: 0.75, 128: 0.85}


def _goals(rows: Dict[str, List[dict]], size: int) -> List[str]:
    """Markdown: issue #10's goals against this table, and HQGAN against each other method over seeds
    (Welch's interval; a claim only where it excludes 0), written with the table so a rerun keeps them in step."""
    from QHQGANLib.metrics.statistics import seed_difference

    goal = C2ST_GOAL.get(size)
    c2st = {m: float(np.mean([r["c2st_train"] for r in rs])) for m, rs in rows.items()}
    met = [m for m, v in c2st.items() if goal is not None and v <= goal]
    parts = [f"C2ST <= {goal} met by " + (", ".join(met) if met else "**none**") + " (means: " +
             ", ".join(f"{m} {v:.3f}" for m, v in c2st.items()) + ")"]
    reference = "hqgan"
    for other in (m for m in rows if m != reference and reference in rows):
        for key, label, f in (("frd", "FRD", "+.1f"), ("c2st_train", "C2ST", "+.3f")):
            a, b = [r[key] for r in rows[reference]], [r[key] for r in rows[other]]
            if min(len(a), len(b)) < 2:
                parts.append(f"HQGAN vs {other} ({label}): fewer than 2 seeds on a side, not compared")
                break
            d = seed_difference(a, b, higher_is_better=False)
            who = {"A better": "HQGAN better", "B better": f"{other} better"}.get(d["verdict"], d["verdict"])
            parts.append(f"HQGAN - {other} {label} {d['mean_difference']:{f}} [{d['ci_low']:{f}}, "
                         f"{d['ci_high']:{f}}]: {who}")
    return ["**Against issue #10's goals, from this table** (HQGAN minus each method over seeds, Welch 95 % "
            "interval; lower FRD and C2ST are better): " + "; ".join(parts) + ".", ""]


def tuning_frd(run: Path, steps: int, data: Dict[str, np.ndarray]) -> Optional[float]:
    """FRD of ``run``'s ``steps``-update model against the **tuning patient** (the score its design was chosen
    by: the same samples' seed and count), cached in ``tune-frd-<steps>.json``; None without that model."""
    cache, weights = run / f"tune-frd-{steps}.json", weights_of(run, steps)
    if not cache.exists():
        if not weights.exists():
            return None
        save_json(cache, {"frd_tune": _tuning_metrics(load_model(weights), data)["frd"], "steps": steps})
    return float(load_json(cache)["frd_tune"])


def _longer_training(size: int, steps: int, data: Dict[str, np.ndarray]) -> List[str]:
    """Markdown: the same runs (method, seed) at the protocol's budget and at ``steps``, with the budget every
    method shares chosen on the tuning patient (the lower mean tuning FRD over all runs), not on this table."""
    before = {(r["method"], r["seed"]): r for rs in _rows(size, DEFAULT_STEPS).values() for r in rs}
    lines = [f"**The same runs at {DEFAULT_STEPS:,} and at {steps:,} updates** (continued exactly from their "
             "checkpoints; the same samples' seeds and metrics; the tuning-patient FRD is the score the designs "
             "were chosen by):", "",
             f"| method | seed | FRD on the tuning patient, {DEFAULT_STEPS:,} | {steps:,} | "
             f"C2ST vs training, {DEFAULT_STEPS:,} | {steps:,} | FRD, {DEFAULT_STEPS:,} | "
             f"{steps:,} | mean nearest SSIM to training, {DEFAULT_STEPS:,} | {steps:,} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    tuned = {DEFAULT_STEPS: [], steps: []}
    for rs in _rows(size, steps).values():
        for r in rs:
            b = before.get((r["method"], r["seed"]))
            if b is None:
                continue
            run = runs_for(size) / r["method"] / f"seed{r['seed']}"
            frd = {n: tuning_frd(run, n, data) for n in tuned}
            if None not in frd.values():
                for n in tuned:
                    tuned[n].append(frd[n])
            cells = " | ".join("-" if frd[n] is None else f"{frd[n]:.1f}" for n in tuned)
            lines.append(f"| {r['method']} | {r['seed']} | {cells} | {b['c2st_train']:.3f} | "
                         f"{r['c2st_train']:.3f} | {b['frd']:.1f} | {r['frd']:.1f} | {b['memorization_mean']:.3f} | "
                         f"{r['memorization_mean']:.3f} |")
    if tuned[steps]:
        mean = {n: float(np.mean(v)) for n, v in tuned.items()}
        pick = min(mean, key=mean.get)
        lines += ["", f"Budget on the tuning patient (mean FRD over the {len(tuned[steps])} runs scored at both): "
                  f"{DEFAULT_STEPS:,} updates {mean[DEFAULT_STEPS]:.1f}, {steps:,} updates {mean[steps]:.1f}; "
                  f"the shared budget chosen there is **{pick:,} updates** (one budget for every method)."]
    return lines + [""]


def _figure(real: np.ndarray, rows: Dict[str, List[dict]], size: int, steps: int) -> Path:
    figure = figure_for(size, steps)
    png_rows = [[(f"real {i + 1}", real[i]) for i in range(min(5, len(real)))]]
    for method in rows:
        samples = np.load(runs_for(size) / method / "seed0" / f"samples-{steps}.npz")["samples"]
        png_rows.append([(f"{method} {i + 1}", samples[i]) for i in range(5)])
    paths = []
    for index, row in enumerate(png_rows):
        paths.append(figure.with_name(f"{figure.stem}-{index}.png"))
        save_panels_png(row, paths[-1], window=(-160, 240), min_panel_size=256)
    _stack_rows(paths, figure)
    return figure


def ship_all(steps: int, size: int = 64) -> None:
    data: Dict[str, np.ndarray] = {}
    for method in COMPARED:
        metrics = load_json(runs_for(size) / method / "seed0" / f"metrics-{steps}.json")
        if not metrics:
            print(f"{method}: seed 0 not evaluated; not shipped")
            continue
        run = runs_for(size) / method / "seed0"
        weights = weights_of(run, steps)
        if not weights.exists():
            print(f"{method}: no {steps}-update model kept in {run}; not shipped")
            continue
        model = load_model(weights)
        cfg = config(method, metrics["design"], steps=steps, seed=0, size=size)
        scores = {k: metrics[k] for k in ("c2st_train", "c2st_train_ci95", "c2st_train_reference",
                                          "memorization_heldout_max") if k in metrics}
        extra = {
            "method": method, "design": metrics["design"],
            "validation_data": f"the evaluation patients' abdomen slices (synth_data.py), {N_SAMPLES} samples; "
                               "memorization and the C2ST against the training slices",
            "tuning": {d: load_json(tuning_root(size) / method / d / "score.json") for d in GRID},
            "validation_c2st": {**scores, "against": f"the {N_SAMPLES} samples vs the training slices (balanced)"},
            "results": f"BENCHMARKS.md section '{section_for(size, steps)}'" +
                       " (3 seeds; this is seed 0)",
            **pixel_spacing(size),  # the training crops' physical pixel size: synthesize() writes samples with it
            "limitations": "trained for " + str(steps) + " updates on a CPU core, not converged; samples are "
                           "abdomen-shaped body outlines with soft-tissue values, without spine, ribs, fat layer or "
                           "organs in their places, and a small CNN tells them from real slices (validation_c2st); "
                           "abdomen only, no conditioning on anatomy; every output is synthetic",
        }
        if steps != DEFAULT_STEPS:  # the card records both budgets' tuning FRD; `report` chooses over every run
            data = data or load_slices(size)
            extra["budget"] = {f"frd_tune_{n}": tuning_frd(run, n, data) for n in (DEFAULT_STEPS, steps)}
            extra["budget"]["chosen_on"] = (f"the tuning patient: mean FRD over every run scored at both budgets "
                                            f"(BENCHMARKS.md section '{section_for(size, steps)}')")
        card = ship(model, method, cfg, metrics["seconds"], metrics, extra)
        print(method, "shipped as", card.get("name"))


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("tune", "train", "status", "report", "ship"))
    ap.add_argument("--methods", nargs="+", default=list(COMPARED), choices=COMPARED)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help=f"updates (tune: 400, train: {DEFAULT_STEPS}; a larger "
                    "train budget continues the finished runs exactly and is reported in its own section)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64, choices=(64, 128))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "tune":
        tune(args.methods, args.steps or 400, args.size)
    elif args.command == "train":
        train(args.methods, args.seeds, args.steps or DEFAULT_STEPS, args.size)
    elif args.command == "status":
        status(args.size, args.steps or DEFAULT_STEPS)
    elif args.command == "report":
        report(args.steps or DEFAULT_STEPS, args.size)
    else:
        ship_all(args.steps or DEFAULT_STEPS, args.size)


if __name__ == "__main__":
    main()
