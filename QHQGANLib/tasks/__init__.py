"""Layer 5, tasks: what the API exports: enhance, super-resolve, synthesize, evaluate, classical references.

Imports from the layers below; nothing here imports from apps."""
