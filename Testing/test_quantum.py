"""QuantumLayer: the torch simulation must be the PennyLane circuit, outputs and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from QHQGANLib.quantum.layer import QuantumLayer
from QHQGANLib.quantum.circuit import circuit_ops
from QHQGANLib.quantum.simulator import simulate_torch

pytest.importorskip("pennylane")

CASES = [(2, 1), (3, 2), (4, 3), (5, 2)]


def _outputs_and_grads(layer: QuantumLayer, x: torch.Tensor, coef: torch.Tensor):
    """Outputs and d(sum(coef * out))/d(inputs, weights)."""
    layer.zero_grad()
    xx = x.clone().requires_grad_(True)
    out = layer(xx)
    (out * coef).sum().backward()
    return out.detach(), xx.grad.detach(), layer.weights.grad.detach().clone()


def _compare(n, n_layers, reupload, outputs, dtype, batch=6, tol=1e-5, seed=0):
    torch.manual_seed(seed)
    layer = QuantumLayer(n, n_layers, outputs=outputs, reupload=reupload)
    if dtype == torch.float64:
        layer = layer.double()
    x = (torch.rand(batch, n, dtype=dtype) * 2 - 1) * math.pi
    coef = torch.randn(batch, layer.output_dim, dtype=dtype)
    fast = _outputs_and_grads(layer.to_backend("torch"), x, coef)
    ref = _outputs_and_grads(layer.to_backend("pennylane"), x, coef)
    layer.to_backend("torch")
    for name, a, b in zip(("outputs", "d/dinputs", "d/dweights"), fast, ref):
        assert a.dtype == dtype and a.shape == b.shape, name
        err = (a - b).abs().max().item()
        assert err < tol, f"{name}: max |torch - pennylane| = {err:.2e}"


@pytest.mark.parametrize("outputs", ["expval", "probs"])
@pytest.mark.parametrize("reupload", [True, False])
@pytest.mark.parametrize("n,n_layers", CASES)
def test_backends_agree_float64(n, n_layers, reupload, outputs):
    _compare(n, n_layers, reupload, outputs, torch.float64, tol=1e-10)


@pytest.mark.parametrize("outputs", ["expval", "probs"])
@pytest.mark.parametrize("reupload", [True, False])
@pytest.mark.parametrize("n,n_layers", [(3, 2), (5, 2)])
def test_backends_agree_float32(n, n_layers, reupload, outputs):
    _compare(n, n_layers, reupload, outputs, torch.float32, tol=1e-5)


@pytest.mark.parametrize("outputs", ["expval", "probs"])
def test_dense_and_layer_paths_agree_with_pennylane(outputs):
    """Without re-uploading and batch >= 2^n the torch backend builds one unitary; check both paths."""
    torch.manual_seed(3)
    n, n_layers, batch = 4, 3, 20
    layer = QuantumLayer(n, n_layers, outputs=outputs, reupload=False).double()
    x = torch.rand(batch, n, dtype=torch.float64) * 6
    coef = torch.randn(batch, layer.output_dim, dtype=torch.float64)
    ref = _outputs_and_grads(layer.to_backend("pennylane"), x, coef)
    for method in ("dense", "layers"):
        xx = x.clone().requires_grad_(True)
        w = layer.weights.detach().clone().requires_grad_(True)
        out = simulate_torch(xx, w, n, n_layers, reupload=False, outputs=outputs, method=method)
        (out * coef).sum().backward()
        for a, b in zip((out.detach(), xx.grad, w.grad), ref):
            assert (a - b).abs().max().item() < 1e-10, method


def test_probabilities_and_expectations_are_physical():
    torch.manual_seed(1)
    x = torch.rand(64, 5) * 10 - 5
    probs = QuantumLayer(5, 3, outputs="probs")(x)
    assert probs.shape == (64, 32)
    assert torch.all(probs >= -1e-7)
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-5)
    z = QuantumLayer(5, 3)(x)
    assert z.shape == (64, 5) and torch.all(z.abs() <= 1 + 1e-6)


def test_analytic_cases():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).unsqueeze(-1)
    # one qubit, no layers: <Z> = cos x, p = (cos^2 x/2, sin^2 x/2)
    assert torch.allclose(QuantumLayer(1, 0)(x), torch.cos(x), atol=1e-12)
    p = QuantumLayer(1, 0, outputs="probs")(x)
    assert torch.allclose(p, torch.cat([torch.cos(x / 2) ** 2, torch.sin(x / 2) ** 2], -1), atol=1e-12)
    # two qubits, one layer with zero angles: RY(x0), RY(x1), CNOT(0,1): <Z0> = cos x0, <Z1> = cos x0 cos x1
    layer = QuantumLayer(2, 1).double()
    with torch.no_grad():
        layer.weights.zero_()
    xy = torch.tensor([[0.3, 1.1], [2.0, -0.4], [math.pi, 0.5]], dtype=torch.float64)
    expect = torch.stack([torch.cos(xy[:, 0]), torch.cos(xy[:, 0]) * torch.cos(xy[:, 1])], -1)
    for backend in ("torch", "pennylane"):
        assert torch.allclose(layer.to_backend(backend)(xy), expect, atol=1e-12), backend
    # a trainable RZ only adds phases: it cannot change the 1-qubit probabilities
    layer = QuantumLayer(1, 1, outputs="probs").double()
    with torch.no_grad():
        layer.weights.copy_(torch.tensor([[[0.0, 1.234]]]))
    assert torch.allclose(layer(x), p, atol=1e-12)


def test_leading_batch_dims_and_single_vector():
    torch.manual_seed(2)
    layer = QuantumLayer(3, 2, outputs="probs")
    x = torch.rand(2, 4, 3)
    out = layer(x)
    assert out.shape == (2, 4, 8)
    assert torch.allclose(out.reshape(8, 8), layer(x.reshape(8, 3)))
    assert layer(x[0, 0]).shape == (8,)
    assert torch.allclose(layer(x[0, 0]), out[0, 0])
    layer.to_backend("pennylane")
    assert torch.allclose(layer(x), out, atol=1e-5)
    assert layer(x[0, 0]).shape == (8,)


def test_lightning_qubit_agrees():
    pytest.importorskip("pennylane_lightning")
    torch.manual_seed(4)
    layer = QuantumLayer(3, 2, outputs="expval", reupload=True).double()
    x = torch.rand(4, 3, dtype=torch.float64) * 3
    coef = torch.randn(4, 3, dtype=torch.float64)
    fast = _outputs_and_grads(layer, x, coef)
    slow = _outputs_and_grads(layer.to_backend("pennylane", device_name="lightning.qubit"), x, coef)
    assert layer._pick_diff_method() == "adjoint"
    # PennyLane 0.45 hands lightning.qubit torch float64 parameters with float32 rounding
    # (cos(0.3) is off by 2e-8 there, exact with numpy inputs), hence 1e-6 rather than 1e-10
    for a, b in zip(fast, slow):
        assert (a - b).abs().max().item() < 1e-6


def test_determinism_state_dict_and_backend_switch():
    torch.manual_seed(123)
    a = QuantumLayer(4, 3)
    torch.manual_seed(123)
    b = QuantumLayer(4, 3, backend="pennylane")
    assert torch.equal(a.weights, b.weights)
    assert a.weights.shape == (3, 4, 2)
    assert 0 <= a.weights.min().item() and a.weights.max().item() < 2 * math.pi
    assert list(a.state_dict()) == list(b.state_dict()) == ["weights"]
    torch.manual_seed(7)
    c = QuantumLayer(4, 3)
    assert not torch.equal(a.weights, c.weights)
    c.load_state_dict(b.state_dict())
    x = torch.rand(5, 4)
    assert torch.allclose(c(x), b(x), atol=1e-5)
    assert torch.equal(a(x), a(x))
    assert QuantumLayer(2, 2, init_range=0.0).weights.abs().max() == 0


def test_gradients_flow_in_training():
    torch.manual_seed(0)
    x = torch.rand(32, 3) * math.pi
    target = torch.sin(x.sum(-1, keepdim=True))
    layer = QuantumLayer(3, 3)
    head = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(list(layer.parameters()) + list(head.parameters()), lr=0.05)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(layer(x)), target)
        loss.backward()
        assert layer.weights.grad is not None and layer.weights.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_second_derivatives_torch_backend():
    torch.manual_seed(5)
    x = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True)
    f = lambda x, w: simulate_torch(x, w, 3, 2, reupload=True, outputs="probs")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_qubits"):
        QuantumLayer(0, 1)
    with pytest.raises(ValueError, match="n_qubits"):
        QuantumLayer(17, 1)
    QuantumLayer(17, 1, backend="pennylane")  # no 2^17-per-sample limit there
    with pytest.raises(ValueError, match="n_layers"):
        QuantumLayer(2, -1)
    with pytest.raises(ValueError, match="outputs"):
        QuantumLayer(2, 1, outputs="state")
    with pytest.raises(ValueError, match="backend"):
        QuantumLayer(2, 1, backend="qiskit")
    layer = QuantumLayer(3, 1)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        layer(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="backend"):
        layer.to_backend("cuda")


def test_draw_and_circuit_ops():
    import pennylane as qml

    layer = QuantumLayer(3, 2)
    text = layer.draw()
    assert isinstance(text, str) and text.count("RY") == 3 * 2 + 3 * 2 - 3 + 3 and "RZ" in text
    assert "╭●" in text
    assert QuantumLayer(3, 2, reupload=False).draw().count("RY") == 3 + 3 * 2
    with qml.tape.QuantumTape() as tape:
        circuit_ops(torch.zeros(4), torch.zeros(1, 4, 2), 4, 1, True)
    assert [op.name for op in tape.operations].count("CNOT") == 4
    with qml.tape.QuantumTape() as tape:
        circuit_ops(torch.zeros(2), torch.zeros(1, 2, 2), 2, 1, True)
    assert [op.name for op in tape.operations].count("CNOT") == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(6)
    for reupload in (True, False):
        layer = QuantumLayer(6, 3, outputs="probs", reupload=reupload)
        x = torch.rand(300, 6) * 3
        cpu = layer(x)
        gpu = layer.cuda()(x.cuda())
        assert gpu.is_cuda
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
        gpu.sum().backward()
        assert layer.weights.grad is not None and layer.weights.grad.is_cuda


def test_layer_runs_in_float32_under_autocast_and_matches_float32():
    """Mixed-precision training: the circuit turns autocast off for itself and computes in float32."""
    torch.manual_seed(0)
    layer = QuantumLayer(6, 3)
    x = (torch.rand(32, 6) * 3.0).requires_grad_(True)
    reference = layer(x)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    # bfloat16 inputs carry ~3 significant digits: the outputs agree to that, not more
    assert torch.allclose(out, reference, atol=2e-2)
    out.sum().backward()
    assert layer.weights.grad is not None and torch.isfinite(layer.weights.grad).all()


def test_simulation_tables_built_under_inference_mode_serve_training(monkeypatch):
    """A first call under torch.inference_mode (e.g. synthesize) must not poison later training."""
    from QHQGANLib.quantum import simulator

    monkeypatch.setattr(simulator, "_PLANS", {})
    layer = QuantumLayer(5, 2)
    with torch.inference_mode():
        layer(torch.rand(4, 5))
    loss = layer(torch.rand(4, 5)).sum()
    loss.backward()
    assert torch.isfinite(layer.weights.grad).all()


# --------------------------------------------------------------------------------------------
# The fused function (quantum/fused.py): chunked forward, adjoint backward, worker threads
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers", [2, 4])
@pytest.mark.parametrize("reupload", [True, False])
def test_shipped_size_agrees_with_pennylane(n_layers, reupload):
    """The shipped circuits (8 qubits, 2 layers for enhancement, 4 for synthesis), float32 and float64."""
    _compare(8, n_layers, reupload, "expval", torch.float32, batch=12, tol=1e-5, seed=n_layers)
    _compare(8, n_layers, reupload, "expval", torch.float64, batch=5, tol=1e-10, seed=n_layers)


@pytest.mark.parametrize("outputs", ["expval", "probs"])
def test_shipped_size_probs_and_odd_register(outputs):
    _compare(8, 3, True, outputs, torch.float64, batch=4, tol=1e-10, seed=11)
    _compare(7, 2, True, outputs, torch.float64, batch=4, tol=1e-10, seed=12)  # unequal half registers


def _fused_vs_autograd(n, n_layers, reupload, outputs, batch, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, n, generator=gen, dtype=dtype) * 2 - 1) * math.pi
    w = torch.rand(n_layers, n, 2, generator=gen, dtype=dtype) * 2 * math.pi
    results = []
    for method in ("layers", "autograd"):
        xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = simulate_torch(xx, ww, n, n_layers, reupload, outputs, method)
        coef = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        (out * coef).sum().backward()
        results.append((out.detach(), xx.grad, ww.grad))
    return results


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_chunks_threads_and_recompute_match_autograd(monkeypatch, keep, threads):
    """Many chunks, on worker threads or not, states kept or recomputed: the same numbers as the
    differentiable operations, and torch's thread count is what it was."""
    from QHQGANLib.quantum import fused

    monkeypatch.setattr(fused, "_CPU_CHUNK_ELEMS", 7 * 2**9)  # 7 samples per chunk at n = 8
    if not keep:
        monkeypatch.setattr(fused, "_KEEP_BYTES", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, n_layers, reupload, outputs in [(8, 2, True, "expval"), (8, 4, False, "expval"),
                                               (5, 3, True, "probs"), (1, 2, True, "expval")]:
            fast, ref = _fused_vs_autograd(n, n_layers, reupload, outputs, batch=61)
            for name, a, b in zip(("outputs", "d/dx", "d/dw"), fast, ref):
                assert (a - b).abs().max().item() < 1e-12, (n, n_layers, reupload, outputs, name)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_fused_retain_graph_and_partial_gradients():
    torch.manual_seed(9)
    x = torch.rand(40, 8, dtype=torch.float64)
    layer = QuantumLayer(8, 2).double()
    out = layer(x)  # inputs without gradient: only the weights'
    out.sum().backward(retain_graph=True)
    first = layer.weights.grad.clone()
    out.sum().backward()  # the kept states serve a second backward pass
    assert torch.allclose(layer.weights.grad, 2 * first, atol=1e-12)
    xx = x.clone().requires_grad_(True)
    with torch.no_grad():
        reference = simulate_torch(x, layer.weights, 8, 2, method="autograd")
    frozen = simulate_torch(xx, layer.weights.detach(), 8, 2)  # gradient for the inputs only
    assert torch.allclose(frozen.detach(), reference, atol=1e-12)
    frozen.sum().backward()
    assert xx.grad is not None and torch.isfinite(xx.grad).all()


def test_shipped_enhancer_unchanged_by_the_fused_function(monkeypatch):
    """The shipped hqgan-enhance on a real slice: the fused function gives what the layer-by-layer
    differentiable simulation (the previous implementation) gave, to 1e-4 of the HU range."""
    from pydicom.data import get_testdata_file

    from QHQGANLib import read_volume
    from QHQGANLib.core.constants import HU_MAX, HU_MIN
    from QHQGANLib.nn.weights import load_model
    from QHQGANLib.quantum import simulator

    net = load_model("hqgan-enhance", device="cpu")
    ct = read_volume(get_testdata_file("CT_small.dcm")).array.astype("float32")  # (1, 128, 128) HU
    stack = torch.from_numpy(ct[:, 32:96, 32:96]).expand(1, net.in_slices, 64, 64).contiguous()
    with torch.no_grad():
        fused_out = net(stack)
        monkeypatch.setattr(simulator, "run_fused", lambda x, w, plan, reupload, outputs, differentiable: differentiable(x, w))
        layered_out = net(stack)
    assert (fused_out - layered_out).abs().max().item() < 1e-4 * (HU_MAX - HU_MIN)
    assert (fused_out - stack[:, 1:2]).abs().max().item() > 1.0  # the network does change the slice
