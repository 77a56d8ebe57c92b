"""Layer 2, physics: simulated acquisitions (lower dose in the projection domain, lower resolution).

Imports only from core."""
