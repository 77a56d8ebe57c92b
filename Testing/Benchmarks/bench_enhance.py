"""Benchmark: low-dose enhancement and x2 super-resolution, every method side by side in one run.

Quality on the held-out validation slices (``enhance_data.py``) at 25 % and 10 % dose,
and on the head CT slice (other anatomy); throughput (median of 3 timed runs, a
512x512x4 slab, 2 threads) and peak RSS per method, each in a fresh process; a PNG of
the same slice for every method. Writes the "enhance" section of BENCHMARKS.md.

    python Testing/Benchmarks/bench_enhance.py            # needs the shipped models
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from enhance_data import load_split  # noqa: E402
from report import write_section  # noqa: E402

from QHQGANLib.tasks.classical import bm3d_denoise  # noqa: E402
from QHQGANLib.tasks.evaluate import evaluate_enhancement, evaluate_super_resolution  # noqa: E402
from QHQGANLib.core.figures import save_panels_png  # noqa: E402
from QHQGANLib.tasks.enhance import enhance  # noqa: E402
from QHQGANLib.physics.lowdose import simulate_low_dose  # noqa: E402
from QHQGANLib.nn.weights import list_models, load_model  # noqa: E402

FIGURE = HERE.parents[1] / "Resources" / "Images" / "benchmark-enhance.png"
ENHANCERS = ["hqgan-enhance", "mlp-control-enhance", "no-circuit-enhance", "redcnn-enhance"]
SR_MODELS = ["hqgan-sr2", "ablation-sr2"]

TIMING_SNIPPET = r"""
import json, resource, sys, time, numpy as np, torch
torch.set_num_threads(2)
from QHQGANLib import Volume
from QHQGANLib.tasks.enhance import enhance, super_resolve
from QHQGANLib.tasks.classical import bm3d_denoise
name, task = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
vol = Volume((rng.normal(40, 30, (4, 512, 512))).astype(np.float32), (0.8, 0.8, 2.0))
if name == "bm3d":
    run = lambda v: bm3d_denoise(Volume(v.array[:1], v.spacing))
    per = 1
else:
    from QHQGANLib.nn.weights import load_model
    model = load_model(name)
    run = (lambda v: enhance(v, model)) if task == "enhance" else (lambda v: super_resolve(v, 2, model=model))
    per = vol.shape[0]
    run(Volume(vol.array[:1], vol.spacing))  # warm-up
times = []
for _ in range(3):
    t = time.perf_counter(); run(vol); times.append((time.perf_counter() - t) / per)
print(json.dumps({"seconds_per_slice": float(np.median(times)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def timing(name: str, task: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", TIMING_SNIPPET, name, task], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(row: dict, keys) -> str:
    return " | ".join(f"{row[k]:.2f}" if k.startswith("psnr") or k == "noise_hu" else f"{row[k]:.4f}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-bm3d", action="store_true")
    args = ap.parse_args()
    available = {c["name"]: c for c in list_models()}
    enhancers = [m for m in ENHANCERS if m in available]
    srs = [m for m in SR_MODELS if m in available]
    split = load_split()
    methods = {name: load_model(name) for name in enhancers}
    if not args.skip_bm3d:
        methods["BM3D"] = bm3d_denoise
    keys = ["psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu"]
    lines = ["## Low-dose enhancement and x2 super-resolution", "",
             "The evaluation patients of `Testing/Benchmarks/protocol.json` (never trained or tuned on): dcmqi 99000 "
             "(3 slices), LCTSC-Test-S1-101 and PANCREAS_0001 (1 slice each); head: CQ500-CT-310. Low dose "
             "simulated with the calibrated `simulate_low_dose` (seeded), PSNR/SSIM against the normal-dose slice "
             "in the abdomen window [-160, 240] HU and the full range [-1024, 3071] HU; noise = mean local "
             "standard deviation (9x9) in uniform soft tissue. Models: the shipped weights (seed 0 of the evidence "
             "runs; their cards hold the training budget and the learning-rate sweep); BM3D blind (white noise, "
             "level from the image). Seeds, intervals and the independent noise model: section 'evidence'.", ""]
    quality = evaluate_enhancement(methods, split["validation"], doses=(0.25, 0.1))
    head = evaluate_enhancement(methods, split["head"], doses=(0.25,))
    timings = {name: timing(name, "enhance") for name in enhancers}
    if not args.skip_bm3d:
        timings["BM3D"] = timing("bm3d", "enhance")
    for title, rows in (("Chest and abdomen, evaluation patients", quality), ("Head CT (other anatomy), 25 % dose", head)):
        lines += [f"### {title}", "",
                  "| method | dose | PSNR abd (dB) | SSIM abd | PSNR full (dB) | SSIM full | noise (HU) |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            lines.append(f"| {row['method']} | {row['dose']:.0%} | {fmt(row, keys)} |")
        lines.append("")
    lines += ["### Speed (512x512 slices, 2 threads, median of 3 runs, each method in a fresh process)", "",
              "| method | s / slice | slices / s | peak RSS (MB) | parameters |", "|---|---|---|---|---|"]
    for name, t in timings.items():
        params = available.get(name, {}).get("n_parameters", "-")
        lines.append(f"| {name} | {t['seconds_per_slice']:.3f} | {1 / t['seconds_per_slice']:.2f} | "
                     f"{t['peak_rss_mb']:.0f} | {params if isinstance(params, str) else f'{params:,}'} |")
    lines.append("")

    if srs:
        sr_rows = evaluate_super_resolution({n: load_model(n) for n in srs}, split["validation"])
        lines += ["### x2 super-resolution (evaluation slices degraded with `degrade_resolution`)", "",
                  "| method | PSNR abd (dB) | SSIM abd | PSNR full (dB) | SSIM full | noise (HU) |",
                  "|---|---|---|---|---|---|"]
        for row in sr_rows:
            lines.append(f"| {row['method']} | {fmt(row, keys)} |")
        lines.append("")

    # the figure: one held-out slice, 25 % dose, every method
    normal = max(split["validation"], key=lambda v: v.shape[0])  # the series with neighbours (99000)
    k = normal.shape[0] // 2
    low = simulate_low_dose(normal, 0.25, seed=1234)
    panels = [("normal dose", normal.array[k]), ("25% dose", low.array[k])]
    for name, method in methods.items():
        out = method(low) if callable(method) and not hasattr(method, "state_dict") else enhance(low, method)
        panels.append((name, out.array[k]))
    crop = (slice(150, 406), slice(120, 376))
    save_panels_png([(t, a[crop]) for t, a in panels], FIGURE, window=(-160, 240), min_panel_size=256,
                    footer=f"evaluation patient {normal.metadata['protocol']['patient']}, slice {k}, 256x256 crop")
    lines += [f"![every method on the same evaluation slice at 25 % dose]({FIGURE.relative_to(HERE.parents[1])})", ""]
    write_section("enhance", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
