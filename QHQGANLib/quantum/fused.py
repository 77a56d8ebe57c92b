"""The re-uploading circuit as one autograd function: chunked forward, hand-written adjoint backward.

:func:`~QHQGANLib.quantum.simulator.simulate_torch` uses it for the layer-by-layer method
(``n_layers >= 2``): it gives the same numbers as building the circuit out of differentiable
torch operations, but

* runs the batch in chunks of a few thousand samples (:func:`chunk_size`), so the states of
  a chunk stay in the CPU's cache and no tensor is big enough for glibc to hand it back to the
  system after every operation (which made large batches 2-3.6x slower unless the allocator
  was tuned through environment variables),
* saves only the inputs and the weights for the backward pass (no per-layer states of the whole
  batch): the backward pass re-runs the forward of one chunk at a time and walks back through
  it with the adjoint of every gate,
* gets the angle gradients without differentiating the Kronecker construction: ``RY(t)`` and
  ``J = [[0, -1], [1, 0]]`` commute, so d(K x)/d t_q = J_q (K x) / 2 and
  dL/dt_q = <G, J_q Y> / 2 with Y the layer's output and G its gradient: one small batched
  product per half register and a product with a fixed (4^k, k) sign table.

The state of a chunk is a real tensor (b, 2^h, 2, 2^lo) (wires 0..h-1, real/imaginary part,
wires h..n-1, h = n // 2), the layout of :class:`~QHQGANLib.quantum.simulator._Plan`. A backward
pass that is itself differentiated (``create_graph=True``) is not handled here: the function
then recomputes the chunk with the differentiable operations of ``simulator`` (passed in as
``differentiable``), so higher derivatives stay exact.

Console usage (through the simulator; ``method="autograd"`` is the differentiable reference)::

    >>> import torch
    >>> from QHQGANLib.quantum.simulator import simulate_torch
    >>> x, w = torch.rand(5000, 8), torch.rand(2, 8, 2)
    >>> fast = simulate_torch(x, w, 8, 2)                      # this module's function
    >>> ref = simulate_torch(x, w, 8, 2, method="autograd")
    >>> bool((fast - ref).abs().max() < 1e-5)
    True
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["chunk_size", "run_fused"]

# samples x amplitudes per chunk: 2^19 floats (2 MiB in float32) per state on a CPU, so the few
# states of a chunk fit a core's L2 cache; on a GPU large chunks keep the device busy
_CPU_CHUNK_ELEMS = 2**19
_GPU_CHUNK_ELEMS = 2**26
_KEEP_BYTES = 2**29  # at most this much of saved states for the backward pass (else recomputed)


def chunk_size(n_qubits: int, device: torch.device) -> int:
    """Samples per chunk for ``n_qubits`` on ``device``."""
    elems = _CPU_CHUNK_ELEMS if device.type == "cpu" else _GPU_CHUNK_ELEMS
    return max(16, elems // 2 ** (n_qubits + 1))


def _product(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Amplitudes of RY(t_0)|0> x ... (real, (b, 2^k)) from c = cos(t/2), s = sin(t/2), (b, k).

    Built from the last qubit up, each new qubit the most significant bit: two products with a
    broadcast column per step (long contiguous inner loops, unlike outer products with 2 columns)."""
    b, k = c.shape
    out = torch.stack([c[:, k - 1], s[:, k - 1]], 1)
    for q in range(k - 2, -1, -1):
        m = out.shape[1]
        new = out.new_empty(b, 2 * m)
        torch.mul(out, c[:, q:q + 1], out=new[:, :m])
        torch.mul(out, s[:, q:q + 1], out=new[:, m:])
        out = new
    return out


_KRON_TABLES: dict = {}


def _kron_table(k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2^k, 4^k) table T with RY(t_0) x ... x RY(t_{k-1}) = (amp @ T).view(2^k, 2^k), amp the product
    state of the same angles: entry (j, m) is +-prod_q (s_q if bit q of j xor m differs else c_q),
    i.e. amp[j xor m], negated where j_q = 0, m_q = 1 for an odd number of qubits."""
    key = (k, str(device), dtype)
    if key not in _KRON_TABLES:
        m = 2**k
        j, col = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
        upper = torch.zeros_like(j)
        for q in range(k):
            bit = 1 << (k - 1 - q)
            upper += ((j & bit) == 0) & ((col & bit) != 0)
        table = torch.zeros(m, m * m, dtype=torch.float64)
        table[(j ^ col).reshape(-1), torch.arange(m * m)] = (1.0 - 2.0 * (upper % 2)).reshape(-1).double()
        _KRON_TABLES[key] = table.to(device=device, dtype=dtype)
    return _KRON_TABLES[key]


def _kron(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """RY(t_0) x ... x RY(t_{k-1}) (real, (b, 2^k, 2^k)) from c = cos(t/2), s = sin(t/2), (b, k)."""
    b, k = c.shape
    return (_product(c, s) @ _kron_table(k, c.device, c.dtype)).view(b, 2**k, 2**k)


class _Tables:
    """Per-call constants: the plan's tables, the phase of every RZ layer and the output map."""

    def __init__(self, plan, w: torch.Tensor, reupload: bool, outputs: str):
        self.plan, self.reupload, self.outputs = plan, reupload, outputs
        self.n, self.h, self.lo = plan.n, plan.h, plan.lo
        self.hi_dim, self.lo_dim = 2**plan.h, 2**plan.lo
        self.n_layers = w.shape[0]
        angle = -0.5 * (w[:, :, 1] @ plan.phase_src.T)  # (L, 2*2^n): phase of every layout position
        self.cos, self.sin = torch.cos(angle), torch.sin(angle) * plan.sign_other
        self.coef0 = torch.where(plan.part_is_im, torch.sin(angle[0]), torch.cos(angle[0])).view(
            self.hi_dim, 2, self.lo_dim)
        self.w_ry = w[:, :, 0]


def _angles(t: _Tables, x: torch.Tensor, layer: int) -> torch.Tensor:
    if layer == 0 or t.reupload:
        return x + t.w_ry[layer]
    return t.w_ry[layer].expand(x.shape[0], -1)


def _apply_ry(t: _Tables, state: torch.Tensor, theta: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """K(theta) state (or K(theta)^T state) on layout states (b, 2*2^n): A @ Psi @ C^T with A, C the
    RY Kronecker products of the two half registers (RY(t)^T = RY(-t): C^T is built directly)."""
    b = state.shape[0]
    half = 0.5 * theta
    c, s = torch.cos(half), torch.sin(half)
    sign = -1.0 if transpose else 1.0
    if t.h == t.lo:  # both half-register blocks in one construction
        s = s.view(b, 2, t.h) * s.new_tensor([sign, -sign]).view(1, 2, 1)
        both = _kron(c.view(2 * b, t.h), s.view(2 * b, t.h)).view(b, 2, t.hi_dim, t.hi_dim)
        a, right = both[:, 0], both[:, 1]
    else:
        a = _kron(c[:, :t.h], sign * s[:, :t.h]) if t.h > 0 else None
        right = _kron(c[:, t.h:], -sign * s[:, t.h:])
    if a is not None:
        state = torch.bmm(a, state.view(b, t.hi_dim, 2 * t.lo_dim))
    return torch.bmm(state.view(b, -1, t.lo_dim), right).view(b, -1)


def _phase_ring(t: _Tables, state: torch.Tensor, layer: int) -> torch.Tensor:
    p = t.plan
    out = state.index_select(1, p.gs).mul_(t.cos[layer])
    return out.addcmul_(state.index_select(1, p.go), t.sin[layer])


def _forward_chunk(t: _Tables, x: torch.Tensor, keep: bool):
    """Layout state before the measurement; with ``keep`` also every intermediate state."""
    p = t.plan
    theta = _angles(t, x, 0)
    amp = _product(torch.cos(0.5 * theta), torch.sin(0.5 * theta))
    b = amp.shape[0]  # the ring permutes amplitudes; RZ's phase splits them into real and imaginary parts
    state = (amp.index_select(1, p.src).view(b, t.hi_dim, 1, t.lo_dim) * t.coef0).view(b, -1)
    saved = [amp, state]
    for layer in range(1, t.n_layers):
        state = _apply_ry(t, state, _angles(t, x, layer))
        saved.append(state)
        if layer < t.n_layers - 1:
            state = _phase_ring(t, state, layer)
            saved.append(state)
    return state, (saved if keep else None)


def _measure(t: _Tables, state: torch.Tensor) -> torch.Tensor:
    p = t.plan
    sq = state * state
    if t.outputs == "expval":
        return sq @ p.zsign_layout
    b = state.shape[0]
    probs = sq.view(b, t.hi_dim, 2, t.lo_dim).sum(2).view(b, -1)
    return probs.index_select(1, p.src)


def _measure_grad(t: _Tables, state: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    p = t.plan
    if t.outputs == "expval":
        return (grad @ p.zsign_layout.T).mul_(state).mul_(2.0)
    b = state.shape[0]
    g = grad.index_select(1, p.f).view(b, t.hi_dim, 1, t.lo_dim)
    return (state.view(b, t.hi_dim, 2, t.lo_dim) * g).mul_(2.0).view(b, -1)


def _j_inner(t: _Tables, g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """<g, J_q y> / 2 for every qubit q, per sample (b, n); states (b, 2^h, [2,] 2^lo) flattened."""
    p, b = t.plan, g.shape[0]
    out = []
    if t.h > 0:
        gh, yh = g.view(b, t.hi_dim, -1), y.view(b, t.hi_dim, -1)
        out.append(torch.bmm(gh, yh.transpose(1, 2)).view(b, -1) @ p.flip_hi)
    gl, yl = g.view(b, -1, t.lo_dim), y.view(b, -1, t.lo_dim)
    out.append(torch.bmm(gl.transpose(1, 2), yl).view(b, -1) @ p.flip_lo)
    return torch.cat(out, 1).mul_(0.5) if len(out) > 1 else out[0].mul_(0.5)


def _phase_grad(t: _Tables, g: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """sum over the chunk of dL/d(phase) of every layout position, given the phased state."""
    b = g.shape[0]
    gv, sv = g.view(b, t.hi_dim, 2, t.lo_dim), state.view(b, t.hi_dim, 2, t.lo_dim)
    d_re = -(gv[:, :, 0] * sv[:, :, 1]).sum(0)  # d Re(e^{ia} z)/da = -Im(out)
    d_im = (gv[:, :, 1] * sv[:, :, 0]).sum(0)  # d Im(e^{ia} z)/da = Re(out)
    return torch.stack([d_re, d_im], 1).reshape(-1)


def _backward_chunk(t: _Tables, x: torch.Tensor, grad: torch.Tensor, need_x: bool, acc: dict, kept=None):
    """dL/dx of one chunk (or None); adds the chunk's weight gradients to ``acc``. ``kept``: the
    chunk's states saved by the forward pass (else the forward of the chunk is run again)."""
    p = t.plan
    state, saved = kept if kept is not None else _forward_chunk(t, x, keep=True)
    saved = list(saved)  # popped below; the kept list may serve another backward (retain_graph)
    g = _measure_grad(t, state, grad)
    grad_x = None
    for layer in range(t.n_layers - 1, 0, -1):
        if layer < t.n_layers - 1:  # back through this layer's RZ phases and ring
            phased = saved.pop()
            acc["phase"][layer] += _phase_grad(t, g, phased)
            g = (g * t.cos[layer]).index_select(1, p.gs_inv).add_((g * t.sin[layer]).index_select(1, p.go_inv))
        y = saved.pop()
        g_theta = _j_inner(t, g, y)
        acc["ry"][layer] += g_theta.sum(0)
        if need_x and t.reupload:
            grad_x = g_theta if grad_x is None else grad_x.add_(g_theta)
        g = _apply_ry(t, g, _angles(t, x, layer), transpose=True)
    state0 = saved.pop()
    amp = saved.pop()
    acc["phase"][0] += _phase_grad(t, g, state0)
    b = g.shape[0]
    g_amp = (g.view(b, t.hi_dim, 2, t.lo_dim) * t.coef0).sum(2).view(b, -1).index_select(1, p.f)
    g_theta = _j_inner(t, g_amp, amp)
    acc["ry"][0] += g_theta.sum(0)
    if need_x:
        grad_x = g_theta if grad_x is None else grad_x.add_(g_theta)
    return grad_x


def _chunk_forward(t: _Tables, x: torch.Tensor, out: torch.Tensor, start: int, stop: int, keep: bool):
    state, saved = _forward_chunk(t, x[start:stop], keep=keep)
    out[start:stop] = _measure(t, state)
    return (state, saved) if keep else None


def _chunk_backward(t: _Tables, x, grad, grad_x, start: int, stop: int, kept=None):
    acc = {"ry": x.new_zeros(t.n_layers, t.n), "phase": x.new_zeros(t.n_layers, 2 ** (t.n + 1))}
    gx = _backward_chunk(t, x[start:stop], grad[start:stop], grad_x is not None, acc, kept)
    if grad_x is not None:
        grad_x[start:stop] = gx
    return acc


_POOL: dict = {}


def _map_chunks(fn: Callable, batch: int, chunk: int, device: torch.device) -> list:
    """``fn(start, stop)`` for every chunk. On a CPU with several torch threads the chunks run on
    that many worker threads, each single-threaded: no OpenMP barrier per small operation (a
    barrier waits for a thread the OS has descheduled when other processes share the cores) and
    each core keeps its chunk in its own cache. torch's thread count is restored afterwards."""
    ranges = [(i, min(i + chunk, batch)) for i in range(0, batch, chunk)]
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(ranges) < 2:
        return [fn(a, b) for a, b in ranges]
    from concurrent.futures import ThreadPoolExecutor

    workers = min(threads, len(ranges))
    pool = _POOL.get(threads)
    if pool is None:
        pool = _POOL[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qhqgan-circuit")
    inference = torch.is_inference_mode_enabled()
    torch.set_num_threads(1)  # read by each worker thread on its first operation (torch's setting is global)
    try:
        # workers take chunks one after another from a shared counter: a slow worker takes fewer
        lock, state, results = __import__("threading").Lock(), {"next": 0}, [None] * len(ranges)

        def work():
            while True:
                with lock:
                    k = state["next"]
                    state["next"] += 1
                if k >= len(ranges):
                    return
                with torch.inference_mode(inference), torch.no_grad():  # per thread: as the caller, no graph
                    results[k] = fn(*ranges[k])

        for future in [pool.submit(work) for _ in range(workers)]:
            future.result()
    finally:
        torch.set_num_threads(threads)
    return results


class _FusedCircuit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, plan, reupload, outputs, chunk, differentiable, keep):
        t = _Tables(plan, w, reupload, outputs)
        out = x.new_empty(x.shape[0], plan.n if outputs == "expval" else 2**plan.n)
        kept = _map_chunks(lambda a, b: _chunk_forward(t, x, out, a, b, keep), x.shape[0], chunk, x.device)
        ctx.kept = kept if keep else None
        ctx.plan, ctx.reupload, ctx.outputs, ctx.chunk = plan, reupload, outputs, chunk
        ctx.differentiable = differentiable
        ctx.save_for_backward(x, w)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: the differentiable operations, exact higher derivatives
            with torch.enable_grad():  # x and w as saved: the result stays connected to the graph
                out = ctx.differentiable(x, w)
                inputs = [v for v, need in ((x, need_x), (w, need_w)) if need]
                grads = list(torch.autograd.grad(out, inputs, grad, create_graph=True))
            return (grads.pop(0) if need_x else None, grads.pop(0) if need_w else None,
                    None, None, None, None, None, None)
        with torch.no_grad():
            t = _Tables(ctx.plan, w, ctx.reupload, ctx.outputs)
            grad_x = x.new_empty(x.shape) if need_x else None
            grad = grad.contiguous()
            kept = ctx.kept
            accs = _map_chunks(lambda a, b: _chunk_backward(t, x, grad, grad_x, a, b,
                                                            kept[a // ctx.chunk] if kept else None),
                               x.shape[0], ctx.chunk, x.device)
            grad_w = None
            if need_w:
                ry = torch.stack([a["ry"] for a in accs]).sum(0)
                phase = torch.stack([a["phase"] for a in accs]).sum(0)
                grad_phase = -0.5 * (phase @ ctx.plan.phase_src)  # (L, n); the last RZ's stays 0
                grad_w = torch.stack([ry, grad_phase], -1)
        return grad_x, grad_w, None, None, None, None, None, None


def run_fused(x: torch.Tensor, w: torch.Tensor, plan, reupload: bool, outputs: str,
              differentiable: Callable, chunk: Optional[int] = None) -> torch.Tensor:
    """(B, n) expectations or (B, 2^n) probabilities of the circuit, ``w.shape[0] >= 2`` layers.

    ``differentiable(x, w)`` computes the same with differentiable torch operations (used only
    when the backward pass is itself differentiated)."""
    if chunk is None:
        chunk = chunk_size(plan.n, x.device)
    # training: keep the states of every chunk for the backward pass when they fit the budget
    # (2 L states of 2^(n+1) values per sample), else the backward pass runs each chunk again
    keep = (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
            and x.shape[0] * 2 ** (plan.n + 1) * 2 * w.shape[0] * x.element_size() <= _KEEP_BYTES)
    return _FusedCircuit.apply(x.contiguous(), w, plan, reupload, outputs, int(chunk), differentiable, keep)
