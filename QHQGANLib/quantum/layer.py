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
  matrix products with the half-register blocks, ``A @ Psi @ C^T`` (A and C built from the
  product-state amplitudes of the angles with one product by a fixed sign table),
* runs the layers as one autograd function (:mod:`QHQGANLib.quantum.fused`): the batch goes in
  chunks that stay in the CPU's cache, on as many worker threads as torch has (each single-
  threaded, so no OpenMP barrier per small operation), and the backward pass is the hand-written
  adjoint of every gate (angle gradients ``<G, J_q Y> / 2`` from the layer's output, no
  differentiation of the Kronecker construction); in training it reuses the chunks' states when
  they fit a memory budget and recomputes them otherwise (equal to the differentiable operations,
  ``method="autograd"``, to float rounding; a differentiated backward pass uses those),
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
from typing import Optional

import numpy as np
import torch
from torch import nn

from .circuit import circuit_ops, ring_pairs  # noqa: F401  (ring_pairs: part of this module's API)
from .simulator import MAX_TORCH_QUBITS, simulate_torch

__all__ = ["QuantumLayer", "circuit_ops", "ring_pairs", "simulate_torch", "MAX_TORCH_QUBITS"]

_OUTPUTS = ("expval", "probs")
_BACKENDS = ("torch", "pennylane")


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
        if flat.dtype in (torch.float16, torch.bfloat16):  # amplitudes need float32 (mixed precision)
            flat = flat.float()
        # outside autocast: the simulation's custom backward passes mix real and imaginary parts
        # and must see the dtypes they were given (mixed-precision training runs the circuit in float32)
        with torch.autocast(device_type="cuda" if flat.is_cuda else "cpu", enabled=False), \
                torch.profiler.record_function("qhqgan.circuit"):  # a label for profiles (free otherwise)
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
