"""Layer 2, metrics: image quality in HU windows (PSNR, SSIM, noise) and synthetic-CT fidelity, diversity, memorization.

Imports only from core."""
