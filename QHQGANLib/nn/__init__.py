"""Layer 3, nn: the networks (hybrid generators, baselines, critics), their descriptions and weights files.

Imports from core and quantum."""
