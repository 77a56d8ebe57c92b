"""Exact, batched state-vector simulation in plain torch of :func:`~QHQGANLib.quantum.circuit.circuit_ops`.

How it is fast is described in :mod:`QHQGANLib.quantum.layer`'s docstring; the layer-by-layer
method runs as one autograd function (:mod:`QHQGANLib.quantum.fused`). The measured speed is in
BENCHMARKS.md (sections "quantum" and "profile").

Console usage::

    >>> import torch
    >>> from QHQGANLib.quantum.simulator import simulate_torch
    >>> z = simulate_torch(torch.rand(16, 4), torch.rand(2, 4, 2), n_qubits=4, n_layers=2)   # (16, 4) <Z_i>
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from .circuit import ring_pairs
from .fused import run_fused

__all__ = ["simulate_torch", "MAX_TORCH_QUBITS"]

MAX_TORCH_QUBITS = 16


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


def _j_table(k: int) -> np.ndarray:
    """(4^k, k) table T with sum_{a,b} M[a, b] T[a * 2^k + b, q] = sum_a s_q(a) M[a, a xor bit q],
    s_q(a) = +1 where bit q of a is set, else -1: <g, J_q y> = M . T for M = g y^T on k qubits."""
    m = 2**k
    table = np.zeros((m * m, k))
    for q in range(k):
        mask = 1 << (k - 1 - q)
        for a in range(m):
            table[a * m + (a ^ mask), q] = 1.0 if a & mask else -1.0
    return table


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
        # for the fused function (quantum/fused.py): <Z> after the ring at every layout position and
        # the sign tables of the angle gradients
        self.zsign_layout = self.zsign_after_ring[as_t(tgt_j)]
        self.flip_hi, self.flip_lo = as_t(_j_table(self.h), dtype), as_t(_j_table(self.lo), dtype)


_PLANS: dict = {}


def _plan(n: int, device: torch.device, dtype: torch.dtype) -> _Plan:
    key = (n, str(device), dtype)
    if key not in _PLANS:
        # cached across calls: built as ordinary tensors even when first needed under
        # torch.inference_mode (inference tensors cannot be saved for a later backward pass)
        with torch.inference_mode(False):
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
    ``reupload=False`` or ``n_layers <= 1``), "layers" (layer by layer, as one autograd function
    with a chunked forward and an adjoint backward: :mod:`QHQGANLib.quantum.fused`) or
    "autograd" (layer by layer out of differentiable torch operations: the reference the fused
    function falls back on for higher derivatives). Returns (B, n) expectations or (B, 2**n)
    probabilities in x's dtype (float32 or float64; real arithmetic throughout).
    """
    if x.dtype not in (torch.float32, torch.float64):  # half precision: compute in float32
        return simulate_torch(x.float(), weights, n_qubits, n_layers, reupload, outputs, method).to(x.dtype)
    if method not in ("auto", "dense", "layers", "autograd"):
        raise ValueError(f"method must be 'auto', 'dense', 'layers' or 'autograd', got {method!r}")
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
    if method == "layers" and n_layers > 1 and batch > 0:
        def differentiable(xx, ww):
            return simulate_torch(xx, ww, n_qubits, n_layers, reupload, outputs, "autograd")
        return run_fused(x, w, plan, reupload, outputs, differentiable)

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
