"""Networks from their stored descriptions: what a model card's ``config`` holds and how it is rebuilt.

Architectures (``config["arch"]``): ``hqgan`` and its controls ``mlp-control``, ``no-circuit``,
``bottleneck-ablation`` (:mod:`QHQGANLib.nn.enhancer`), ``redcnn`` (:mod:`QHQGANLib.nn.baselines`),
the synthesis generators (``hqgan-synth``, ``mlp-control-synth``, ... :mod:`QHQGANLib.nn.synthesis`) and the
label-conditioned generators (``hqgan-labels``, ``mlp-control-labels``, ``spade-labels``:
:mod:`QHQGANLib.nn.label_synthesis`).

Legacy descriptions (cards written before the controls were named) still build the very same
network: enhancement ``arch "ablation"`` with ``mixer "classical"`` and no ``mlp_hidden`` is the
8 -> 1 -> 8 bottleneck (``mixer "bottleneck"``, hidden width by the legacy rounding, 1 at 8 qubits
and 2 layers); synthesis ``arch "ablation-synth"``, ``method "ablation"`` is ``bottleneck-ablation``
(8 -> 3 -> 8 at 8 qubits, 4 layers); a RED-CNN card without ``context`` is the single-slice one.

Console usage::

    >>> from QHQGANLib.nn.build import model_config, build_from_config
    >>> config = model_config(model)            # {"arch": "hqgan", "task": "enhance", ...}
    >>> fresh = build_from_config(config)       # the same architecture, freshly initialised
"""
from __future__ import annotations

from typing import Any, Dict

from ..core.kinds import LEGACY_NAMES
from ..quantum.layer import QuantumLayer
from .baselines import REDCNN
from .enhancer import MIXER_OF_ARCH, HQGANGenerator, placement_of_arch
from .label_synthesis import METHOD_OF_ARCH as LABEL_ARCHS
from .label_synthesis import build_from_config as build_label_from_config
from .mixers import LEGACY_MIXERS
from .synthesis import ARCH_OF_METHOD
from .synthesis import build_from_config as build_synth_from_config

#: Enhancement architecture names of earlier versions: "ablation" was the bottleneck.
LEGACY_ENHANCE_ARCHS = LEGACY_NAMES
_GENERATOR_KEYS = ("task", "context", "width", "n_qubits", "n_layers", "reupload", "mixer", "scale", "mlp_hidden",
                   "placement")


def model_config(model) -> Dict[str, Any]:
    """The architecture description stored with the weights."""
    if isinstance(model, HQGANGenerator):
        return {"arch": model.arch, **model.config.to_dict()}
    return dict(model.config)


def build_from_config(config: Dict[str, Any]):
    """A freshly initialised network from :func:`model_config`'s description (or a legacy one)."""
    arch = config.get("arch")
    if arch == "redcnn":
        return REDCNN(width=int(config["width"]), context=int(config.get("context", 0)))
    arch = LEGACY_ENHANCE_ARCHS.get(arch, arch)
    if arch in MIXER_OF_ARCH:
        kwargs = {k: config[k] for k in _GENERATOR_KEYS if k in config}
        mixer = kwargs.get("mixer", MIXER_OF_ARCH[arch])
        kwargs["mixer"] = LEGACY_MIXERS.get(mixer, mixer)
        # cards written before there was a choice of placement hold none: the residual one
        kwargs["placement"] = kwargs.get("placement", "residual")
        if kwargs["mixer"] != MIXER_OF_ARCH[arch] or kwargs["placement"] != placement_of_arch(arch):
            raise ValueError(f"architecture {config.get('arch')!r} with mixer {mixer!r} and placement "
                             f"{kwargs['placement']!r} in the model description")
        return HQGANGenerator(**kwargs)
    if arch in set(ARCH_OF_METHOD.values()):
        return build_synth_from_config(config)
    if arch in LABEL_ARCHS:
        return build_label_from_config(config)
    raise ValueError(f"unknown architecture {config.get('arch')!r} in the model description")


def check_pennylane_device(name: str) -> None:
    """Refuse a PennyLane device that is not installed, naming the ones that are (a ValueError, not a crash)."""
    import pennylane as qml

    try:
        qml.device(name, wires=1)
    except Exception as exc:  # DeviceError or the plugin's own import failure
        installed = sorted(getattr(qml, "plugin_devices", {}) or {})
        raise ValueError(f"PennyLane device {name!r} cannot be used ({exc}); installed devices: "
                         f"{', '.join(installed) or 'none'}") from None


def set_quantum_backend(model, spec: str) -> None:
    """Switch every QuantumLayer in ``model`` to ``"torch"`` or ``"pennylane:<device>"``."""
    backend, _, device_name = spec.partition(":")
    if backend not in ("torch", "pennylane"):
        raise ValueError(f"quantum backend must be 'torch' or 'pennylane:<device>', got {spec!r}")
    if backend == "pennylane" and device_name:
        check_pennylane_device(device_name)
    for module in model.modules():
        if isinstance(module, QuantumLayer):
            module.to_backend(backend, device_name or None)
