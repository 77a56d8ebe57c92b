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

from .core.constants import __version__

# public name -> module that defines it (loaded on first use, PEP 562); the layers are described
# in docs/architecture.md: core, metrics, physics, quantum, nn, training, tasks, apps
_LAZY = {
    "Volume": "core.volume",
    "read_volume": "core.io",
    "write_volume": "core.io",
    "VolumeReadError": "core.io",
    "OperationCancelled": "core.progress",
    "export_dicom_series": "core.dicom_export",
    "psnr": "metrics.image",
    "ssim": "metrics.image",
    "evaluate_synthetic": "metrics.synthetic",
    "simulate_low_dose": "physics.lowdose",
    "ScannerModel": "physics.lowdose",
    "degrade_resolution": "physics.resolution",
    "tissue_labels": "physics.tissue_classes",
    "QuantumLayer": "quantum.layer",
    "list_models": "nn.weights",
    "load_model": "nn.weights",
    "save_model": "nn.weights",
    "TrainConfig": "training.enhancement",
    "train_enhancer": "training.enhancement",
    "SynthConfig": "training.synthesis",
    "train_synth": "training.synthesis",
    "LabelSynthConfig": "training.label_synthesis",
    "train_from_labels": "training.label_synthesis",
    "enhance": "tasks.enhance",
    "super_resolve": "tasks.enhance",
    "synthesize": "tasks.synthesize",
    "insert_lesion": "tasks.lesion",
    "synthesize_from_labels": "tasks.label_synthesis",
    "evaluate_enhancement": "tasks.evaluate",
    "evaluate_super_resolution": "tasks.evaluate",
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
