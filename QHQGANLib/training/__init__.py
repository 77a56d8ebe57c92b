"""Layer 4, training: one training loop (device, AMP, DDP, checkpoints) and what enhancement and synthesis put in it.

Imports from core, physics, quantum and nn."""
