"""Where the time goes: the circuit, inference and one training update, previous vs current circuit code.

Measured in one run, in a plain process (no allocator or OpenMP environment variables), with
torch's default thread count:

1. The quantum layer (8 qubits, the shipped re-uploading circuits): circuit evaluations per second,
   forward and forward+backward, for the previous implementation (the layer-by-layer
   differentiable operations, still in the library as ``simulate_torch(method="autograd")``), the
   current one (the fused function of ``QHQGANLib/quantum/fused.py``) and PennyLane
   ``default.qubit`` with parameter broadcasting.
2. ``enhance`` through the public API on 512x512 slices with ``hqgan-enhance`` (previous vs
   current circuit) and ``redcnn-enhance``; the network's FLOPs per slice and this machine's
   float32 matrix-multiply rate measured in the same run give the floor.
3. One training update (enhancement, batch 16 of 64x64 patches, critic and gradient penalty
   included) of HQGAN and RED-CNN, and one HQGAN synthesis update, previous vs current code.
4. torch.profiler breakdowns (current code) of one 512x512 slice of inference and of one
   training update: circuit, convolutions, tiling, conversions, data loading.

Every figure is the median of ``--repeats`` runs after a warm-up, the variants interleaved so
that load from other processes hits them alike. Run::

    python Testing/Benchmarks/bench_profile.py             # writes the 'profile' section of BENCHMARKS.md
    python Testing/Benchmarks/bench_profile.py --quick     # fewer repeats, prints only
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from QHQGANLib.quantum import simulator  # noqa: E402
from QHQGANLib.quantum.layer import QuantumLayer  # noqa: E402


@contextlib.contextmanager
def circuit_code(which: str):
    """"current": the fused function and channels-last inference inputs; "previous": the layer-by-layer
    differentiable operations and NCHW inference inputs, as before."""
    if which == "current":
        yield
        return
    from QHQGANLib.tasks import inference
    from torchmetrics.functional.image import structural_similarity_index_measure

    from QHQGANLib.nn import enhancer
    from QHQGANLib.training import loop, losses

    fused, layout, ssim, train_layout = simulator.run_fused, inference._channels_last, losses.ssim, loop.TRAINING_LAYOUT
    concat = enhancer._conv_of_concat
    enhancer._conv_of_concat = lambda block, upsampled, skip: block(torch.cat([upsampled, skip], 1))  # as it was
    simulator.run_fused = lambda x, w, plan, reupload, outputs, differentiable: differentiable(x, w)
    inference._channels_last = lambda device: False
    losses.ssim = structural_similarity_index_measure  # the SSIM loss as it was: one 11x11 2-D window
    loop.TRAINING_LAYOUT = torch.contiguous_format     # training batches in NCHW, as they were
    try:
        yield
    finally:
        simulator.run_fused, inference._channels_last, losses.ssim = fused, layout, ssim
        loop.TRAINING_LAYOUT = train_layout
        enhancer._conv_of_concat = concat


@contextlib.contextmanager
def critic_weight_gradients(enhancement_module, synthesis_module, on: bool):
    """With ``on``: the trainers' generator updates run the critic unfrozen, as before issue #16's
    ``training.distributed.frozen`` (the same update, plus the critic's discarded weight gradients)."""
    if not on:
        yield
        return
    from QHQGANLib.training.distributed import unwrap

    @contextlib.contextmanager
    def not_frozen(module):
        yield unwrap(module)
    saved = enhancement_module.frozen, synthesis_module.frozen
    enhancement_module.frozen = synthesis_module.frozen = not_frozen
    try:
        yield
    finally:
        enhancement_module.frozen, synthesis_module.frozen = saved


class ExtraForward(torch.nn.Module):
    """The generator as the earlier update used it: one more forward (no gradient) for the critic's
    fake batch before the forward that the generator's loss uses (same output, one forward's cost)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if torch.is_grad_enabled():
            with torch.no_grad():
                self.net(x)
        return self.net(x)


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs kept busy by other processes over ``seconds`` (from /proc/stat, while this one sleeps);
    the load average would count this benchmark's own threads. NaN where /proc/stat is missing."""
    def totals():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # all, idle + iowait
    try:
        all0, idle0 = totals()
        time.sleep(seconds)
        all1, idle1 = totals()
    except OSError:
        return float("nan")
    return (1.0 - (idle1 - idle0) / max(1, all1 - all0)) * (os.cpu_count() or 1)


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, the variants run in turn after one warm-up each."""
    times = {name: [] for name in fns}
    for name, (code, fn) in fns.items():
        with circuit_code(code):
            fn()
    for _ in range(repeats):
        for name, (code, fn) in fns.items():
            gc.collect()
            with circuit_code(code):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1e3:.0f}k" if rate >= 1e4 else (f"{rate / 1e3:.1f}k" if rate >= 1e3 else f"{rate:.0f}")


# --------------------------------------------------------------------------------------------
# 1. the quantum layer
# --------------------------------------------------------------------------------------------
def bench_circuit(repeats: int, log) -> list:
    rows = []
    for n_layers, batch, with_pl in ((2, 4096, True), (4, 4096, True), (2, 24336, False)):
        torch.manual_seed(0)
        layer = QuantumLayer(8, n_layers)
        x = torch.rand(batch, 8) * 3.1
        pl = QuantumLayer(8, n_layers, backend="pennylane")
        pl.load_state_dict(layer.state_dict())

        def fwd(net):
            def run():
                with torch.no_grad():
                    net(x)
            return run

        def fwd_bwd(net):
            def run():
                net.zero_grad(set_to_none=True)
                net(x.clone().requires_grad_(True)).sum().backward()
            return run

        fns = {"previous fwd": ("previous", fwd(layer)), "current fwd": ("current", fwd(layer)),
               "previous fwd+bwd": ("previous", fwd_bwd(layer)), "current fwd+bwd": ("current", fwd_bwd(layer))}
        if with_pl:
            fns.update({"default.qubit fwd": ("current", fwd(pl)), "default.qubit fwd+bwd": ("current", fwd_bwd(pl))})
        t = interleaved(fns, repeats)
        rate = {k: batch / v for k, v in t.items()}
        row = {"L": n_layers, "batch": batch, **rate}
        rows.append(row)
        log(f"circuit L={n_layers} batch={batch}: " + ", ".join(f"{k} {_fmt_rate(v)}/s" for k, v in rate.items()))
    return rows


# --------------------------------------------------------------------------------------------
# 2. inference
# --------------------------------------------------------------------------------------------
def real_volume(n_slices: int = 4):
    """A real 512x512 abdomen slice (PANCREAS_0001 from ../shared/data) and shifted copies
    (neighbours that differ); pydicom's 128x128 CT_small tiled to 512x512 if the data are absent."""
    from protocol import data_root

    from QHQGANLib import Volume, read_volume

    path = data_root() / "abdomen-ct-pancreas" / "PANCREAS_0001.dcm"
    if path.exists():
        ct, what = read_volume(path), "PANCREAS_0001 (512x512)"
    else:
        from pydicom.data import get_testdata_file

        ct = read_volume(get_testdata_file("CT_small.dcm"))
        ct = Volume(np.tile(ct.array, (1, 4, 4)), ct.spacing, ct.origin, ct.direction)
        what = "CT_small tiled to 512x512"
    array = np.concatenate([np.roll(ct.array, 7 * k, axis=2) for k in range(n_slices)])
    return Volume(array, ct.spacing, ct.origin, ct.direction), what


def matmul_rate(repeats: int) -> float:
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    t = interleaved({"mm": ("current", lambda: a @ b)}, max(repeats, 5))["mm"]
    return 2 * 2048**3 / t


def network_flops(net, window: int) -> float:
    """FLOPs of one forward pass on a (1, slices, window, window) input (matrix products and
    convolutions, as torch's FlopCounterMode counts them; the circuit run on the calling thread)."""
    from torch.utils.flop_counter import FlopCounterMode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the circuit's chunks then run on this thread, where the counter sees them
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, getattr(net, "in_slices", 1), window, window))
    finally:
        torch.set_num_threads(threads)
    return float(counter.get_total_flops())


def bench_inference(volume, repeats: int, log) -> dict:
    from QHQGANLib.nn.weights import load_model
    from QHQGANLib.tasks.enhance import enhance
    from QHQGANLib.tasks.inference import receptive_radius

    # loaded once (enhance("name") loads the model on every call); the current code's weights
    # channels-last, as run_model converts a model it loads by name
    nets = {name: load_model(name, device="cpu") for name in ("hqgan-enhance", "redcnn-enhance")}
    fast = {name: copy.deepcopy(net).to(memory_format=torch.channels_last) for name, net in nets.items()}
    nz = volume.shape[0]
    fns = {"hqgan previous": ("previous", lambda: enhance(volume, nets["hqgan-enhance"])),
           "hqgan current": ("current", lambda: enhance(volume, fast["hqgan-enhance"])),
           "redcnn previous": ("previous", lambda: enhance(volume, nets["redcnn-enhance"])),
           "redcnn": ("current", lambda: enhance(volume, fast["redcnn-enhance"]))}
    per_slice = {k: v / nz for k, v in interleaved(fns, repeats).items()}
    rate = matmul_rate(repeats)
    info = {"per_slice": per_slice, "gflops_mm": rate / 1e9, "slices": nz}
    for name, net in nets.items():
        margin = -(-receptive_radius(net) // 4) * 4
        window = 512 + 2 * margin
        info[name] = {"window": window, "gflop": network_flops(net, window) / 1e9}
    log("inference per slice: " + ", ".join(f"{k} {v:.3f} s" for k, v in per_slice.items())
        + f"; matmul {rate / 1e9:.0f} GFLOP/s; " + ", ".join(f"{k} {v['gflop']:.2f} GFLOP" for k, v in info.items()
                                                            if isinstance(v, dict) and "gflop" in v))
    return info


# --------------------------------------------------------------------------------------------
# 3. training
# --------------------------------------------------------------------------------------------
def enhancer_step(arch: str, volume, current: bool = True):
    """One enhancement trainer; ``current``: its networks in the training layout (channels last),
    else NCHW as before."""
    from QHQGANLib.nn.critics import PatchCritic
    from QHQGANLib.training.enhancement import EnhancerStep, TrainConfig, build_model, model_context
    from QHQGANLib.training.loop import in_training_layout
    from QHQGANLib.training.pairs import PairPool

    cfg = TrainConfig(arch=arch, pool_size=1, refresh_every=0, redcnn_width=32)
    torch.manual_seed(0)
    model, critic = build_model(cfg), PatchCritic()
    if current:
        model, critic = in_training_layout(model), in_training_layout(critic)
    pool = PairPool([volume], cfg, model_context(model), [0, 0])
    step = EnhancerStep(cfg, model, critic, pool, np.random.default_rng(0), torch.device("cpu"))
    batch = pool.batch

    def labelled(n):
        with torch.profiler.record_function("qhqgan.data"):
            return batch(n)
    pool.batch = labelled
    return step


def synth_step(volume, current: bool):
    """One HQGAN synthesis trainer (the default SynthConfig: 64x64, batch 32, 4 circuit runs, 2 critic
    steps with gradient penalty) on slices of ``volume``; ``current``: channels last, else NCHW."""
    from QHQGANLib.nn.critics import Critic
    from QHQGANLib.nn.synthesis import SynthGenerator, hu_to_unit
    from QHQGANLib.training.loop import in_training_layout
    from QHQGANLib.training.slices import training_slices
    from QHQGANLib.training.synthesis import SynthConfig, SynthStep

    cfg = SynthConfig(method="hqgan")
    torch.manual_seed(0)
    gen = SynthGenerator(cfg.method, cfg.size, cfg.n_qubits, cfg.n_layers, cfg.latent_dim, cfg.width,
                         n_circuits=cfg.n_circuits)
    critic = Critic(cfg.size, cfg.width)
    data = torch.from_numpy(hu_to_unit(training_slices([volume], cfg.size, min_body_fraction=0.0)))[:, None].float()
    if current:
        gen, critic, data = in_training_layout(gen), in_training_layout(critic), in_training_layout(data)
    return SynthStep(cfg, data, gen, critic, torch.device("cpu"))


def bench_training(volume, repeats: int, log) -> dict:
    steps = {"hqgan": enhancer_step("hqgan", volume), "redcnn": enhancer_step("redcnn", volume)}
    steps["hqgan previous"] = enhancer_step("hqgan", volume, current=False)
    steps["hqgan previous"].gen_train = ExtraForward(steps["hqgan previous"].gen_train)
    steps["redcnn previous"] = enhancer_step("redcnn", volume, current=False)
    steps["redcnn previous"].gen_train = ExtraForward(steps["redcnn previous"].gen_train)
    steps["synth previous"], steps["synth current"] = synth_step(volume, False), synth_step(volume, True)
    counter = {"k": 0}
    import QHQGANLib.training.enhancement as enhancement_module
    import QHQGANLib.training.synthesis as synthesis_module

    def update(name):
        def run():
            # previous: the generator update also computed the critic's weight gradients (then zeroed)
            with critic_weight_gradients(enhancement_module, synthesis_module, "previous" in name):
                steps[name].train_step(counter["k"])
            counter["k"] += 1
        return run
    # single updates interleaved, 4x the repeats: an update takes about a second and the load
    # from other processes changes faster than that
    t = interleaved({"hqgan previous": ("previous", update("hqgan previous")), "hqgan current": ("current", update("hqgan")),
                     "redcnn previous": ("previous", update("redcnn previous")),
                     "redcnn": ("current", update("redcnn")),
                     "synth previous": ("previous", update("synth previous")),
                     "synth current": ("current", update("synth current"))}, 4 * repeats)
    ups = {k: 1 / v for k, v in t.items()}
    log("training updates/s: " + ", ".join(f"{k} {v:.2f}" for k, v in ups.items()))
    return {"ups": ups, "steps": steps}


def goals_paragraph(circ: list, ps: dict, floor: float, prof_inf: dict, ups: dict) -> str:
    """Issue #16's goals against this run's figures, met or not (written with the tables, so a rerun
    keeps the reading in step with the numbers)."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    parts = []
    for r in circ:
        if "default.qubit fwd" in r:
            f, fb = r["current fwd"] / r["default.qubit fwd"], r["current fwd+bwd"] / r["default.qubit fwd+bwd"]
            parts.append(f"circuit L={r['L']}: {f:.0f}x / {fb:.0f}x `default.qubit` forward / forward+backward "
                         f"(goal >= 30x both: {verdict(min(f, fb) >= 30)})")
    x_floor = ps["hqgan current"] / floor
    parts.append(f"`enhance` with `hqgan-enhance` {ps['hqgan current']:.2f} s per slice, {x_floor:.1f}x the FLOP "
                 f"floor (goal <= 2x: {verdict(x_floor <= 2)})")
    total = prof_inf["one 512x512 slice, enhance() wall time"]
    network = total - prof_inf.get("tiling (windows, padding, batch buffer)", 0) - prof_inf.get("output (to numpy, "
                                                                                               "scatter)", 0)
    share = prof_inf.get("circuit forward", 0) / network
    parts.append(f"the circuit {100 * share:.0f} % of the network's time (goal <= 40 %: {verdict(share <= 0.4)})")
    for label, cur, prev in (("HQGAN enhancement training", "hqgan current", "hqgan previous"),
                             ("HQGAN synthesis training", "synth current", "synth previous")):
        ratio = ups[cur] / ups[prev]
        parts.append(f"{label} {ratio:.2f}x the updates per second of the code as filed (goal >= 2x: "
                     f"{verdict(ratio >= 2)})")
    return ("**Against issue #16's goals, in this run:** " + "; ".join(parts) + ". The circuit rows vary from run "
            "to run by up to ~2x at batch 4,096; synthesis training is mostly the critic's convolutions and the "
            "gradient penalty's double backward, which the circuit work does not touch.")


# --------------------------------------------------------------------------------------------
# 4. profiles
# --------------------------------------------------------------------------------------------
def _sum(events, names) -> float:
    return sum(e.cpu_time_total for e in events if e.name in names) / 1e6  # seconds


def profile_breakdown(fn, total_label: str) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    ev = [e for e in prof.events() if e.thread == prof.events()[0].thread] if prof.events() else []
    out = {
        "circuit forward": _sum(ev, {"qhqgan.circuit"}),
        "circuit backward": _sum(ev, {"_FusedCircuitBackward"}),
        "convolutions forward": _sum(ev, {"aten::conv2d", "aten::conv_transpose2d"}),
        "convolutions backward": _sum(ev, {"ConvolutionBackward0"}),
        "tiling (windows, padding, batch buffer)": _sum(ev, {"qhqgan.tiles"}),
        "output (to numpy, scatter)": _sum(ev, {"qhqgan.output"}),
        "dtype/device conversions (aten::to, outside the circuit)": _sum(ev, {"aten::to"}),
        "data loading (training patches)": _sum(ev, {"qhqgan.data"}),
        "optimizer steps": sum(e.cpu_time_total for e in ev if e.name.startswith("Optimizer.step")) / 1e6,
    }
    out = {k: v for k, v in out.items() if v > 0}
    out[total_label] = wall
    return out


def breakdown_table(parts: dict, total_label: str) -> str:
    total = parts[total_label]
    lines = ["| part | s | share |", "|---|---|---|"]
    named = 0.0
    for k, v in parts.items():
        if k == total_label:
            continue
        if not k.startswith("dtype"):
            named += v
        lines.append(f"| {k} | {v:.3f} | {100 * v / total:.0f} % |")
    lines.append(f"| everything else (activations, additions, resampling, Python, ...) | {max(total - named, 0):.3f} | "
                 f"{100 * max(total - named, 0) / total:.0f} % |")
    lines.append(f"| **{total_label}** | **{total:.3f}** | 100 % |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 repeats, print only")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    log = lambda s: print(s, flush=True)  # noqa: E731
    busy0, t_start = busy_cpus(), time.perf_counter()
    volume, what = real_volume()
    circ = bench_circuit(repeats, log)
    inf = bench_inference(volume, repeats, log)
    train = bench_training(volume, repeats, log)
    from QHQGANLib.nn.weights import load_model
    from QHQGANLib.tasks.enhance import enhance

    net = load_model("hqgan-enhance", device="cpu").to(memory_format=torch.channels_last)
    one = type(volume)(volume.array[:1], volume.spacing, volume.origin, volume.direction)
    prof_inf = profile_breakdown(lambda: enhance(one, net), "one 512x512 slice, enhance() wall time")
    step = train["steps"]["hqgan"]
    prof_train = profile_breakdown(lambda: step.train_step(10_000), "one HQGAN training update, wall time")
    busy1, minutes = busy_cpus(), (time.perf_counter() - t_start) / 60
    print(prof_inf, prof_train)

    ps = inf["per_slice"]
    floor = inf["hqgan-enhance"]["gflop"] / inf["gflops_mm"]
    circuit_rows = ["| L | batch | code | fwd /s | fwd+bwd /s |", "|---|---|---|---|---|"]
    for r in circ:
        for code in ("previous", "current", "default.qubit"):
            if f"{code} fwd" in r:
                circuit_rows.append(f"| {r['L']} | {r['batch']:,} | {code} | {_fmt_rate(r[f'{code} fwd'])} | "
                                    f"{_fmt_rate(r[f'{code} fwd+bwd'])} |")
    ratio_rows = ["| L | batch | current / previous fwd | fwd+bwd | current / default.qubit fwd | fwd+bwd |",
                  "|---|---|---|---|---|---|"]
    for r in circ:
        pl = (f"{r['current fwd'] / r['default.qubit fwd']:.1f}x | {r['current fwd+bwd'] / r['default.qubit fwd+bwd']:.1f}x"
              if "default.qubit fwd" in r else "not run | not run")
        ratio_rows.append(f"| {r['L']} | {r['batch']:,} | {r['current fwd'] / r['previous fwd']:.2f}x | "
                          f"{r['current fwd+bwd'] / r['previous fwd+bwd']:.2f}x | {pl} |")
    ups = train["ups"]
    train_rows = ["| model | updates/s | vs previous code |", "|---|---|---|",
                  f"| HQGAN enhancement, previous code | {ups['hqgan previous']:.2f} | |",
                  f"| HQGAN enhancement, current | {ups['hqgan current']:.2f} | "
                  f"{ups['hqgan current'] / ups['hqgan previous']:.2f}x |",
                  f"| RED-CNN (width 32, 1 slice), previous code | {ups['redcnn previous']:.2f} | |",
                  f"| RED-CNN (width 32, 1 slice), current | {ups['redcnn']:.2f} | "
                  f"{ups['redcnn'] / ups['redcnn previous']:.2f}x |"]
    train_rows += ["| HQGAN synthesis (64x64, batch 32, 4 circuit runs, 2 critic steps), previous code | "
                   f"{ups['synth previous']:.2f} | |",
                   f"| HQGAN synthesis, current | {ups['synth current']:.2f} | "
                   f"{ups['synth current'] / ups['synth previous']:.2f}x |"]
    body = "\n".join([
        "## Profile: circuit, inference and training, previous vs current circuit code",
        "",
        f"Command: `python Testing/Benchmarks/bench_profile.py` (plain process, no environment variables, "
        f"torch threads {torch.get_num_threads()}). Medians of {repeats} runs after a warm-up, variants "
        f"interleaved. Other processes kept {busy0:.1f} of the {os.cpu_count()} vCPUs busy in the second before the "
        f"run and {busy1:.1f} in the second after it" + (" (**loaded**: absolute times are slower and noisier than on "
                                                         "an idle machine; compare rows of this run only)"
                                                         if max(busy0, busy1) > 0.3 else " (a quiet machine)") + ". "
        f"The run took {minutes:.1f} min. \"previous\" is the layer-by-layer differentiable simulation the torch "
        "backend used before the fused function (still `simulate_torch(method=\"autograd\")`) and, for inference, "
        "NCHW inputs and weights and the decoder's skip features concatenated before their convolution; \"current\" "
        "the fused function (`QHQGANLib/quantum/fused.py`), channels-last inference (`tasks/inference.py`) and the "
        "convolution of the concatenation as two convolutions (`nn/enhancer._conv_of_concat`; both use the in-place "
        "activations now). Both give the same numbers (circuit: 1e-12 in float64; enhance() with "
        "the shipped weights: at most 2e-4 HU apart). For training, \"previous\" also has the update as it was "
        "before issue #16's training work: torchmetrics' SSIM (an 11x11 2-D window; now two 1-D passes, equal to "
        "1e-9), a separate generator forward for the critic's fake batch (now one forward serves both, "
        "bit-identical weights), NCHW networks and batches (now channels last, `training/loop.TRAINING_LAYOUT`) "
        "and a generator update that also computed the critic's weight gradients, which were then zeroed (now the "
        "critic is frozen for it, `training/distributed.frozen`: the same generator update).",
        "",
        "### Quantum layer, 8 qubits, re-uploading (circuit evaluations per second)",
        "",
        "\n".join(circuit_rows),
        "",
        "\n".join(ratio_rows),
        "",
        f"### enhance() on 512x512 slices ({what}, {inf['slices']} slices, default tiles)",
        "",
        "| model | s per slice | GFLOP per slice (network) | x floor |",
        "|---|---|---|---|",
        f"| hqgan-enhance, previous circuit code | {ps['hqgan previous']:.3f} | {inf['hqgan-enhance']['gflop']:.1f} | "
        f"{ps['hqgan previous'] / floor:.1f}x |",
        f"| hqgan-enhance, current | {ps['hqgan current']:.3f} | {inf['hqgan-enhance']['gflop']:.1f} | "
        f"{ps['hqgan current'] / floor:.1f}x |",
        f"| redcnn-enhance, previous (NCHW) | {ps['redcnn previous']:.3f} | {inf['redcnn-enhance']['gflop']:.1f} | "
        f"{ps['redcnn previous'] / (inf['redcnn-enhance']['gflop'] / inf['gflops_mm']):.1f}x |",
        f"| redcnn-enhance, current (channels-last) | {ps['redcnn']:.3f} | {inf['redcnn-enhance']['gflop']:.1f} | "
        f"{ps['redcnn'] / (inf['redcnn-enhance']['gflop'] / inf['gflops_mm']):.1f}x |",
        "",
        f"Floor = the network's FLOPs (convolutions and matrix products, torch's FlopCounterMode, on the "
        f"{inf['hqgan-enhance']['window']}x{inf['hqgan-enhance']['window']} window of one tile) / the float32 "
        f"matrix-multiply rate measured in this run ({inf['gflops_mm']:.0f} GFLOP/s, 2048x2048). "
        f"hqgan-enhance current / previous: {ps['hqgan previous'] / ps['hqgan current']:.2f}x faster.",
        "",
        f"### Training (enhancement: batch 16 of 64x64 patches, one critic step with gradient penalty; medians of "
        f"{4 * repeats} single updates, interleaved)",
        "",
        "\n".join(train_rows),
        "",
        "### torch.profiler breakdown, current code",
        "",
        "CPU time of the labelled regions and operators on the calling thread (the circuit's worker threads "
        "are inside \"circuit\"); conversions overlap the other rows.",
        "",
        breakdown_table(prof_inf, "one 512x512 slice, enhance() wall time"),
        "",
        breakdown_table(prof_train, "one HQGAN training update, wall time"),
        "",
        goals_paragraph(circ, ps, floor, prof_inf, ups),
    ])
    print("\n" + body)
    if not args.quick and not args.no_write:
        from report import write_section

        write_section("profile", body)
        print("wrote the 'profile' section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
