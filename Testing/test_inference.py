"""Tiled inference with batched tiles (``tile_batch``), and the compute device of inference and synthesis.

Batching tiles must not change the result: the tiles of a slice (and of consecutive slices)
all have the same window size, so several go through the network in one forward pass and
their cores are scattered back exactly where one-tile-at-a-time inference puts them.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from QHQGANLib import Volume, read_volume
from QHQGANLib.core.progress import OperationCancelled
from QHQGANLib.nn.weights import load_model
from QHQGANLib.tasks.enhance import enhance, super_resolve
from QHQGANLib.tasks.inference import receptive_radius, run_model
from QHQGANLib.tasks.synthesize import synthesize

#: HU. Batched convolutions may round differently from single ones (measured: at most
#: 1.2e-4 HU, one float32 ulp near 1000 HU, for the hybrid models; 0 for RED-CNN and SR).
SAME_HU = 1e-3


@pytest.fixture(scope="module")
def ct3() -> Volume:
    """Three different real 128x128 slices (CT_small, shifted and mirrored): neighbours differ."""
    from pydicom.data import get_testdata_file

    ct = read_volume(get_testdata_file("CT_small.dcm"))
    array = np.concatenate([ct.array, np.roll(ct.array, 9, axis=2), ct.array[:, ::-1]])
    return Volume(array, ct.spacing, ct.origin, ct.direction)


@pytest.fixture(scope="module")
def enhancer():
    return load_model("hqgan-enhance", device="cpu")


@pytest.fixture(scope="module")
def sr_model():
    return load_model("hqgan-sr2", device="cpu")


class BatchRecorder:
    """Records the batch size of every forward pass of ``net`` (a forward pre-hook)."""

    def __init__(self, net):
        receptive_radius(net)  # measured (once, on a copy of the net) before the hook is attached
        self.sizes = []
        self.handle = net.register_forward_pre_hook(lambda module, args: self.sizes.append(args[0].shape[0]))

    def close(self) -> None:
        self.handle.remove()


@pytest.mark.parametrize("which", ["enhance", "super-resolve"])
def test_tile_batch_does_not_change_the_result(ct3, enhancer, sr_model, which):
    net, scale = (enhancer, 1) if which == "enhance" else (sr_model, 2)
    # 128x128 in 48-pixel cores: 3x3 = 9 tiles a slice, 27 tiles in all
    single = run_model(ct3, net, tile_size=48, tile_batch=1)
    assert single.shape == (3, 128 * scale, 128 * scale)
    # the model does something: the output is not the (upsampled) input
    upsampled = ct3.array.repeat(scale, 1).repeat(scale, 2)
    assert float(np.abs(single - upsampled).mean()) > 1.0
    whole = run_model(ct3, net, tile_size=128, tile_batch=1)  # one tile a slice
    np.testing.assert_allclose(single, whole, rtol=0, atol=SAME_HU)
    recorder = BatchRecorder(net)
    try:
        for tile_batch, sizes in ((3, [3] * 9), (8, [8, 8, 8, 3]), (64, [27])):
            recorder.sizes.clear()
            batched = run_model(ct3, net, tile_size=48, tile_batch=tile_batch)
            # tiles of consecutive slices share a batch (8 does not divide 9 tiles a slice)
            assert recorder.sizes == sizes, tile_batch
            np.testing.assert_allclose(batched, single, rtol=0, atol=SAME_HU, err_msg=f"tile_batch={tile_batch}")
    finally:
        recorder.close()


def test_tile_batch_passes_through_enhance_and_super_resolve(ct3, enhancer, sr_model):
    recorder = BatchRecorder(enhancer)
    try:
        a = enhance(ct3, enhancer, tile_size=48, tile_batch=5)
        assert recorder.sizes == [5] * 5 + [2]
    finally:
        recorder.close()
    b = enhance(ct3, enhancer, tile_size=48, tile_batch=1)
    np.testing.assert_allclose(a.array, b.array, rtol=0, atol=SAME_HU)
    recorder = BatchRecorder(sr_model)
    try:
        c = super_resolve(ct3, 2, model=sr_model, tile_size=48, tile_batch=9)
        assert recorder.sizes == [9, 9, 9]
    finally:
        recorder.close()
    d = super_resolve(ct3, 2, model=sr_model, tile_size=48, tile_batch=1)
    np.testing.assert_allclose(c.array, d.array, rtol=0, atol=SAME_HU)
    assert c.same_geometry(d)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, None])
def test_tile_batch_must_be_a_positive_integer(ct3, enhancer, bad):
    with pytest.raises(ValueError, match="tile_batch"):
        run_model(ct3, enhancer, tile_size=48, tile_batch=bad)
    with pytest.raises(ValueError, match="tile_batch"):
        enhance(ct3, enhancer, tile_batch=bad)


def test_cancel_before_the_first_batch_runs_nothing(ct3, enhancer):
    stop = threading.Event()
    stop.set()
    seen = []
    recorder = BatchRecorder(enhancer)
    try:
        with pytest.raises(OperationCancelled):
            enhance(ct3, enhancer, tile_size=48, tile_batch=4, progress=lambda f, m: seen.append(f), cancel=stop)
    finally:
        recorder.close()
    assert recorder.sizes == []  # the network never ran
    assert seen == [0.0]  # only the start was reported


def test_cancel_stops_at_the_next_batch(ct3, enhancer):
    stop = threading.Event()
    seen = []

    def progress(fraction, message):
        seen.append(fraction)
        if fraction > 0.3:
            stop.set()

    with pytest.raises(OperationCancelled):
        run_model(ct3, enhancer, tile_size=48, tile_batch=4, progress=progress, cancel=stop)
    # batches of 4 of 27 tiles: 4/27, 8/27, then 12/27 > 0.3 sets the cancel; no later batch ran
    assert seen == pytest.approx([0.0, 4 / 27, 8 / 27, 12 / 27])


@pytest.mark.parametrize("tile_batch", [1, 4, 10])
def test_progress_rises_per_batch_to_one(ct3, enhancer, tile_batch):
    seen = []
    run_model(ct3, enhancer, tile_size=48, tile_batch=tile_batch, progress=lambda f, m: seen.append(f))
    n_batches = -(-27 // tile_batch)
    assert len(seen) == n_batches + 1  # the start, then once per batch
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b > a for a, b in zip(seen, seen[1:]))
    expected = [min(27, (i + 1) * tile_batch) / 27 for i in range(n_batches)]
    assert seen[1:] == pytest.approx(expected)


# ---------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------
def test_synthesize_on_cpu_equals_the_default_device_without_cuda():
    cpu = synthesize("hqgan-synth", n=6, seed=3, device="cpu")
    assert cpu.shape == (6, 64, 64)
    other = synthesize("hqgan-synth", n=6, seed=4, device="cpu")
    assert float(np.abs(cpu.array - other.array).mean()) > 10.0  # the seed matters
    np.testing.assert_array_equal(synthesize("hqgan-synth", n=6, seed=3, device="cpu").array, cpu.array)
    if torch.cuda.is_available():
        pytest.skip("the default device is CUDA here; test_cuda_matches_cpu compares the devices")
    np.testing.assert_array_equal(synthesize("hqgan-synth", n=6, seed=3).array, cpu.array)
    np.testing.assert_array_equal(synthesize("hqgan-synth", n=6, seed=3, device="auto").array, cpu.array)


def test_synthesize_moves_a_given_model_to_the_device():
    model = load_model("dcgan-synth", device="cuda" if torch.cuda.is_available() else "cpu")
    a = synthesize(model, n=3, seed=1, device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    np.testing.assert_array_equal(a.array, synthesize("dcgan-synth", n=3, seed=1, device="cpu").array)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_cuda_is_a_clear_error(ct3, enhancer):
    with pytest.raises(ValueError, match="CUDA"):
        synthesize("hqgan-synth", n=2, device="cuda")
    with pytest.raises(ValueError, match="CUDA"):
        enhance(ct3, enhancer, device="cuda")


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device"):
        synthesize("hqgan-synth", n=2, device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(ct3):
    """The same models on the GPU give the CPU's result within float error (1 HU)."""
    for name, run in (("hqgan-enhance", lambda v, m, d: enhance(v, m, device=d, tile_size=48)),
                      ("redcnn-enhance", lambda v, m, d: enhance(v, m, device=d, tile_size=48)),
                      ("hqgan-sr2", lambda v, m, d: super_resolve(v, 2, model=m, device=d, tile_size=48))):
        cpu = run(ct3, name, "cpu").array
        gpu = run(ct3, name, "cuda").array
        assert np.abs(gpu - cpu).max() < 1.0, name
    for name in ("hqgan-synth", "dcgan-synth"):
        cpu = synthesize(name, n=8, seed=2, device="cpu").array
        gpu = synthesize(name, n=8, seed=2, device="cuda").array
        default = synthesize(name, n=8, seed=2).array  # CUDA by default when there is one
        np.testing.assert_allclose(default, gpu, rtol=0, atol=1e-3)
        assert np.abs(gpu - cpu).max() < 1.0, name  # HU, float rounding only: samples span ~2000 HU


def test_channels_last_and_circuit_worker_threads_keep_the_result(ct3, enhancer, monkeypatch):
    """A model loaded by name runs channels-last (weights and inputs) and the circuit's chunks run on
    worker threads under inference mode: the same result as the plain model on one thread."""
    from QHQGANLib.quantum import fused

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plain = run_model(ct3, enhancer, device="cpu", tile_size=64)
        monkeypatch.setattr(fused, "_CPU_CHUNK_ELEMS", 2**14)  # 16 samples per chunk at 8 qubits: many chunks
        torch.set_num_threads(2)
        by_name = run_model(ct3, "hqgan-enhance", device="cpu", tile_size=64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(by_name, plain, rtol=0, atol=SAME_HU)
