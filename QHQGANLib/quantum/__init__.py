"""Layer 2, quantum: the variational circuit (PennyLane), its fast torch simulation, and the torch layer.

Imports nothing from QHQGANLib."""
