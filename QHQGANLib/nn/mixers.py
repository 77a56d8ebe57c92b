"""The quantum block and its controls: the circuit, classical MLPs in its place, and the per-pixel wrapper.

The hybrid networks (:mod:`~QHQGANLib.nn.enhancer`, :mod:`~QHQGANLib.nn.synthesis`) have one slot
that maps ``n_qubits`` angles to ``n_qubits`` values in [-1, 1]. What fills it (``MIXERS``):

* ``"quantum"``: the re-uploading circuit (:class:`~QHQGANLib.quantum.layer.QuantumLayer`),
  ``n_layers * n_qubits * 2`` trainable angles (:func:`circuit_parameters`).
* ``"mlp"``: the fair classical control, an ``n -> hidden -> n`` MLP with tanh, the same input
  and output widths as the circuit, a hidden width at least the circuit's width (``n_qubits``)
  and at least as many parameters as the circuit (:func:`fair_hidden`). 8 qubits, 2 layers
  (32 angles): 8 -> 8 -> 8, 144 parameters; 8 qubits, 4 layers (64 angles): the same.
* ``"bottleneck"``: the old "parameter-matched ablation", kept so its shipped weights load: the
  hidden width is ``round((target - n) / (2n + 1))`` (:func:`bottleneck_hidden`), an
  8 -> 1 -> 8 bottleneck of 25 parameters against 32 angles (8 -> 3 -> 8, 59 against 64, at
  4 layers). NOT a fair control: a one-unit bottleneck says nothing about the circuit.
* ``"none"``: no block at all (the network without the circuit: :func:`make_mixer` gives
  ``nn.Identity``; the enhancement generator drops the whole :class:`PixelwiseMixer`).

Console usage::

    >>> from QHQGANLib.nn.mixers import PixelwiseMixer, fair_hidden
    >>> fair_hidden(8, 32)                               # 8 qubits, 2 layers
    8
    >>> mix = PixelwiseMixer(channels=64, n_qubits=8, n_layers=2, mixer="quantum")
    >>> mix(torch.zeros(1, 64, 16, 16)).shape          # features + circuit outputs, same shape
    torch.Size([1, 64, 16, 16])
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..quantum.layer import QuantumLayer

#: What can fill the quantum slot (see the module docstring).
MIXERS = ("quantum", "mlp", "bottleneck", "none")
#: Stored by model cards written before the controls were named: the bottleneck.
LEGACY_MIXERS = {"classical": "bottleneck"}


def circuit_parameters(n_qubits: int, n_layers: int) -> int:
    """Trainable angles of the circuit: two rotations per qubit per layer."""
    return n_layers * n_qubits * 2


def mlp_parameters(n_features: int, hidden: int) -> int:
    """Parameters of an ``n -> hidden -> n`` MLP with biases."""
    return hidden * (2 * n_features + 1) + n_features


def bottleneck_hidden(n_features: int, target_params: int) -> int:
    """The legacy sizing: the hidden width whose MLP has *about* ``target_params`` parameters,
    rounded (1 for 8 qubits, 2 layers; 3 for 8 qubits, 4 layers)."""
    return max(1, int(round((target_params - n_features) / (2 * n_features + 1))))


def fair_hidden(n_features: int, target_params: int) -> int:
    """The fair control's hidden width: at least ``n_features`` (no bottleneck narrower than the
    circuit) and the smallest width whose MLP has at least ``target_params`` parameters."""
    enough = max(1, math.ceil((target_params - n_features) / (2 * n_features + 1)))
    return max(n_features, enough)


def default_hidden(mixer: str, n_qubits: int, n_layers: int) -> Optional[int]:
    """The hidden width a classical mixer gets when none is given (None for "quantum"/"none")."""
    target = circuit_parameters(n_qubits, n_layers)
    if mixer == "mlp":
        return fair_hidden(n_qubits, target)
    if mixer == "bottleneck":
        return bottleneck_hidden(n_qubits, target)
    return None


class ClassicalMixer(nn.Module):
    """``n -> hidden -> n`` MLP with tanh: the circuit's input (angles) and output range ([-1, 1])."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden width must be at least 1, got {hidden}")
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(),
                                 nn.Linear(hidden, n_features), nn.Tanh())
        self.hidden = int(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_mixer(mixer: str) -> str:
    if mixer not in MIXERS:
        legacy = f" (stored cards' {mixer!r} is built by nn.build)" if mixer in LEGACY_MIXERS else ""
        raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}{legacy}")
    return mixer


def make_mixer(mixer: str, n_qubits: int, n_layers: int, hidden: Optional[int] = None, reupload: bool = True,
               quantum_backend: str = "torch", quantum_device: str = "default.qubit") -> nn.Module:
    """What fills the quantum slot: (N, n_qubits) angles -> (N, n_qubits) values (see ``MIXERS``).

    ``hidden``: the MLP's hidden width for "mlp" / "bottleneck" (None: :func:`default_hidden`).
    """
    check_mixer(mixer)
    if mixer == "quantum":
        return QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=reupload,
                            backend=quantum_backend, device_name=quantum_device)
    if mixer == "none":
        return nn.Identity()
    return ClassicalMixer(n_qubits, hidden if hidden is not None else default_hidden(mixer, n_qubits, n_layers))


class PixelwiseMixer(nn.Module):
    """Applies a feature-vector mixer (quantum or classical) at every position of a feature map.

    features (B, C, H, W) -> angles = pi * tanh(1x1 conv) (B, n, H, W) -> mixer per position
    -> 1x1 conv back to C channels, added to the features (residual path). With ``residual=False`` the
    mixer's outputs themselves, (B, n, H, W) (the enhancer's modulating placement uses them).
    """

    def __init__(self, channels: int, n_qubits: int, n_layers: int, mixer: str = "quantum",
                 reupload: bool = True, quantum_backend: str = "torch",
                 quantum_device: str = "default.qubit", hidden: Optional[int] = None, residual: bool = True):
        super().__init__()
        if check_mixer(mixer) == "none":
            raise ValueError("mixer 'none' has no per-pixel block: leave the PixelwiseMixer out")
        self.to_angles = nn.Conv2d(channels, n_qubits, 1)
        self.mixer = make_mixer(mixer, n_qubits, n_layers, hidden, reupload, quantum_backend, quantum_device)
        self.from_outputs = nn.Conv2d(n_qubits, channels, 1) if residual else None
        if residual:
            nn.init.zeros_(self.from_outputs.weight)  # starts as identity: the residual path alone
            nn.init.zeros_(self.from_outputs.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        angles = math.pi * torch.tanh(self.to_angles(features))
        b, n, h, w = angles.shape
        flat = angles.permute(0, 2, 3, 1).reshape(-1, n)
        out = self.mixer(flat).to(features.dtype)
        out = out.reshape(b, h, w, n).permute(0, 3, 1, 2)
        return features + self.from_outputs(out) if self.from_outputs is not None else out
