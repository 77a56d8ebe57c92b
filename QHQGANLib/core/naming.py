"""The one place that names QHQGAN's outputs and marks synthetic ones.

The Slicer panel's background runner (:mod:`QHQGANLib.apps.request`,
:mod:`QHQGANLib.apps.node_task`) and the in-process scene bridge
(:mod:`QHQGANLib.apps.scene`) both name their output nodes, files and attributes here,
so a result is called the same whichever path made it:

======================  ==========================================  =========================
task                    node name                                   temporary file
======================  ==========================================  =========================
enhance                 ``<input>_enhanced``                        ``output.nrrd``
super-resolve           ``<input>_SRx2``                            ``output.nrrd``
super-resolve, axis z   ``<input>_SRz2`` (x3: ``_SRz3``, ...)       ``output.nrrd``
simulate-low-dose       ``<input>_dose25pct``                       ``output.nrrd``
degrade-resolution      ``<input>_lowres2x``                        --
synthesize              ``SYNTHETIC_<model>_seed<seed>``            ``output_synthetic.nrrd``
insert-lesion           ``SYNTHETIC_lesion_<kind>`` (+ ``_label``)  ``output_synthetic.nrrd``
synthesize-from-labels  ``SYNTHETIC_<model>_seed<seed>_sample<i>``  ``output_synthetic.nrrd``
======================  ==========================================  =========================

A synthetic output never takes the name of a real input (it is not of that patient) and
carries the node attribute ``QHQGAN.synthetic = "true"``
(:data:`SYNTHETIC_ATTRIBUTE`, :data:`SYNTHETIC_VALUE`). No torch, no Slicer.

Console usage::

    >>> from QHQGANLib.core.naming import output_name
    >>> output_name("super-resolve", "CTChest", scale=2)
    'CTChest_SRx2'
    >>> output_name("synthesize", "CTChest", model="hqgan-synth", seed=0)
    'SYNTHETIC_hqgan-synth_seed0'
"""
from __future__ import annotations

import re
from typing import Dict, Optional

from .kinds import LESION_TASK, SYNTHETIC_TASKS

#: Prefix of every node attribute QHQGAN writes (``QHQGAN.task``, ``QHQGAN.model``, ...).
ATTRIBUTE_PREFIX = "QHQGAN."
#: The attribute (after the prefix) and value marking a synthetic output.
SYNTHETIC_ATTRIBUTE = "synthetic"
SYNTHETIC_VALUE = "true"
#: The word every synthetic output's name (node or file) contains.
SYNTHETIC_WORD = "synthetic"
#: Base of names without an input (synthesis).
NAME_BASE = "QHQGAN"


def output_suffix(task: str, scale: int = 2, dose: float = 0.25, axis: str = "in-plane") -> str:
    """The suffix naming an output after its input, e.g. ``enhanced``, ``SRx2``, ``SRz3`` (through-plane),
    ``dose25pct``."""
    if task == "simulate-low-dose":
        return f"dose{int(round(float(dose) * 100))}pct"
    if task == "super-resolve":
        return f"SR{'z' if axis == 'z' else 'x'}{int(scale)}"
    if task == "degrade-resolution":
        return f"lowres{int(scale)}x"
    if task == "enhance":
        return "enhanced"
    if task in SYNTHETIC_TASKS:
        return SYNTHETIC_WORD
    raise ValueError(f"unknown task {task!r}")


def model_label(model: str) -> str:
    """A shipped model's name, or a weights file's stem, safe in a node or file name."""
    stem = re.sub(r"\.safetensors$", "", re.split(r"[\\/]", str(model))[-1])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "model"


def output_name(task: str, input_name: Optional[str] = None, scale: int = 2, dose: float = 0.25,
                model: Optional[str] = None, seed: Optional[int] = None, axis: str = "in-plane",
                lesion: Optional[str] = None) -> str:
    """The name of a new output node.

    Synthesis ignores ``input_name``: synthetic slices are not of the input's patient, so
    their name is ``SYNTHETIC[_<model>][_seed<seed>]`` (first word in capitals: the mark is the
    first thing a reader sees in Slicer's data tree; without a model ``SYNTHETIC_QHQGAN``); so
    does synthesis from labels. A lesion inserted into a scan is ``SYNTHETIC_lesion_<lesion>``
    (the kind): the result is no real patient's image, so it takes no patient's name either.
    """
    if task == LESION_TASK:
        return f"{SYNTHETIC_WORD.upper()}_lesion_{model_label(lesion or 'inserted')}"
    if task in SYNTHETIC_TASKS:
        name = SYNTHETIC_WORD.upper()
        if model:
            name += f"_{model_label(model)}"
        else:
            name += f"_{NAME_BASE}"
        if seed is not None:
            name += f"_seed{int(seed)}"
        return name
    return f"{input_name or NAME_BASE}_{output_suffix(task, scale, dose, axis)}"


def output_file_name(task: str, extension: str = ".nrrd") -> str:
    """The child's output file in the panel's temporary folder (synthetic files say so in their names)."""
    return f"output_{SYNTHETIC_WORD}{extension}" if task in SYNTHETIC_TASKS else f"output{extension}"


def synthetic_attributes() -> Dict[str, str]:
    """The attributes (without the prefix) that mark an output synthetic."""
    return {SYNTHETIC_ATTRIBUTE: SYNTHETIC_VALUE}


def is_synthetic_node(node) -> bool:
    """True when an MRML node carries QHQGAN's synthetic mark."""
    return node is not None and node.GetAttribute(ATTRIBUTE_PREFIX + SYNTHETIC_ATTRIBUTE) == SYNTHETIC_VALUE
