"""Circuit evaluations per second of QuantumLayer's circuit: torch backend vs PennyLane.

Methods (same circuit, outputs <Z_i>, float32 inputs):

* ``torch``: QuantumLayer(backend="torch"), the whole batch in one call.
* ``default.qubit broadcast``: the PennyLane QNode on default.qubit, backprop, the batch passed as
  one broadcast parameter (run on the full batch of 4096 for n <= 8; at n=10 on 512 samples, since
  the full batch needs 13-14 GB for fwd+bwd; batch 65,536 is not run).
* ``lightning.qubit``: the QNode on lightning.qubit, adjoint differentiation (PennyLane splits the
  batch into single circuits; measured on a few samples and reported as a rate).
* ``per-sample loop``: one default.qubit QNode call per sample, as published quantum-GAN code does
  (measured on a few samples, reported as a rate).

"fwd" is a forward pass under ``torch.no_grad()``; "fwd+bwd" is a forward pass and ``backward()``
giving gradients w.r.t. the inputs and the weights. Each figure is the median of ``--repeats``
timed runs after a warm-up.

Run (the script re-executes itself with the allocator settings below when they are missing)::

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 OMP_WAIT_POLICY=PASSIVE \\
        python Testing/Benchmarks/bench_quantum.py            # full table, writes BENCHMARKS.md
    python Testing/Benchmarks/bench_quantum.py --quick    # n=8, L=4, batch 4096 only, prints

glibc returning freed memory to the system made large batches 2-3.6x slower; OMP_WAIT_POLICY=PASSIVE
stops idle OpenMP threads from spinning on the two vCPUs.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
        "OMP_WAIT_POLICY": "PASSIVE"}

if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in _ENV.items()):
    if os.environ.get("_BENCH_QUANTUM_REEXEC") != "1":  # set once: never loop
        env = dict(os.environ, **_ENV, _BENCH_QUANTUM_REEXEC="1")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from QHQGANLib.quantum.layer import QuantumLayer  # noqa: E402

# samples used for the slow methods (rates; they do not depend on the batch)
SUB_BROADCAST = {6: 4096, 8: 4096, 10: 512}  # full batch 4096 where memory allows
SUB_LIGHTNING = {6: 96, 8: 48, 10: 16}
SUB_LOOP = {6: 48, 8: 32, 10: 16}
TORCH_MEM_BUDGET = 7 * 2**30  # bytes of saved state allowed for one torch fwd+bwd call


def _time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd(call, x):
    def run():
        with torch.no_grad():
            call(x)
    return run


def _fwd_bwd(call, layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        xx = x.detach().clone().requires_grad_(True)
        call(xx).sum().backward()
    return run


def _torch_bytes(n, n_layers, batch):
    """Rough memory of one torch-backend fwd+bwd (saved and temporary float32 states, ~4 per layer)."""
    return 4 * max(n_layers, 1) * batch * 2 ** (n + 1) * 4


def measure(method, n, n_layers, batch, reupload, repeats):
    """{'fwd': rate, 'fwdbwd': rate, 'note': str} for one configuration."""
    torch.manual_seed(0)
    layer = QuantumLayer(n, n_layers, reupload=reupload)
    note = ""
    if method == "torch":
        sub = batch
        while _torch_bytes(n, n_layers, sub) > TORCH_MEM_BUDGET:
            sub //= 2
        if sub < batch:
            note = f"fwd+bwd on {sub:,} (memory)"
        call = layer
        x_fwd = torch.rand(batch, n) * 3.1
        x_bwd = x_fwd[:sub]
    else:
        if method == "default.qubit broadcast":
            sub = min(SUB_BROADCAST[n], batch)
            layer.to_backend("pennylane", "default.qubit")
            call = layer
        elif method == "lightning.qubit":
            sub = SUB_LIGHTNING[n]
            layer.to_backend("pennylane", "lightning.qubit")
            call = layer
        elif method == "per-sample loop":
            sub = SUB_LOOP[n]
            layer.to_backend("pennylane", "default.qubit")
            qnode = layer.qnode()

            def call(x):
                return torch.stack([torch.stack(list(qnode(x[i], layer.weights))) for i in range(x.shape[0])])
        else:
            raise ValueError(method)
        note = "" if sub == batch else f"rate measured on {sub:,} samples"
        x_fwd = x_bwd = torch.rand(sub, n) * 3.1
    t_f = _time(_fwd(call, x_fwd), repeats)
    t_b = _time(_fwd_bwd(call, layer, x_bwd), repeats)
    return {"fwd": x_fwd.shape[0] / t_f, "fwdbwd": x_bwd.shape[0] / t_b, "note": note}


def _fmt(rate):
    if rate >= 1e6:
        return f"{rate / 1e6:.2f}M"
    if rate >= 1e4:
        return f"{rate / 1e3:.0f}k"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.0f}"


METHODS = ["torch", "default.qubit broadcast", "lightning.qubit", "per-sample loop"]


def run(configs, repeats, reupload_variants, log):
    """rows: (n, L, batch, reupload, method) -> result. Baselines measured once per (n, L, reupload)."""
    results = {}
    cache = {}
    for n, n_layers, batch in configs:
        for reupload in reupload_variants:
            for method in METHODS:
                if method == "default.qubit broadcast" and batch > 4096:
                    results[(n, n_layers, batch, reupload, method)] = None
                    continue
                key = (method, n, n_layers, reupload)
                if method != "torch" and key in cache:
                    res = cache[key]
                else:
                    t0 = time.perf_counter()
                    res = measure(method, n, n_layers, batch, reupload, repeats)
                    cache[key] = res
                    log(f"n={n:2d} L={n_layers} batch={batch:6d} reupload={reupload!s:5} {method:24s} "
                        f"fwd {_fmt(res['fwd']):>7s}/s  fwd+bwd {_fmt(res['fwdbwd']):>7s}/s  "
                        f"{res['note']}  ({time.perf_counter() - t0:.1f} s)")
                results[(n, n_layers, batch, reupload, method)] = res
    return results


def table(results, configs, reupload):
    lines = ["| n | L | batch | method | fwd /s | fwd+bwd /s | note |", "|---|---|---|---|---|---|---|"]
    for n, n_layers, batch in configs:
        for method in METHODS:
            res = results.get((n, n_layers, batch, reupload, method), "missing")
            if res == "missing":
                continue
            if res is None:
                lines.append(f"| {n} | {n_layers} | {batch:,} | {method} | not run | not run | "
                             f"memory (see above) |")
                continue
            lines.append(f"| {n} | {n_layers} | {batch:,} | {method} | {_fmt(res['fwd'])} | "
                         f"{_fmt(res['fwdbwd'])} | {res['note']} |")
    return "\n".join(lines)


def speedups(results, n=8, n_layers=4, batch=4096):
    lines = ["| reupload | vs | fwd speed-up | fwd+bwd speed-up |", "|---|---|---|---|"]
    for reupload in (True, False):
        t = results.get((n, n_layers, batch, reupload, "torch"))
        if not t:
            continue
        for base in ("per-sample loop", "default.qubit broadcast", "lightning.qubit"):
            b = results.get((n, n_layers, batch, reupload, base))
            if b:
                lines.append(f"| {reupload} | {base} | {t['fwd'] / b['fwd']:.0f}x | "
                             f"{t['fwdbwd'] / b['fwdbwd']:.0f}x |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only n=8, L=4, batch 4096 (about a minute)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    ap.add_argument("--write", action="store_true", help="write the section even with --quick")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    args = ap.parse_args(argv)

    headline = [(8, 4, 4096)]
    if args.quick:
        configs = headline
    else:
        configs = [(n, n_layers, batch) for n in (6, 8, 10) for n_layers in (2, 4, 8) for batch in (4096, 65536)]
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    log = lambda s: print(s, flush=True)  # noqa: E731
    results = run(configs, args.repeats, (True,), log)
    results.update(run(headline, args.repeats, (False,), log))
    elapsed = time.perf_counter() - t_start
    load_end = os.getloadavg()[0]

    body = "\n".join([
        "## Quantum layer: circuit evaluations per second",
        "",
        "`QuantumLayer` circuit (RY encoding, L x [re-uploaded RY(x), trainable RY, RZ on every qubit, CNOT ring]), "
        "outputs <Z_i>, float32, batch of random inputs; `fwd` = forward under no_grad, `fwd+bwd` = forward "
        "and backward with gradients w.r.t. inputs and weights. Median of "
        f"{args.repeats} runs after a warm-up. Command: `python Testing/Benchmarks/bench_quantum.py"
        f"{' --quick' if args.quick else ''}` (sets `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, "
        f"`OMP_WAIT_POLICY=PASSIVE` and re-executes itself); the run took {elapsed / 60:.1f} min. "
        f"1-min load average {load_start:.1f} at the start and {load_end:.1f} at the end (2 vCPUs; other "
        "jobs running on the machine slow every method, so compare rows of one run).",
        "",
        "default.qubit broadcasting runs on the whole batch of 4,096 for n <= 8 (on 512 samples at n=10, "
        "reported as a rate: the full batch needs 13-14 GB for fwd+bwd); at batch 65,536 it was not run, as "
        "it keeps every intermediate complex128 state of the whole batch. The per-sample loop and "
        "lightning.qubit (which splits a batch into single circuits) are measured on a few samples and "
        "given as a rate: their rate does not depend on the batch size, so one measurement per n and L "
        "serves both batch rows. Where the torch backend's fwd+bwd at batch 65,536 would need more than "
        "~7 GB, it is measured on a sub-batch (noted).",
        "",
        "Speed-ups of the torch backend at n=8, L=4, batch 4,096 (goal: >= 300x the per-sample loop and "
        ">= 30x default.qubit broadcasting):",
        "",
        speedups(results),
        "",
        "### With data re-uploading (the default)",
        "",
        table(results, configs, True),
        "",
        "### Without re-uploading (torch builds the data-independent unitary once per call)",
        "",
        table(results, headline, False),
    ])
    print("\n" + body)
    if (not args.quick or args.write) and not args.no_write:
        from report import write_section

        write_section("quantum", body)
        print("wrote the 'quantum' section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
