"""GPU figures (issue #16): a 512x512x300 volume enhanced and super-resolved, and training updates per second.

Run on a machine with a CUDA GPU (the project never needs one; this records what researchers get
on one). Everything in one short run, sized for a few minutes of GPU time:

1. ``enhance`` (hqgan-enhance, redcnn-enhance) and ``super_resolve`` (hqgan-sr2) of one
   512x512x300 volume (a real slice of ``../shared/data``, shifted per slice; CT_small tiled when
   the data are absent): wall time per volume with the default tiles, with larger tiles and
   batches, and with float16 autocast (the circuit keeps float32); the autocast result's largest
   difference from float32, in HU.
2. Training updates per second (median over the timed updates after a warm-up): HQGAN and RED-CNN
   enhancement with the evidence benchmark's settings, HQGAN synthesis at 64x64 and 128x128 with
   the synthesis benchmark's design, each in float32 and with AMP.
3. The quantum layer alone (8 qubits, re-uploading), circuit evaluations per second.

The device machine is not this one, so the section goes to a file first and is merged here (the
top of BENCHMARKS.md names the machine of the other sections; this section names its own)::

    python Testing/Benchmarks/bench_gpu.py --out gpu.md             # on the GPU machine
    python Testing/Benchmarks/bench_gpu.py --merge gpu.md           # here: into BENCHMARKS.md
    python Testing/Benchmarks/bench_gpu.py --device cpu --smoke     # tiny sizes: checks the script on a CPU
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTION = "gpu"
TITLE = "## On a GPU: a 512x512x300 volume and training updates per second (issue #16)"


def test_volume(n_slices: int, size: int, spacing_mm: float):
    """``n_slices`` real slices (PANCREAS_0001 rolled by a few pixels per slice) at ``size``^2."""
    from protocol import data_root

    from QHQGANLib import Volume, read_volume

    path = data_root() / "abdomen-ct-pancreas" / "PANCREAS_0001.dcm"
    if path.exists():
        ct = read_volume(path)
    else:
        from pydicom.data import get_testdata_file

        ct = read_volume(get_testdata_file("CT_small.dcm"))
        ct = Volume(np.tile(ct.array, (1, 4, 4)), ct.spacing, ct.origin, ct.direction)
    plane = ct.array[0, :size, :size]
    array = np.stack([np.roll(plane, 3 * (k % 50), axis=1) for k in range(n_slices)]).astype(np.float32)
    return Volume(array, (spacing_mm, spacing_mm, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device: torch.device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def bench_volume(volume, device: torch.device, log) -> List[str]:
    from QHQGANLib.nn.weights import load_model
    from QHQGANLib.tasks.enhance import enhance, super_resolve

    rows = ["| task | model | tiles (size x batch) | precision | s per volume | slices/s | max abs. diff. vs float32 (HU) |",
            "|---|---|---|---|---|---|---|"]
    jobs = [("enhance", "hqgan-enhance", enhance), ("enhance", "redcnn-enhance", enhance),
            ("super-resolve x2", "hqgan-sr2", super_resolve)]
    from QHQGANLib import Volume

    warm_volume = Volume(volume.array[:2].copy(), volume.spacing, volume.origin, volume.direction)
    for task, name, fn in jobs:
        net = load_model(name, device=str(device))
        reference = None
        for tile, batch, amp in ((256, 4, False), (512, 8, False), (512, 8, True)):
            tile = min(tile, volume.shape[1])
            autocast = torch.autocast(device.type, dtype=torch.float16) if amp and device.type == "cuda" else contextlib.nullcontext()

            def run(v=volume, net=net):
                with autocast:
                    return fn(v, model=net, device=str(device), tile_size=tile, tile_batch=batch)
            run(warm_volume)  # warm-up: kernels chosen, memory pooled
            seconds, out = timed(run, device)
            diff = "-" if reference is None else f"{np.abs(out.array - reference).max():.2f}"
            reference = out.array if reference is None else reference
            precision = "float16 autocast" if amp and device.type == "cuda" else "float32"
            rows.append(f"| {task} | {name} | {tile} x {batch} | {precision} | {seconds:.2f} | "
                        f"{volume.shape[0] / seconds:.1f} | {diff} |")
            log(rows[-1])
        del net
    return rows


def updates_per_second(make_trainer: Callable[[int], None], warm: int, timed_steps: int) -> float:
    """Median per-update rate of the updates after ``warm`` (the trainer reports every step)."""
    stamps: List[float] = []
    make_trainer(warm + timed_steps, lambda fraction, message: stamps.append(time.perf_counter()))
    gaps = np.diff(stamps[warm - 1:]) if warm > 0 else np.diff(stamps)
    return 1.0 / float(statistics.median(gaps))


def bench_training(device: torch.device, warm: int, steps: int, smoke: bool, log) -> List[str]:
    from evidence_train import COMMON, METHODS
    from synth_protocol import config as synth_config

    from QHQGANLib.training.enhancement import TrainConfig, train_enhancer
    from QHQGANLib.training.slices import training_slices
    from QHQGANLib.training.synthesis import train_synth

    ct = test_volume(6 if smoke else 12, 128 if smoke else 512, 0.86)
    rows = ["| training | precision | updates/s |", "|---|---|---|"]
    for amp in (False, True):
        precision = "AMP" if amp else "float32"
        for label, method in (("HQGAN enhancement (batch 16, 64x64 patches)", "hqgan"),
                              ("RED-CNN width 32, MSE (batch 16, 64x64 patches)", "redcnn-mse")):
            def train(n, progress, method=method):
                cfg = TrainConfig(**{**COMMON, **METHODS[method], "steps": n, "pool_size": 1, "refresh_every": 0,
                                     "threads": torch.get_num_threads(), "device": str(device), "amp": amp})
                train_enhancer(cfg, [ct], progress=progress)
            rows.append(f"| {label} | {precision} | {updates_per_second(train, warm, steps):.1f} |")
            log(rows[-1])
        for size in ((64,) if smoke else (64, 128)):
            slices = training_slices([ct], size, min_body_fraction=0.0)

            def train(n, progress, size=size, slices=slices):
                train_synth(synth_config("hqgan", "plain-lr1", steps=n, size=size, device=str(device), amp=amp),
                            slices=slices, progress=progress)
            rows.append(f"| HQGAN synthesis {size}x{size} (batch 32, 4 circuit runs, 2 critic steps) | {precision} | "
                        f"{updates_per_second(train, warm, steps):.1f} |")
            log(rows[-1])
    return rows


def bench_circuit(device: torch.device, batch: int, log) -> List[str]:
    from QHQGANLib.quantum.layer import QuantumLayer

    rows = ["| L | batch | fwd /s | fwd+bwd /s |", "|---|---|---|---|"]
    for n_layers in (2, 4):
        layer = QuantumLayer(8, n_layers, reupload=True).to(device)
        x = torch.rand(batch, 8, device=device, requires_grad=True)
        rates = []
        for backward in (False, True):
            def run():
                with torch.set_grad_enabled(backward):
                    out = layer(x)
                    if backward:
                        out.sum().backward()
            run()
            rates.append(batch / statistics.median(timed(run, device)[0] for _ in range(5)))
        rows.append(f"| {n_layers} | {batch:,} | {rates[0] / 1e3:.0f}k | {rates[1] / 1e3:.0f}k |")
        log(rows[-1])
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        card = "no GPU (CPU smoke run: the figures say nothing about a GPU)"
    return (f"Device: {card}; host {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
            f"torch {torch.__version__}, Python {platform.python_version()}; measured "
            f"{time.strftime('%Y-%m-%d %H:%M')} UTC.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (checks the script; figures meaningless)")
    ap.add_argument("--out", help="write the section's markdown to this file")
    ap.add_argument("--merge", help="a section file written by --out: put it into BENCHMARKS.md and stop")
    args = ap.parse_args(argv)
    if args.merge:
        from report import write_section

        write_section(SECTION, Path(args.merge).read_text())
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run this on a GPU machine (or --device cpu --smoke to check the script)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    volume = test_volume(4 if args.smoke else 300, 128 if args.smoke else 512, 1.6 if not args.smoke else 0.7)
    parts = [TITLE, "", machine(device), "",
             f"### One {volume.shape[2]}x{volume.shape[1]}x{volume.shape[0]} volume (`enhance` / `super_resolve`, "
             "after a 2-slice warm-up; the pixel size is set to 1.6 mm, inside hqgan-sr2's training range)", ""]
    parts += bench_volume(volume, device, log)
    parts += ["", "### Training, updates per second (median of the timed updates after a warm-up)", ""]
    parts += bench_training(device, 2 if args.smoke else 10, 3 if args.smoke else 30, args.smoke, log)
    parts += ["", "### Quantum layer, 8 qubits, re-uploading (circuit evaluations per second)", ""]
    parts += bench_circuit(device, 1024 if args.smoke else 65536, log)
    parts += ["", f"The run took {(time.perf_counter() - t0) / 60:.1f} min."]
    text = "\n".join(parts) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
