"""The shared training loop (progress, cancel, loss log, checkpoints, exact resume), device placement,
mixed precision and DDP of both trainers."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from QHQGANLib import read_volume
from QHQGANLib.core.progress import OperationCancelled
from QHQGANLib.training import loop as loop_module
from QHQGANLib.training.enhancement import TrainConfig, train_enhancer
from QHQGANLib.training.loop import resume_state, run_loop
from QHQGANLib.training.slices import training_slices
from QHQGANLib.training.synthesis import SynthConfig, train_synth


# ---------------------------------------------------------------------------
# the loop itself, with a toy step
# ---------------------------------------------------------------------------
class ToyStep:
    """Fits y = 3x with one weight; its noise comes from its own generator (part of its state)."""

    def __init__(self, seed: int = 0):
        self.w = torch.zeros(1)
        self.gen = torch.Generator().manual_seed(seed)
        self.steps_run: List[int] = []

    def train_step(self, step: int) -> Dict[str, float]:
        x = torch.rand(4, generator=self.gen)
        loss = float(((self.w * x - 3 * x) ** 2).mean())
        self.w += 0.5 * float(((3 - self.w) * x * x).mean())
        self.steps_run.append(step)
        return {"loss": loss}

    def state_dict(self):
        return {"w": self.w.clone(), "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.w = state["w"].clone()
        self.gen.set_state(state["gen"])


class ToyConfig:
    width = 1

    @staticmethod
    def to_dict():
        return {"width": 1}


def read_log(folder: Path) -> List[Dict]:
    return [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]


def spy_checkpoints(monkeypatch) -> List[int]:
    """The steps of the checkpoints the loop writes, in order."""
    written: List[int] = []
    real = loop_module.write_checkpoint

    def spy(path, state):
        written.append(int(state["step"]))
        real(path, state)

    monkeypatch.setattr(loop_module, "write_checkpoint", spy)
    return written


def test_progress_reaches_one_and_the_final_checkpoint_is_written_once(tmp_path, monkeypatch):
    written = spy_checkpoints(monkeypatch)
    seen = []
    run_loop(ToyStep(), 4, output_dir=str(tmp_path / "a"), checkpoint_every=2, config=ToyConfig.to_dict(),
             progress=lambda f, m: seen.append(f), progress_range=(0.1, 1.0))
    assert seen == sorted(seen) and seen[0] == pytest.approx(0.1 + 0.9 / 4) and seen[-1] == 1.0
    assert written == [2, 4]  # step 4 is periodic and final: written once
    run_loop(ToyStep(), 5, output_dir=str(tmp_path / "b"), checkpoint_every=2, config=ToyConfig.to_dict())
    assert written[2:] == [2, 4, 5]
    run_loop(ToyStep(), 3, output_dir=str(tmp_path / "c"), checkpoint_every=0, config=ToyConfig.to_dict())
    assert written[5:] == [3]
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["world_size"] == 1 and json.loads(state["config"]) == {"width": 1}
    assert [r["step"] for r in read_log(tmp_path / "c")] == [1, 2, 3]
    run_loop(ToyStep(), 3, checkpoint_every=1)  # no output folder: nothing written
    assert written[6:] == []


def test_cancel_before_the_first_step_writes_nothing(tmp_path):
    stop = threading.Event()
    stop.set()
    toy = ToyStep()
    with pytest.raises(OperationCancelled):
        run_loop(toy, 4, output_dir=str(tmp_path / "run"), checkpoint_every=1, cancel=stop)
    assert toy.steps_run == [] and not (tmp_path / "run").exists()


def test_cancel_stops_the_writing_and_resume_continues_the_log_and_the_run(tmp_path, monkeypatch):
    written = spy_checkpoints(monkeypatch)
    out = tmp_path / "run"
    stop = threading.Event()

    def progress(fraction, message):
        if message == "step 3/6":  # the user cancels while step 3 finishes
            stop.set()

    toy = ToyStep()
    with pytest.raises(OperationCancelled):
        run_loop(toy, 6, output_dir=str(out), checkpoint_every=1, config=ToyConfig.to_dict(), progress=progress,
                 cancel=stop)
    assert toy.steps_run == [0, 1, 2] and written == [1, 2]  # no checkpoint once cancel is set
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]  # step 3 ran, but is after the checkpoint

    state = resume_state(str(out), ToyConfig, ["width"], steps=6)
    resumed = ToyStep()
    resumed.load_state_dict(state)
    run_loop(resumed, 6, start=int(state["step"]), output_dir=str(out), checkpoint_every=1,
             config=ToyConfig.to_dict())
    assert resumed.steps_run == [2, 3, 4, 5]
    straight = ToyStep()
    run_loop(straight, 6, output_dir=str(tmp_path / "straight"), config=ToyConfig.to_dict())
    assert torch.equal(resumed.w, straight.w)
    # the log continues from the checkpoint: step 3 again (recomputed), not twice
    assert read_log(out) == read_log(tmp_path / "straight")


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        resume_state(str(tmp_path / "none"), ToyConfig, ["width"], steps=4)
    assert resume_state(str(tmp_path / "none"), ToyConfig, ["width"], steps=4, missing_ok=True) is None
    run_loop(ToyStep(), 4, output_dir=str(tmp_path / "run"), config={"width": 2})
    with pytest.raises(ValueError, match="width"):
        resume_state(str(tmp_path / "run"), ToyConfig, ["width"], steps=8)
    with pytest.raises(ValueError, match="beyond steps"):
        resume_state(str(tmp_path / "run"), ToyConfig, [], steps=2)
    with pytest.raises(ValueError, match="1 process.*this run has 2"):
        resume_state(str(tmp_path / "run"), ToyConfig, [], steps=8, world=2)


# ---------------------------------------------------------------------------
# device placement of the real trainers
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct():
    from pydicom.data import get_testdata_file

    return read_volume(get_testdata_file("CT_small.dcm"))


@pytest.fixture(scope="module")
def slices(ct):
    return training_slices([ct], 64)


def enhance_config(**kw) -> TrainConfig:
    base = dict(arch="hqgan", steps=2, batch_size=2, patch_size=32, width=4, n_qubits=3, n_layers=1, pool_size=1,
                refresh_every=0, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def synth_config(**kw) -> SynthConfig:
    base = dict(method="hqgan", steps=2, batch_size=4, width=8, n_qubits=4, n_layers=2, n_critic=1,
                diffaugment="translation,cutout")
    base.update(kw)
    return SynthConfig(**base)


@contextlib.contextmanager
def module_inputs():
    """Records (device, dtype) of every tensor going into, and coming out of, any module's forward."""
    inputs, outputs = [], []

    def before(module, args):
        inputs.extend((a.device, a.dtype) for a in args if isinstance(a, torch.Tensor))

    def after(module, args, out):
        if isinstance(out, torch.Tensor):
            outputs.append((type(module).__name__, out.device, out.dtype))

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        yield inputs, outputs
    finally:
        for h in handles:
            h.remove()


def same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def check_placement(train, device: str, tmp_path: Path):
    """Trains, and checks every network input, the parameters and the checkpoint's tensors."""
    with module_inputs() as (inputs, _):
        model = train(device, str(tmp_path))
    want = torch.device(device)
    assert inputs and all(same_device(d, want) for d, _ in inputs), {d for d, _ in inputs}
    assert all(same_device(p.device, want) for p in model.parameters())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    tensors = [v for v in _tensors(state)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    return model


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_cpu_training_places_every_batch_and_parameter_on_the_cpu(ct, slices, tmp_path):
    check_placement(lambda d, out: train_enhancer(enhance_config(device=d, output_dir=out), [ct]), "cpu",
                    tmp_path / "enhance")
    check_placement(lambda d, out: train_synth(synth_config(device=d, output_dir=out), slices=slices), "cpu",
                    tmp_path / "synth")


def test_training_convolves_in_channels_last_and_returns_nchw_networks(ct, slices):
    """Issue #16: both trainers keep networks and batches in ``loop.TRAINING_LAYOUT`` (NHWC) while
    training; the returned network is NCHW (plain contiguous weights) for saving and inference."""
    seen = []

    def record(module, args):
        # the synthesis decoder's first stage reshapes a flat vector to 4x4 and upsamples it to 8x8 in NCHW:
        # a tiny tensor, converted by the convolution; every larger input and every weight must be NHWC
        if isinstance(module, torch.nn.Conv2d) and module.training:
            seen.append(module.weight.is_contiguous(memory_format=torch.channels_last)
                        and (args[0].shape[-1] <= 8 or args[0].is_contiguous(memory_format=torch.channels_last)))

    from torch.nn.modules.module import register_module_forward_pre_hook

    handle = register_module_forward_pre_hook(record)
    try:
        models = [train_enhancer(enhance_config(), [ct]), train_synth(synth_config(), slices=slices)]
    finally:
        handle.remove()
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} training convolutions were not channels last"
    for model in models:
        weights = [p for p in model.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous() for p in weights)


def test_generator_updates_skip_the_critics_weight_gradients_and_train_the_same_generator(ct, slices, monkeypatch):
    """Issue #16: the generator update used to compute the critic's weight gradients, which the critic's
    optimiser then zeroed. With the critic frozen for that update each critic weight gets exactly one
    gradient per critic update, and the trained generator is the one the old update gave."""
    import QHQGANLib.training.enhancement as te
    import QHQGANLib.training.synthesis as ts
    from QHQGANLib.training.distributed import unwrap

    counts: List[int] = []

    def counting(base):
        class Counting(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.n_params = len(list(self.parameters()))
                for p in self.parameters():
                    p.register_hook(lambda g: counts.append(1))
        return Counting

    monkeypatch.setattr(te, "PatchCritic", counting(te.PatchCritic))
    monkeypatch.setattr(ts, "Critic", counting(ts.Critic))
    runs = [(lambda: train_enhancer(enhance_config(steps=3, critic_steps=2), [ct]), 2),
            (lambda: train_synth(synth_config(steps=3, n_critic=2), slices=slices), 2)]
    n_critic_params = [len(list(te.PatchCritic().parameters())), len(list(ts.Critic(64, 8).parameters()))]
    trained = []
    for (run, critic_steps), n in zip(runs, n_critic_params):
        counts.clear()
        torch.manual_seed(0)
        trained.append(run())
        assert len(counts) == 3 * critic_steps * n  # 3 updates x critic updates x weights, none from the generator's

    @contextlib.contextmanager
    def not_frozen(module):
        yield unwrap(module)

    monkeypatch.setattr(te, "frozen", not_frozen)
    monkeypatch.setattr(ts, "frozen", not_frozen)
    for (run, critic_steps), n, model in zip(runs, n_critic_params, trained):
        counts.clear()
        torch.manual_seed(0)
        before = run()
        assert len(counts) == 3 * (critic_steps + 1) * n  # the old update: one more per generator update
        for (name, a), b in zip(model.state_dict().items(), before.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=0, atol=1e-6), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error_before_any_work(ct, slices, tmp_path, device):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_enhancer(enhance_config(device=device, output_dir=str(tmp_path / "e")), [ct])
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_synth(synth_config(device=device, output_dir=str(tmp_path / "s")), volumes=[ct])
    assert not list(tmp_path.iterdir())  # nothing simulated, nothing written


def test_amp_on_the_cpu_runs_in_bfloat16(ct, slices, tmp_path):
    with module_inputs() as (_, outputs):
        train_enhancer(enhance_config(device="cpu", amp=True, output_dir=str(tmp_path / "e")), [ct])
        train_synth(synth_config(device="cpu", amp=True, output_dir=str(tmp_path / "s")), slices=slices)
    assert any(name == "Conv2d" and dtype == torch.bfloat16 for name, _, dtype in outputs)
    for folder in ("e", "s"):
        log = read_log(tmp_path / folder)
        assert len(log) == 2 and all(np.isfinite(v) for row in log for v in row.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_training_keeps_everything_on_the_gpu(ct, slices, tmp_path, amp):
    enhancer = check_placement(
        lambda d, out: train_enhancer(enhance_config(device=d, amp=amp, output_dir=out), [ct]), "cuda",
        tmp_path / "enhance")
    synth = check_placement(
        lambda d, out: train_synth(synth_config(device=d, amp=amp, output_dir=out), slices=slices), "cuda",
        tmp_path / "synth")
    assert next(enhancer.parameters()).is_cuda and next(synth.parameters()).is_cuda
    for folder in ("enhance", "synth"):
        assert all(np.isfinite(v) for row in read_log(tmp_path / folder) for v in row.values())
    # a CUDA run resumes exactly from its CPU-tensor checkpoint
    resumed = train_synth(synth_config(device="cuda", amp=amp, steps=3, output_dir=str(tmp_path / "synth"),
                                       resume=True), slices=slices)
    straight = train_synth(synth_config(device="cuda", amp=amp, steps=3, output_dir=str(tmp_path / "s3")),
                           slices=slices)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=key)  # GPU kernels need not be bit-exact


# ---------------------------------------------------------------------------
# DDP: two Gloo processes on the CPU
# ---------------------------------------------------------------------------
DDP_SCRIPT = """
import json, os, sys
import numpy as np, torch
from pydicom.data import get_testdata_file
from QHQGANLib import read_volume
from QHQGANLib.training.enhancement import TrainConfig, train_enhancer
from QHQGANLib.training.synthesis import SynthConfig, train_synth
from QHQGANLib.training.slices import training_slices

out, rank = sys.argv[1], int(os.environ["RANK"])
torch.set_num_threads(1)
ct = read_volume(get_testdata_file("CT_small.dcm"))
enh = dict(arch="hqgan", batch_size=2, patch_size=32, width=4, n_qubits=3, n_layers=1, pool_size=1,
           refresh_every=0, checkpoint_every=1, seed=2, device="cpu")
train_enhancer(TrainConfig(steps=2, output_dir=out + "/enhance", **enh), [ct])
resumed = train_enhancer(TrainConfig(steps=3, output_dir=out + "/enhance", resume=True, **enh), [ct])
straight = train_enhancer(TrainConfig(steps=3, output_dir=out + "/enhance-straight", **enh), [ct])
slices = training_slices([ct], 64)
synth = train_synth(SynthConfig(method="hqgan", steps=2, batch_size=2, width=4, n_qubits=3, n_layers=1,
                                n_critic=1, device="cpu", output_dir=out + "/synth"), slices=slices)
torch.save({"enhance": resumed.state_dict(), "enhance_straight": straight.state_dict(),
            "synth": synth.state_dict()}, f"{out}/rank{rank}.pt")
"""


def test_ddp_with_two_gloo_processes_keeps_the_ranks_identical_and_resumes_exactly(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TMPDIR=str(tmp_path))  # torchrun's files stay in tmp_path
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    checkpoint = torch.load(tmp_path / "enhance" / "checkpoint.pt", weights_only=True)
    synth_checkpoint = torch.load(tmp_path / "synth" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3 and checkpoint["world_size"] == 2
    for key, value in ranks[0]["enhance"].items():
        torch.testing.assert_close(ranks[1]["enhance"][key], value, rtol=0, atol=0, msg=key)  # DDP: in sync
        torch.testing.assert_close(checkpoint["model"][key], value, rtol=0, atol=0, msg=key)  # rank 0 wrote it
        torch.testing.assert_close(ranks[0]["enhance_straight"][key], value, rtol=0, atol=0, msg=key)  # resume
    for key, value in ranks[0]["synth"].items():  # the EMA generator
        torch.testing.assert_close(ranks[1]["synth"][key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(synth_checkpoint["ema"][key], value, rtol=0, atol=0, msg=key)
    # every rank draws its own patches and noise: the checkpoint keeps both ranks' streams
    numpy_states = json.loads(checkpoint["numpy_rng"])
    assert len(numpy_states) == 2 and numpy_states[0] != numpy_states[1]
    assert len(synth_checkpoint["torch_gen"]) == 2
    assert not torch.equal(synth_checkpoint["torch_gen"][0], synth_checkpoint["torch_gen"][1])
    # only rank 0 writes: one loss log line per step
    assert [r["step"] for r in read_log(tmp_path / "enhance")] == [1, 2, 3]


# ---------------------------------------------------------------------------
# the SSIM loss: torchmetrics' SSIM, computed with a separable window (issue #16)
# ---------------------------------------------------------------------------
def test_ssim_equals_torchmetrics_on_ct_patches_values_and_gradients():
    """On real CT patches and their simulated low-dose copies (and on unrelated patches, where SSIM is
    near 0), the separable SSIM equals torchmetrics' to float32 rounding, and so do its gradients."""
    from pydicom.data import get_testdata_file
    from torchmetrics.functional.image import structural_similarity_index_measure as reference

    from QHQGANLib.core.constants import HU_MAX, HU_MIN
    from QHQGANLib.physics.lowdose import simulate_low_dose
    from QHQGANLib.training.losses import ssim, ssim_loss

    normal = read_volume(get_testdata_file("CT_small.dcm"))
    low = simulate_low_dose(normal, 0.1, seed=0)
    scale = lambda v: (torch.from_numpy(v.array[0]).clamp(HU_MIN, HU_MAX) - HU_MIN) / (HU_MAX - HU_MIN)
    a_img, b_img = scale(low), scale(normal)
    corners = [(0, 0), (0, 64), (64, 0), (64, 64), (32, 32)]
    a = torch.stack([a_img[y:y + 64, x:x + 64] for y, x in corners])[:, None].double()
    b = torch.stack([b_img[y:y + 64, x:x + 64] for y, x in corners])[:, None].double()
    for pred, target in ((a, b), (a, b.flip(0)), (b, b)):
        pred = pred.clone().requires_grad_(True)
        mine, theirs = ssim(pred, target), reference(pred, target, data_range=1.0)
        assert abs(mine.item() - theirs.item()) < 1e-9, (mine.item(), theirs.item())
        g_mine, = torch.autograd.grad(mine, pred)
        g_theirs, = torch.autograd.grad(theirs, pred)
        assert torch.allclose(g_mine, g_theirs, rtol=1e-6, atol=1e-12)
    assert float(ssim(b, b)) == pytest.approx(1.0, abs=1e-12)
    # the loss in HU, float32 as in training: a low-dose patch is further from normal dose than itself
    hu_low, hu_normal = (torch.from_numpy(v.array[:, :64, :64]).float()[None] for v in (low, normal))
    assert float(ssim_loss(hu_normal, hu_normal)) == pytest.approx(0.0, abs=1e-6)
    assert float(ssim_loss(hu_low, hu_normal)) > 1e-3
