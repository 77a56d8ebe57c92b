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

from ..core.kinds import MODEL_TASKS, TASKS, default_model, models_for_task, task_kind
from ..core.options import option_default, task_argv, validate

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
    scale: int = option_default("scale")
    n_samples: int = option_default("n_samples")
    seed: int = option_default("seed")
    dose: float = option_default("dose")
    reference_noise_hu: Optional[float] = option_default("reference_noise_hu")
    photons: Optional[float] = option_default("photons")

    def __post_init__(self) -> None:
        task_kind(self.task)  # ValueError for an unknown task
        for field in dataclasses.fields(self):
            if field.name != "task":
                setattr(self, field.name, validate(field.name, getattr(self, field.name)))

    @property
    def needs_input(self) -> bool:
        return task_kind(self.task).needs_input

    def options(self) -> Dict[str, Any]:
        """The option values, by option name (without ``task``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "task"}

    def model_name(self) -> Optional[str]:
        """The model that will run: the one asked for, else the task's default (None without a model)."""
        return self.model or default_model(self.task, scale=self.scale)

    def output_suffix(self) -> str:
        """The suffix naming the output after the input, e.g. ``CTChest_enhanced``."""
        if self.task == "simulate-low-dose":
            return f"dose{int(round(self.dose * 100))}pct"
        return {"enhance": "enhanced", "super-resolve": f"SRx{self.scale}", "synthesize": "synthetic"}[self.task]

    def attributes(self) -> Dict[str, Any]:
        """The options worth recording on the output node (``QHQGAN.<key>`` attributes)."""
        attributes: Dict[str, Any] = {"task": self.task}
        if self.task == "simulate-low-dose":
            attributes.update(dose_fraction=self.dose, seed=self.seed)
            attributes.update({k: v for k, v in (("reference_noise_hu", self.reference_noise_hu),
                                                 ("photons", self.photons)) if v is not None})
            return attributes
        attributes.update(model=self.model_name(), quantum_backend=self.quantum_backend, device=self.device)
        if self.task == "synthesize":
            attributes.update(n_samples=self.n_samples, seed=self.seed, synthetic="true")
        else:
            attributes.update(tile_size=self.tile_size, overlap=self.overlap)
        if self.task == "super-resolve":
            attributes["scale"] = self.scale
        return attributes


def python_executable() -> str:
    """The Python that runs the child: Slicer's ``PythonSlicer`` inside Slicer, else this Python."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    folder = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (folder / name).is_file():
            return str(folder / name)
    return sys.executable


def build_command(request: TaskRequest, input_path: Optional[PathLike], output_path: PathLike,
                  python: Optional[str] = None) -> List[str]:
    """The child's argv: ``[python, "-m", "QHQGANLib", TASK, [INPUT], OUTPUT, ...options, "--progress", "lines"]``."""
    argv = [python or python_executable(), "-m", "QHQGANLib", request.task]
    if request.needs_input:
        if input_path is None:
            raise ValueError(f"the {request.task} task needs an input volume")
        argv.append(str(input_path))
    argv.append(str(output_path))
    return argv + task_argv(request.task, request.options()) + ["--progress", "lines"]


def default_output_name(request: TaskRequest, input_node=None) -> str:
    """``<input name>_<suffix>``, e.g. ``CTChest_enhanced``; ``QHQGAN_synthetic`` without an input."""
    base = input_node.GetName() if input_node is not None else "QHQGAN"
    return f"{base}_{request.output_suffix()}"


def task_unavailable_reason(task: str) -> Optional[str]:
    """None when ``task`` can run here, else why not (an unknown task, or no trained model installed)."""
    if task not in TASKS:
        return f"unknown task {task!r}; expected one of {', '.join(TASKS)}"
    if task in MODEL_TASKS and not models_for_task(task):
        from ..core.resources import models_dir

        return f"no trained model for '{task}' is installed (in {models_dir()})"
    return None
