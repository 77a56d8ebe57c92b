"""QHQGANLib: hybrid quantum-classical GAN tools for CT, the library under the QHQGAN Slicer module.

Importing this package is cheap: torch, PennyLane and SimpleITK load only when a
function that needs them is first used.

Console usage (Slicer's Python console or plain Python)::

    >>> import QHQGANLib as q
    >>> ct = q.read_volume("/path/to/ct_series_folder")          # DICOM, NRRD, NIfTI, MHA
    >>> low = q.simulate_low_dose(ct, dose_fraction=0.25, seed=0) # quarter dose, same grid
    >>> q.psnr(low, ct), q.ssim(low, ct)                           # in HU, window [-1024, 3071]
    >>> layer = q.QuantumLayer(n_qubits=8, n_layers=4)             # a torch nn.Module
    >>> q.write_volume(low, "/tmp/ct_quarter_dose.nrrd")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first use, PEP 562)
_LAZY = {
    "Volume": "volume",
    "read_volume": "io",
    "write_volume": "io",
    "VolumeReadError": "io",
    "simulate_low_dose": "lowdose",
    "degrade_resolution": "lowdose",
    "ScannerModel": "lowdose",
    "QuantumLayer": "quantum",
    "enhance": "inference",
    "super_resolve": "inference",
    "list_models": "registry",
    "load_model": "registry",
    "synthesize": "synthesis",
    "export_dicom_series": "dicom_export",
    "psnr": "metrics",
    "ssim": "metrics",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
