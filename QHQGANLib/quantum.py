"""`QuantumLayer`: the variational quantum circuit of the hybrid GAN, as a torch ``nn.Module``.

The circuit is written once, with PennyLane operations (:func:`circuit_ops`), and can be run by
two backends that give the same outputs and gradients for the same ``weights``:

* ``backend="torch"`` (default): an exact, batched state-vector simulation of that circuit written
  in plain torch (CPU or CUDA, autograd, float32 or float64 following the input dtype). It is
  tens to hundreds of times faster than PennyLane here (see BENCHMARKS.md, section "quantum").
* ``backend="pennylane"``: a PennyLane QNode on ``qml.device(device_name, wires=n_qubits)`` with
  the torch interface (``diff_method="backprop"`` and parameter broadcasting on
  ``default.qubit``; ``"adjoint"`` on ``lightning.qubit``/``lightning.*``; ``"best"`` otherwise).
  Use it to check the torch simulation or to run on another PennyLane device.

Circuit (``n = n_qubits``, ``L = n_layers``, wire 0 is the most significant bit of a basis state,
PennyLane's convention)::

    RY(x_i) on every qubit i                                  # angle encoding
    for l in range(L):
        if reupload and l > 0: RY(x_i) on every qubit         # data re-uploading
        RY(w[l, i, 0]) then RZ(w[l, i, 1]) on every qubit     # trainable rotations
        ring of CNOTs: CNOT(i, i+1 mod n) for i = 0..n-1      # n >= 3
                       a single CNOT(0, 1)                    # n == 2 (PennyLane's "ring" for 2 wires)
                       nothing                                # n == 1

Outputs: ``outputs="expval"`` -> ``<Z_i>`` for every qubit, shape ``(..., n)``, in [-1, 1];
``outputs="probs"`` -> probabilities of the ``2**n`` basis states, shape ``(..., 2**n)``, summing
to 1 (index = bits of wires 0..n-1, wire 0 most significant).

Weights: one ``nn.Parameter`` ``weights`` of shape ``(n_layers, n_qubits, 2)`` (``[..., 0]`` the RY
angle, ``[..., 1]`` the RZ angle), shared by both backends, so ``state_dict()`` does not depend on
the backend. Initialised uniformly in ``[0, init_range)`` (default ``[0, 2*pi)``, like PennyLane's
``TorchLayer``) with torch's RNG: ``torch.manual_seed(s)`` before construction makes it
reproducible. Use a small ``init_range`` (e.g. 0.1) to start near the identity circuit.

How the torch backend is fast (all in real arithmetic, float32 or float64): the rotations of a
layer on all qubits form a Kronecker product of 2x2 matrices, and the CNOT ring is a permutation
of basis states. The simulation

* merges the encoding / re-uploaded ``RY(x_i)`` with the trainable ``RY(w[l,i,0])`` (rotations
  about the same axis add up), and applies ``RZ`` as a phase per basis state (the product of the
  per-qubit phases) together with the ring's permutation in one gather,
* builds the first layer's state directly as a product state (no gates applied to ``|0...0>``),
* keeps a batch of states as real tensors (B, 2^h, 2, 2^(n-h)) (wires 0..h-1, real/imaginary part,
  wires h..n-1; h = n // 2) and applies the real RY Kronecker product of a layer as two batched
  matrix products with the half-register blocks, ``A @ Psi`` and ``Psi @ C^T``, with custom
  backward passes (autograd through the Kronecker construction is several times slower),
* without re-uploading (where the cost model measured here says it pays: batch >= 2^n and n <= 6,
  n = 7-8 from L = 3, n = 9 from L = 6, n = 10 from L = 8), builds the data-independent part of the circuit once per call as a 2^n x 2^n
  unitary (by running the layers on the basis states) and applies it to the real encoded states
  as one real matrix product,
* leaves out the last layer's RZ (it does not change probabilities) and folds its CNOT ring into
  the measurement (it only permutes probabilities).

Gradients: first and higher derivatives are exact on both backends (the torch backend's custom
backward passes are themselves differentiable).

Console usage::

    >>> import torch
    >>> from QHQGANLib import QuantumLayer
    >>> torch.manual_seed(0)
    >>> layer = QuantumLayer(n_qubits=4, n_layers=2)          # torch backend, <Z_i> outputs
    >>> x = torch.rand(16, 4) * 3.1416                          # 16 feature vectors
    >>> z = layer(x)                                            # (16, 4), differentiable
    >>> p = QuantumLayer(4, 2, outputs="probs")(x)              # (16, 16), rows sum to 1
    >>> ref = layer.to_backend("pennylane")(x)                  # same circuit on default.qubit
    >>> layer.to_backend("torch")
    >>> print(layer.draw())                                     # qml.draw text of the circuit
    >>> print(layer.draw(decimals=None))                        # gates only, no angles
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import nn

__all__ = ["QuantumLayer", "circuit_ops", "ring_pairs", "simulate_torch", "MAX_TORCH_QUBITS"]

MAX_TORCH_QUBITS = 16
_OUTPUTS = ("expval", "probs")
_BACKENDS = ("torch", "pennylane")


# --------------------------------------------------------------------------------------------
# The circuit, defined once with PennyLane operations
# --------------------------------------------------------------------------------------------
def ring_pairs(n_qubits: int) -> list:
    """(control, target) pairs of the entangling ring, applied in this order."""
    if n_qubits == 1:
        return []
    if n_qubits == 2:
        return [(0, 1)]
    return [(i, (i + 1) % n_qubits) for i in range(n_qubits)]


def circuit_ops(inputs, weights, n_qubits: int, n_layers: int, reupload: bool = True) -> None:
    """Apply the circuit's PennyLane operations (call inside a QNode or a queuing context).

    ``inputs[..., i]`` is the angle of qubit ``i`` (a leading batch dimension broadcasts);
    ``weights`` has shape ``(n_layers, n_qubits, 2)``.
    """
    import pennylane as qml

    for i in range(n_qubits):
        qml.RY(inputs[..., i], wires=i)
    for layer in range(n_layers):
        if reupload and layer > 0:
            for i in range(n_qubits):
                qml.RY(inputs[..., i], wires=i)
        for i in range(n_qubits):
            qml.RY(weights[layer, i, 0], wires=i)
            qml.RZ(weights[layer, i, 1], wires=i)
        for control, target in ring_pairs(n_qubits):
            qml.CNOT(wires=[control, target])


# --------------------------------------------------------------------------------------------
# Torch state-vector simulation of exactly that circuit
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _ring_map(n_qubits: int) -> np.ndarray:
    """f[b] = basis index that basis state b is sent to by the CNOT ring."""
    idx = np.arange(2**n_qubits)
    bits = [(idx >> (n_qubits - 1 - w)) & 1 for w in range(n_qubits)]  # bits[w]: wire w
    for control, target in ring_pairs(n_qubits):
        bits[target] = bits[target] ^ bits[control]
    out = np.zeros_like(idx)
    for w in range(n_qubits):
        out |= bits[w] << (n_qubits - 1 - w)
    return out


class _Plan:
    """Index tables for n qubits (on one device). The state of a batch is kept as a real tensor of
    shape (B, 2^h, 2, 2^lo): wires 0..h-1 (h = n // 2), then real/imaginary part, then wires h..n-1,
    so that both half-register blocks act as plain batched matrix products on contiguous views."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype):
        dim = 2**n
        self.n, self.h, self.lo = n, n // 2, n - n // 2
        f = _ring_map(n)  # ring sends basis state b to f[b]
        src = np.argsort(f)  # after the ring, amplitude j comes from src[j]
        idx = np.arange(dim)
        zsign = np.stack([1 - 2 * ((idx >> (n - 1 - w)) & 1) for w in range(n)], axis=1)  # (2^n, n)
        def pos(j, r):  # layout position of (basis index j, part r)
            return ((j >> self.lo) * 2 + r) * 2**self.lo + (j & (2**self.lo - 1))

        tgt_j = np.empty(2 * dim, dtype=np.int64)
        tgt_r = np.empty(2 * dim, dtype=np.int64)
        for r in (0, 1):
            tgt_j[pos(idx, r)] = idx
            tgt_r[pos(idx, r)] = r
        s = src[tgt_j]  # source basis index of every target layout position
        gs, go = pos(s, tgt_r), pos(s, 1 - tgt_r)
        as_t = lambda a, dt=None: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
        self.src, self.f = as_t(src), as_t(f)
        self.first_src = as_t(s)  # gather from a (B, 2^n) real amplitude vector
        self.part_is_im = as_t(tgt_r.astype(bool))
        self.gs, self.go = as_t(gs), as_t(go)
        self.gs_inv, self.go_inv = as_t(np.argsort(gs)), as_t(np.argsort(go))
        self.sign_other = as_t(np.where(tgt_r == 0, -1.0, 1.0), dtype)
        self.zsign = as_t(zsign, dtype)  # Z eigenvalues, (2^n, n)
        self.zsign_after_ring = as_t(zsign[f], dtype)  # <Z> after the ring from probs before it
        self.phase_src = self.zsign[s]  # (2 * 2^n, n): z of the source state of every position


_PLANS: dict = {}


def _plan(n: int, device: torch.device, dtype: torch.dtype) -> _Plan:
    key = (n, str(device), dtype)
    if key not in _PLANS:
        _PLANS[key] = _Plan(n, device, dtype)
    return _PLANS[key]


class _Permute(torch.autograd.Function):
    """y[..., k] = x[..., idx[k]] for a permutation idx, with a gather (not a scatter-add) backward."""

    @staticmethod
    def forward(ctx, x, idx, inv):
        ctx.save_for_backward(inv)
        return x.index_select(-1, idx)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return grad.index_select(-1, inv), None, None


_KRON_CACHE: dict = {}


def _kron_order(k: int, device: torch.device) -> torch.Tensor:
    """Position in the outer product of k vectors (r_q[2 j_q + m_q]) of each entry (j, m) of the k-qubit matrix."""
    key = (k, str(device))
    if key not in _KRON_CACHE:
        m = 2**k
        j, col = np.divmod(np.arange(m * m), m)
        idx = np.zeros(m * m, dtype=np.int64)
        for q in range(k):
            jb, mb = (j >> (k - 1 - q)) & 1, (col >> (k - 1 - q)) & 1
            idx += (2 * jb + mb) << (2 * (k - 1 - q))
        _KRON_CACHE[key] = torch.as_tensor(idx, device=device)
    return _KRON_CACHE[key]


def _ry_kron(theta: torch.Tensor) -> torch.Tensor:
    """RY(theta_0) x RY(theta_1) x ... (real), theta: (..., k) -> (..., 2^k, 2^k).

    Built as the outer product of the flattened 2x2 matrices [c, -s, s, c] (cheap 3-d broadcasts)
    and one gather into matrix order; a chain of 4-d Kronecker broadcasts is ~3x slower."""
    k = theta.shape[-1]
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    vecs = torch.stack([c, -s, s, c], dim=-1)  # (..., k, 4)
    out = vecs[..., 0, :]
    for q in range(1, k):
        out = (out[..., :, None] * vecs[..., q, None, :]).reshape(*out.shape[:-1], -1)
    return out.index_select(-1, _kron_order(k, theta.device)).view(*theta.shape[:-1], 2**k, 2**k)


def _ry_product_state(theta: torch.Tensor) -> torch.Tensor:
    """Amplitudes of RY(theta_0)|0> x ... x RY(theta_{n-1})|0> (real), (..., n) -> (..., 2^n)."""
    half = theta / 2
    vecs = torch.stack([torch.cos(half), torch.sin(half)], dim=-1)
    out = vecs[..., 0, :]
    for q in range(1, theta.shape[-1]):
        out = (out[..., :, None] * vecs[..., q, None, :]).reshape(*out.shape[:-1], -1)
    return out


class _PhaseRing(torch.autograd.Function):
    """RZ phases then the CNOT ring on layout states: out = x[gs] * cos(a) + x[go] * sign * sin(a),
    a = phase angle of every layout position. The backward needs only the output (d out / d a is
    i * out), which the next layer saves anyway, and avoids autograd's extra products and sums."""

    @staticmethod
    def forward(ctx, x, angle, plan):
        cos, sin = torch.cos(angle), torch.sin(angle) * plan.sign_other
        out = x.index_select(-1, plan.gs)
        out.mul_(cos)
        out.addcmul_(x.index_select(-1, plan.go), sin)
        ctx.plan = plan
        ctx.save_for_backward(out, angle)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, angle = ctx.saved_tensors
        plan = ctx.plan
        grad_x = grad_angle = None
        if ctx.needs_input_grad[0]:
            cos, sin = torch.cos(angle), torch.sin(angle) * plan.sign_other
            grad_x = (grad * cos).index_select(-1, plan.gs_inv) + (grad * sin).index_select(-1, plan.go_inv)
        if ctx.needs_input_grad[1]:
            hi, lo = 2**plan.h, 2**plan.lo
            g = grad.reshape(-1, hi, 2, lo)
            o = out.reshape(-1, hi, 2, lo)
            d_re = -(g[:, :, 0] * o[:, :, 1]).sum(0)  # d Re(e^{ia} z)/da = -Im(out)
            d_im = (g[:, :, 1] * o[:, :, 0]).sum(0)  # d Im(e^{ia} z)/da = Re(out)
            grad_angle = torch.stack([d_re, d_im], dim=1).reshape(-1)
        return grad_x, grad_angle, None


def _phase_ring(x: torch.Tensor, phi: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """RZ(phi_i) on every qubit, then the CNOT ring, on layout states x (B, 2*2^n)."""
    angle = -0.5 * (plan.phase_src @ phi)  # phase of the source amplitude, per layout position
    return _PhaseRing.apply(x, angle, plan)


def _first_layer(amp: torch.Tensor, phi: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Layout states after RZ(phi) and the ring, from real amplitudes amp (B, 2^n)."""
    angle = -0.5 * (plan.phase_src @ phi)
    coef = torch.where(plan.part_is_im, torch.sin(angle), torch.cos(angle))
    return amp.index_select(-1, plan.first_src) * coef


_FLIP_CACHE: dict = {}


def _flip_tables(k: int, device: torch.device, dtype: torch.dtype):
    """For a k-qubit block (m = 2^k): flat indices b*m + (b xor bit q) and signs (+1 if bit q of b is 0)."""
    key = (k, str(device), dtype)
    if key not in _FLIP_CACHE:
        m = 2**k
        b = np.arange(m)
        masks = [1 << (k - 1 - q) for q in range(k)]
        idx = np.stack([b * m + (b ^ mk) for mk in masks])  # (k, m)
        sign = np.stack([np.where(b & mk, -1.0, 1.0) for mk in masks])
        _FLIP_CACHE[key] = (torch.as_tensor(idx.reshape(-1), device=device),
                            torch.as_tensor(sign, dtype=dtype, device=device))
    return _FLIP_CACHE[key]


def _ry_kron_grad(a: torch.Tensor, grad_a: torch.Tensor, k: int) -> torch.Tensor:
    """dL/dtheta (B, k) from dL/dA for A = RY(theta_0) x ... x RY(theta_{k-1}) (B, m, m).

    dA/dtheta_q = A J_q / 2 with J = [[0, -1], [1, 0]] on qubit q, so
    dL/dtheta_q = 1/2 sum_b sign_q(b) M[b, b xor e_q] with M = dA^T A."""
    idx, sign = _flip_tables(k, a.device, a.dtype)
    m_mat = torch.bmm(grad_a.transpose(1, 2), a).reshape(a.shape[0], -1)
    picked = m_mat.index_select(1, idx).view(a.shape[0], k, -1)
    return 0.5 * (picked * sign).sum(-1)


class _BatchedRY(torch.autograd.Function):
    """Per-sample RY-Kronecker block applied to a batch: Y = A(theta) @ X (side "left") or
    Y = X @ A(theta)^T (side "right"); theta (B, k), X (B, m, c) or (B, c, m).

    Autograd through the Kronecker construction is slow (broadcast products and reductions over
    4^k entries per sample); this backward gets dL/dtheta from two small batched products. When
    the backward itself is differentiated (create_graph=True) it rebuilds A with differentiable
    ops, so higher derivatives stay exact."""

    @staticmethod
    def forward(ctx, theta, x, left):
        with torch.no_grad():
            a = _ry_kron(theta)
        ctx.left = left
        ctx.save_for_backward(theta, x, a)
        return torch.bmm(a, x) if left else torch.bmm(x, a.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        theta, x, a = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: rebuild A with differentiable ops
            a = _ry_kron(theta)
        if ctx.left:
            grad_x = torch.bmm(a.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
            grad_a = torch.bmm(grad, x.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        else:
            grad_x = torch.bmm(grad, a) if ctx.needs_input_grad[1] else None
            grad_a = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[0] else None
        grad_theta = _ry_kron_grad(a, grad_a, theta.shape[-1]) if grad_a is not None else None
        return grad_theta, grad_x, None


def _apply_ry(x: torch.Tensor, theta: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """RY(theta_i) on every qubit of layout states x (B, 2*2^n); theta (n,) shared or (B, n) per state."""
    batch = x.shape[0]
    h, lo = plan.h, plan.lo
    if theta.dim() == 1:  # shared by the batch: plain matrix products, autograd is cheap
        if h > 0:
            x = torch.matmul(_ry_kron(theta[:h]), x.view(batch, 2**h, 2 ** (lo + 1)))
        x = x.reshape(-1, 2**lo) @ _ry_kron(theta[h:]).T
        return x.reshape(batch, -1)
    if h > 0:
        x = _BatchedRY.apply(theta[:, :h], x.view(batch, 2**h, 2 ** (lo + 1)), True)
    x = _BatchedRY.apply(theta[:, h:], x.reshape(batch, -1, 2**lo), False)
    return x.reshape(batch, -1)


def _run_layers(state: torch.Tensor, x: Optional[torch.Tensor], w: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Layers 1..L-1 on layout states after layer 0 (x: inputs when re-uploading, else None);
    the last layer's RZ and ring are left out (they do not change the probabilities up to the
    ring's permutation, which the measurement applies)."""
    n_layers = w.shape[0]
    for layer in range(1, n_layers):
        theta = w[layer, :, 0] if x is None else x + w[layer, :, 0]
        state = _apply_ry(state, theta, plan)
        if layer < n_layers - 1:
            state = _phase_ring(state, w[layer, :, 1], plan)
    return state


def simulate_torch(x: torch.Tensor, weights: torch.Tensor, n_qubits: int, n_layers: int,
                   reupload: bool = True, outputs: str = "expval", method: str = "auto") -> torch.Tensor:
    """Batched exact simulation of :func:`circuit_ops`. x: (B, n) real; weights: (L, n, 2).

    ``method``: "auto", "dense" (the data-independent part as one unitary per call; needs
    ``reupload=False`` or ``n_layers <= 1``) or "layers". Returns (B, n) expectations or
    (B, 2**n) probabilities in x's dtype (float32 or float64; real arithmetic throughout).
    """
    if x.dtype not in (torch.float32, torch.float64):  # half precision: compute in float32
        return simulate_torch(x.float(), weights, n_qubits, n_layers, reupload, outputs, method).to(x.dtype)
    dtype = x.dtype
    w = weights.to(dtype)
    batch, dim = x.shape[0], 2**n_qubits
    plan = _plan(n_qubits, x.device, dtype)

    if n_layers == 0:
        if outputs == "probs":
            return _ry_product_state(x) ** 2
        return torch.cos(x)

    theta0 = x + w[0, :, 0]  # encoding RY(x) and trainable RY(w) add up
    single = not reupload or n_layers == 1
    if method == "auto":
        # measured here (2 vCPUs): one unitary per call costs ~4^n per sample, the layer-by-layer
        # path ~(L-1) 2^n (2^h + 2^lo); dense wins for n <= 8 from L = 3 (n <= 6: always) and
        # for n = 10 only from L = 8.
        per_layer = (n_layers - 1) * (2 ** (n_qubits // 2) + 2 ** (n_qubits - n_qubits // 2))
        factor = 5.0 if n_qubits <= 8 else 2.5
        method = "dense" if (single and n_layers > 1 and n_qubits <= 12 and batch >= dim
                             and dim <= factor * per_layer) else "layers"
    if method == "dense" and not single:
        raise ValueError("method='dense' needs reupload=False (or n_layers <= 1)")

    amp = _ry_product_state(theta0)  # (B, 2^n) real
    if n_layers == 1:  # RZ does not change probabilities; the ring is applied below
        probs = amp**2
    elif method == "dense":
        basis = torch.eye(dim, dtype=dtype, device=x.device)
        rows = _run_layers(_first_layer(basis, w[0, :, 1], plan), None, w, plan)  # row k = U e_k
        rows = rows.view(dim, 2**plan.h, 2, 2**plan.lo).transpose(1, 2).reshape(dim, 2 * dim)
        out = amp @ rows  # (B, 2 * 2^n): real parts, then imaginary parts
        probs = out[:, :dim] ** 2 + out[:, dim:] ** 2
    else:
        state = _first_layer(amp, w[0, :, 1], plan)
        state = _run_layers(state, x if reupload else None, w, plan)
        probs = (state.view(batch, 2**plan.h, 2, 2**plan.lo) ** 2).sum(2).reshape(batch, dim)

    if outputs == "probs":
        return _Permute.apply(probs, plan.src, plan.f)
    return probs @ plan.zsign_after_ring


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------
class QuantumLayer(nn.Module):
    """Variational quantum circuit layer: (..., n_qubits) angles -> (..., n_qubits) <Z_i> or
    (..., 2**n_qubits) probabilities. See the module docstring for the circuit and an example.

    Parameters
    ----------
    n_qubits : number of qubits = number of input features (1..16 for the torch backend).
    n_layers : number of trainable layers (>= 0).
    outputs : "expval" (Pauli-Z expectation of every qubit) or "probs" (basis-state probabilities).
    reupload : re-apply the RY(x_i) encoding before every layer after the first.
    backend : "torch" (fast batched simulation) or "pennylane" (QNode on ``device_name``).
    device_name : PennyLane device for the "pennylane" backend ("default.qubit", "lightning.qubit", ...).
    diff_method : PennyLane differentiation method; None picks "backprop" for default.qubit,
        "adjoint" for lightning devices, "best" otherwise.
    init_range : weights start uniform in [0, init_range) (torch RNG; default 2*pi).
    """

    def __init__(self, n_qubits: int, n_layers: int, outputs: str = "expval", reupload: bool = True,
                 backend: str = "torch", device_name: str = "default.qubit",
                 diff_method: Optional[str] = None, init_range: float = 2 * math.pi):
        super().__init__()
        if not isinstance(n_qubits, (int, np.integer)) or isinstance(n_qubits, bool) or n_qubits < 1:
            raise ValueError(f"n_qubits must be an integer >= 1, got {n_qubits!r}")
        if not isinstance(n_layers, (int, np.integer)) or isinstance(n_layers, bool) or n_layers < 0:
            raise ValueError(f"n_layers must be an integer >= 0, got {n_layers!r}")
        if outputs not in _OUTPUTS:
            raise ValueError(f"outputs must be one of {_OUTPUTS}, got {outputs!r}")
        if not (isinstance(init_range, (int, float)) and math.isfinite(init_range) and init_range >= 0):
            raise ValueError(f"init_range must be a finite number >= 0, got {init_range!r}")
        self.n_qubits = int(n_qubits)
        self.n_layers = int(n_layers)
        self.outputs = outputs
        self.reupload = bool(reupload)
        self.device_name = str(device_name)
        self.diff_method = diff_method
        self._qnode = None
        self._backend = None
        self.backend = backend  # validates
        self.weights = nn.Parameter(torch.rand(self.n_layers, self.n_qubits, 2) * init_range)

    # ---- backend switching ----
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
        if name == "torch" and self.n_qubits > MAX_TORCH_QUBITS:
            raise ValueError(f"the torch backend holds the 2**n state of every sample in memory; "
                             f"n_qubits must be <= {MAX_TORCH_QUBITS}, got {self.n_qubits}")
        self._backend = name

    def to_backend(self, name: str, device_name: Optional[str] = None) -> "QuantumLayer":
        """Switch backend (and optionally the PennyLane device) in place; returns self."""
        self.backend = name
        if device_name is not None and device_name != self.device_name:
            self.device_name = str(device_name)
            self._qnode = None
        return self

    @property
    def output_dim(self) -> int:
        return self.n_qubits if self.outputs == "expval" else 2**self.n_qubits

    def extra_repr(self) -> str:
        return (f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, outputs={self.outputs!r}, "
                f"reupload={self.reupload}, backend={self.backend!r}"
                + (f", device_name={self.device_name!r}" if self.backend == "pennylane" else ""))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_qnode"] = None  # QNodes/devices are rebuilt on demand
        return state

    # ---- PennyLane ----
    def _pick_diff_method(self) -> str:
        if self.diff_method is not None:
            return self.diff_method
        if self.device_name == "default.qubit":
            return "backprop"
        if self.device_name.startswith("lightning."):
            return "adjoint"
        return "best"

    def qnode(self):
        """The PennyLane QNode ``qnode(inputs, weights)`` of this circuit (built once, cached)."""
        if self._qnode is None:
            import pennylane as qml

            n, n_layers, reupload, outputs = self.n_qubits, self.n_layers, self.reupload, self.outputs
            dev = qml.device(self.device_name, wires=n)

            @qml.qnode(dev, interface="torch", diff_method=self._pick_diff_method())
            def circuit(inputs, weights):
                circuit_ops(inputs, weights, n, n_layers, reupload)
                if outputs == "probs":
                    return qml.probs(wires=range(n))
                return [qml.expval(qml.PauliZ(i)) for i in range(n)]

            self._qnode = circuit
        return self._qnode

    def draw(self, inputs=None, decimals: Optional[int] = 2, **kwargs) -> str:
        """``qml.draw`` text of the circuit (inputs default to zeros; pass ``decimals=None`` to hide angles)."""
        import pennylane as qml

        if inputs is None:
            inputs = torch.zeros(self.n_qubits, dtype=self.weights.dtype)
        with torch.no_grad():
            return qml.draw(self.qnode(), decimals=decimals, **kwargs)(inputs, self.weights.detach())

    # ---- forward ----
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.dim() == 0 or x.shape[-1] != self.n_qubits:
            raise ValueError(f"input must have shape (..., {self.n_qubits}) (one angle per qubit), "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.n_qubits)
        if self.backend == "torch":
            out = simulate_torch(flat, self.weights, self.n_qubits, self.n_layers, self.reupload, self.outputs)
        else:
            out = self._forward_pennylane(flat)
        return out.reshape(*lead, self.output_dim)

    def _forward_pennylane(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.shape[0] == 0:
            return flat.new_zeros(0, self.output_dim)
        qnode = self.qnode()
        weights = self.weights.to(flat.dtype) if self.weights.dtype != flat.dtype else self.weights
        res = qnode(flat, weights)
        if isinstance(res, (list, tuple)):
            res = torch.stack([torch.as_tensor(r) for r in res], dim=-1)
        res = res.reshape(flat.shape[0], self.output_dim)
        return res.to(flat.dtype)
