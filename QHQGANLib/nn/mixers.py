"""The bottleneck mixers: the quantum circuit, its classical ablation, and the per-pixel wrapper.

Console usage::

    >>> from QHQGANLib.nn.mixers import PixelwiseMixer
    >>> mix = PixelwiseMixer(channels=64, n_qubits=8, n_layers=2, mixer="quantum")
    >>> mix(torch.zeros(1, 64, 16, 16)).shape          # features + circuit outputs, same shape
    torch.Size([1, 64, 16, 16])
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..quantum.layer import QuantumLayer


class ClassicalMixer(nn.Module):
    """n -> hidden -> n MLP with tanh, sized to about ``target_params`` parameters.

    Stands in for a ``QuantumLayer`` with ``target_params`` trainable angles in the
    ablation: same input (angles) and output (values in [-1, 1]) as the circuit.
    """

    def __init__(self, n_features: int, target_params: int):
        super().__init__()
        # params = n*h + h + h*n + n  ->  h = (target - n) / (2n + 1), at least 1
        hidden = max(1, int(round((target_params - n_features) / (2 * n_features + 1))))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(),
                                 nn.Linear(hidden, n_features), nn.Tanh())
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelwiseMixer(nn.Module):
    """Applies a feature-vector mixer (quantum or classical) at every position of a feature map.

    features (B, C, H, W) -> angles = pi * tanh(1x1 conv) (B, n, H, W) -> mixer per position
    -> 1x1 conv back to C channels, added to the features (residual path).
    """

    def __init__(self, channels: int, n_qubits: int, n_layers: int, mixer: str = "quantum",
                 reupload: bool = True, quantum_backend: str = "torch",
                 quantum_device: str = "default.qubit"):
        super().__init__()
        self.to_angles = nn.Conv2d(channels, n_qubits, 1)
        if mixer == "quantum":
            self.mixer = QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=reupload,
                                      backend=quantum_backend, device_name=quantum_device)
        elif mixer == "classical":
            self.mixer = ClassicalMixer(n_qubits, target_params=n_layers * n_qubits * 2)
        else:
            raise ValueError(f"mixer must be 'quantum' or 'classical', got {mixer!r}")
        self.from_outputs = nn.Conv2d(n_qubits, channels, 1)
        nn.init.zeros_(self.from_outputs.weight)  # starts as identity: the residual path alone
        nn.init.zeros_(self.from_outputs.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        angles = math.pi * torch.tanh(self.to_angles(features))
        b, n, h, w = angles.shape
        flat = angles.permute(0, 2, 3, 1).reshape(-1, n)
        out = self.mixer(flat).to(features.dtype)
        out = out.reshape(b, h, w, n).permute(0, 3, 1, 2)
        return features + self.from_outputs(out)
