"""What the Slicer panel asks for: a :class:`TaskRequest`, and the ``qhqgan`` command line that runs it.

The options, their defaults and their ranges come from :mod:`QHQGANLib.core.options`
(the CLI parses them with the same schema), the tasks and default models from
:mod:`QHQGANLib.core.kinds`.

Console usage::

    >>> from QHQGANLib.apps.request import TaskRequest, build_command
    >>> request = TaskRequest("simulate-low-dose", dose=0.25, seed=0)
    >>> build_command(request, "ct.nrrd", "ct_25pct.nrrd")
    ['/usr/bin/python3', '-m', 'QHQGANLib', 'simulate-low-dose', 'ct.nrrd', 'ct_25pct.nrrd', '--dose', '0.25', ...]
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..core.kinds import (LABEL_SYNTH_TASK, LESION_TASK, MODEL_TASKS, TASKS, default_model, models_for_task,
                          task_kind)
from ..core.naming import output_name, output_suffix, synthetic_attributes
from ..core.options import check_task_values, option_default, task_argv, validate

#: What the panel says when no label-synthesis model is installed (issue #30 item 4): Apply stays disabled.
NO_LABEL_MODEL = ("no label-synthesis model is installed: train one with `qhqgan train-from-labels` or choose a "
                  "weights file")

PathLike = Union[str, "os.PathLike[str]"]


@dataclasses.dataclass
class TaskRequest:
    """What to run and with which options; :func:`build_command` turns it into a command line.

    Every field but ``task`` is an option of :data:`QHQGANLib.core.options.OPTIONS` and is
    checked against it (a ValueError naming the option and its range). ``model`` is the
    name of a shipped model or the path of a weights file; None means the task's default
    model. ``quantum_backend`` is ``"torch"`` or ``"pennylane:DEVICE"``.
    """

    task: str = "enhance"
    model: Optional[str] = option_default("model")
    quantum_backend: str = option_default("quantum_backend")
    device: str = option_default("device")
    tile_size: int = option_default("tile_size")
    overlap: float = option_default("overlap")
    tile_batch: int = option_default("tile_batch")
    axis: str = option_default("axis")
    scale: int = option_default("scale")
    fine_tune_steps: int = option_default("fine_tune_steps")
    n_samples: int = option_default("n_samples")
    seed: int = option_default("seed")
    dose: float = option_default("dose")
    reference_noise_hu: Optional[float] = option_default("reference_noise_hu")
    photons: Optional[float] = option_default("photons")
    strength: float = option_default("strength")
    target_noise_hu: Optional[float] = option_default("target_noise_hu")
    adapt_steps: int = option_default("adapt_steps")
    adapt_time_limit: float = option_default("adapt_time_limit")
    output_type: str = option_default("output_type")
    lesion_kind: str = option_default("lesion_kind")
    lesion_hu: Optional[float] = option_default("lesion_hu")
    texture: str = option_default("texture")
    edge_mm: float = option_default("edge_mm")

    def __post_init__(self) -> None:
        task_kind(self.task)  # ValueError for an unknown task
        for field in dataclasses.fields(self):
            if field.name != "task":
                setattr(self, field.name, validate(field.name, getattr(self, field.name)))
        check_task_values(self.task, self.options())  # options that depend on each other (scale and axis)

    @property
    def needs_input(self) -> bool:
        return task_kind(self.task).needs_input

    def options(self) -> Dict[str, Any]:
        """The option values, by option name (without ``task``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "task"}

    def model_name(self) -> Optional[str]:
        """The model that will run: the one asked for, else the task's default (None without a model)."""
        if self.task == "super-resolve":
            return self.model or default_model(self.task, scale=self.scale, axis=self.axis)
        return self.model or default_model(self.task, scale=self.scale)

    def output_suffix(self) -> str:
        """The suffix naming the output after the input, e.g. ``CTChest_enhanced`` (:mod:`QHQGANLib.core.naming`)."""
        return output_suffix(self.task, scale=self.scale, dose=self.dose, axis=self.axis)

    def attributes(self) -> Dict[str, Any]:
        """The options worth recording on the output node (``QHQGAN.<key>`` attributes)."""
        attributes: Dict[str, Any] = {"task": self.task}
        if self.task == LESION_TASK:  # a real scan with a lesion its patient does not have: synthetic
            attributes.update(lesion_kind=self.lesion_kind, texture=self.texture, edge_mm=self.edge_mm,
                              **synthetic_attributes())
            if self.lesion_hu is not None:
                attributes["lesion_hu"] = self.lesion_hu
            if self.texture == "noise":
                attributes["seed"] = self.seed
            return attributes
        if self.task == "simulate-low-dose":
            attributes.update(dose_fraction=self.dose, seed=self.seed)
            attributes.update({k: v for k, v in (("reference_noise_hu", self.reference_noise_hu),
                                                 ("photons", self.photons)) if v is not None})
            return attributes
        attributes.update(model=self.model_name(), quantum_backend=self.quantum_backend, device=self.device)
        if self.task in ("synthesize", LABEL_SYNTH_TASK):
            attributes.update(n_samples=self.n_samples, seed=self.seed, **synthetic_attributes())
        else:
            attributes.update(tile_size=self.tile_size, overlap=self.overlap)
        if self.task == "enhance" and self.adapt_steps:
            attributes.update(adapt_steps=self.adapt_steps, adapt_time_limit=self.adapt_time_limit)
        if self.task == "super-resolve":
            attributes.update(scale=self.scale, axis=self.axis)
            if self.axis == "z":
                attributes["fine_tune_steps"] = self.fine_tune_steps
        return attributes


#: Names of Slicer's Python launcher and of the interpreter it starts (bin/ of a Slicer install).
SLICER_LAUNCHERS = ("PythonSlicer", "PythonSlicer.exe")
SLICER_REAL_PYTHONS = ("python-real", "python-real.exe")


def python_executable(executable: Optional[str] = None, in_slicer: Optional[bool] = None) -> str:
    """The Python that runs the child: this interpreter, through Slicer's launcher where it has one.

    * In the Slicer application ``sys.executable`` is already ``PythonSlicer`` (Slicer sets it:
      ``Base/QTCore/qSlicerCoreApplication.cxx``, "Set 'sys.executable' so that Slicer can be
      used as a regular python interpreter", in 5.8, 5.10 and main): it is used as it is.
    * In ``PythonSlicer`` itself ``sys.executable`` is ``bin/python-real``, which needs the
      launcher's environment: the ``PythonSlicer`` beside it is used (as ``slicer.util``'s
      ``_executePythonModule`` does, ``Base/Python/slicer/util.py``).
    * In the Slicer application with an empty ``sys.executable``, ``PythonSlicer`` on PATH
      (Slicer puts its ``bin`` first on PATH).
    * Anywhere else: ``sys.executable``, never a ``PythonSlicer`` found on PATH (that would be
      another interpreter, without this one's packages).
    """
    exe = Path(executable if executable is not None else sys.executable or "")
    if exe.name in SLICER_LAUNCHERS and exe.is_file():
        return str(exe)
    if exe.name in SLICER_REAL_PYTHONS:
        for name in SLICER_LAUNCHERS:
            if (exe.parent / name).is_file():
                return str(exe.parent / name)
    if in_slicer is None:
        in_slicer = _in_slicer_application()
    if in_slicer and not (exe.name and exe.is_file() and "python" in exe.name.lower()):
        found = shutil.which("PythonSlicer")
        if found:
            return found
    if not exe.name:
        raise RuntimeError("no Python interpreter to run the task: sys.executable is empty")
    return str(exe)


def _in_slicer_application() -> bool:
    """True inside the Slicer application (``slicer.app`` exists), False in plain Python."""
    slicer = sys.modules.get("slicer")
    return getattr(slicer, "app", None) is not None


def build_command(request: TaskRequest, input_path: Optional[PathLike], output_path: PathLike,
                  python: Optional[str] = None, mask_path: Optional[PathLike] = None,
                  label_path: Optional[PathLike] = None) -> List[str]:
    """The child's argv: ``[python, "-m", "QHQGANLib", TASK, [INPUT], OUTPUT, ...options, "--progress", "lines"]``.

    ``insert-lesion`` also takes the lesion's mask after the input (``mask_path``, required) and writes its
    label map to ``label_path`` (``--label-out``; default: the command's own); ``synthesize-from-labels``
    reads the label map as INPUT and writes ``n_samples`` files (``--samples``).
    """
    argv = [python or python_executable(), "-m", "QHQGANLib", request.task]
    if request.needs_input:
        if input_path is None:
            raise ValueError(f"the {request.task} task needs an input volume")
        argv.append(str(input_path))
    if request.task == LESION_TASK:
        if mask_path is None:
            raise ValueError("the insert-lesion task needs a mask (where the lesion goes)")
        argv.append(str(mask_path))
    elif mask_path is not None:
        raise ValueError(f"the {request.task} task takes no mask")
    argv.append(str(output_path))
    argv += task_argv(request.task, request.options())
    if request.task == LESION_TASK and label_path is not None:
        argv += ["--label-out", str(label_path)]
    if request.task == LABEL_SYNTH_TASK:
        argv += ["--samples", str(request.n_samples)]
    return argv + ["--progress", "lines"]


def output_size(task: str, size_xyz, scale: int = 2, axis: str = "in-plane") -> tuple:
    """The (x, y, slices) size of the task's result for an input of ``size_xyz``; through-plane
    super-resolution: at most ``scale`` times the slices."""
    x, y, z = (int(v) for v in size_xyz)
    if task != "super-resolve":
        return x, y, z
    s = int(scale)
    return (x, y, z * s) if axis == "z" else (x * s, y * s, z)


def output_voxels(request: TaskRequest, size_xyz) -> Optional[int]:
    """The number of voxels the task's result will have (:func:`output_size`); None for synthesis (no input)."""
    if not request.needs_input:
        return None
    x, y, z = output_size(request.task, size_xyz, request.scale, request.axis)
    return x * y * z


def default_output_name(request: TaskRequest, input_node=None) -> str:
    """``<input name>_<suffix>``, e.g. ``CTChest_enhanced``; synthesis: ``SYNTHETIC_<model>_seed<seed>``
    whatever the input (:func:`QHQGANLib.core.naming.output_name`)."""
    base = input_node.GetName() if input_node is not None else None
    return output_name(request.task, base, scale=request.scale, dose=request.dose,
                       model=request.model_name() if request.task in ("synthesize", LABEL_SYNTH_TASK) else None,
                       seed=request.seed, axis=request.axis, lesion=request.lesion_kind)


def task_unavailable_reason(task: str) -> Optional[str]:
    """None when ``task`` can run here, else why not (an unknown task, or no trained model installed)."""
    if task not in TASKS:
        return f"unknown task {task!r}; expected one of {', '.join(TASKS)}"
    if task in MODEL_TASKS and not models_for_task(task):
        from ..core.resources import models_dir

        if task == LABEL_SYNTH_TASK:  # none is shipped yet: the user trains one or gives a weights file
            return NO_LABEL_MODEL
        return f"no trained model for '{task}' is installed (in {models_dir()})"
    return None
