"""The variational circuit of the hybrid GAN, defined once with PennyLane operations.

Both backends of :class:`~QHQGANLib.quantum.layer.QuantumLayer` run exactly this circuit:
the PennyLane QNode calls :func:`circuit_ops`; the fast torch simulation
(:mod:`QHQGANLib.quantum.simulator`) reproduces it gate for gate (tests compare them).

Console usage::

    >>> import pennylane as qml, torch
    >>> from QHQGANLib.quantum.circuit import circuit_ops
    >>> with qml.tape.QuantumTape() as tape:
    ...     circuit_ops(torch.zeros(4), torch.zeros(2, 4, 2), n_qubits=4, n_layers=2)
    >>> [op.name for op in tape.operations][:5]
    ['RY', 'RY', 'RY', 'RY', 'RY']
"""
from __future__ import annotations

__all__ = ["ring_pairs", "circuit_ops"]


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
