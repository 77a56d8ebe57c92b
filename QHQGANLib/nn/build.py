"""Networks from their stored descriptions: what a model card's ``config`` holds and how it is rebuilt.

Console usage::

    >>> from QHQGANLib.nn.build import model_config, build_from_config
    >>> config = model_config(model)            # {"arch": "hqgan", "task": "enhance", ...}
    >>> fresh = build_from_config(config)       # the same architecture, freshly initialised
"""
from __future__ import annotations

from typing import Any, Dict

from ..quantum.layer import QuantumLayer
from .baselines import REDCNN
from .enhancer import HQGANGenerator
from .synthesis import build_from_config as build_synth_from_config


def model_config(model) -> Dict[str, Any]:
    """The architecture description stored with the weights."""
    if isinstance(model, HQGANGenerator):
        return {"arch": "hqgan" if model.config.mixer == "quantum" else "ablation", **model.config.to_dict()}
    return dict(model.config)


def build_from_config(config: Dict[str, Any]):
    """A freshly initialised network from :func:`model_config`'s description."""
    arch = config.get("arch")
    if arch == "redcnn":
        return REDCNN(width=int(config["width"]))
    if arch in ("hqgan", "ablation"):
        keys = ("task", "context", "width", "n_qubits", "n_layers", "reupload", "mixer", "scale")
        return HQGANGenerator(**{k: config[k] for k in keys if k in config})
    if arch in ("hqgan-synth", "dcgan", "wgan-gp", "ablation-synth"):
        return build_synth_from_config(config)
    raise ValueError(f"unknown architecture {arch!r} in the model description")


def set_quantum_backend(model, spec: str) -> None:
    """Switch every QuantumLayer in ``model`` to ``"torch"`` or ``"pennylane:<device>"``."""
    backend, _, device_name = spec.partition(":")
    if backend not in ("torch", "pennylane"):
        raise ValueError(f"quantum backend must be 'torch' or 'pennylane:<device>', got {spec!r}")
    for module in model.modules():
        if isinstance(module, QuantumLayer):
            module.to_backend(backend, device_name or None)
