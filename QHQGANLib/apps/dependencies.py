"""The Python packages QHQGAN needs inside Slicer: what is missing, and installing it without
replacing Slicer's own packages (SimpleITK, vtk, numpy, torch).

The requirements are split by what a task needs (``Resources/requirements-*.txt``):

* ``requirements-base.txt``: reading and writing CT and the physics of "Simulate low dose"
  (no torch: nothing in it depends on torch, so no generic torch wheel is pulled from PyPI);
  ``astra-toolbox`` only where it has wheels (Linux x86_64; Windows AMD64 with Python >= 3.10),
  elsewhere :mod:`QHQGANLib.physics.projector` replaces it;
* ``requirements-models.txt``: the networks' packages, installed only after torch (which the
  PyTorch extension installs, in the build that fits the GPU).

``Resources/requirements.txt`` is their union (a plain ``pip install -r`` outside Slicer).

Slicer 5.12 and later have ``slicer.packaging`` (``Base/Python/slicer/packaging.py``: its
``pip_ensure`` asks by itself, raises ``RuntimeError`` when declined and installs nothing in
testing mode); 5.8 and 5.10 have only ``slicer.util.pip_install(requirements)`` (a string or
a list of pip arguments, ``Base/Python/slicer/util.py``), which gets the missing requirements
with a constraints file holding Slicer's own packages at their installed versions.

Console usage::

    >>> from QHQGANLib.apps.dependencies import missing_requirements, requirement_files
    >>> missing_requirements(requirement_files("simulate-low-dose"))      # [] when all are installed
    []
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from ..core.kinds import MODEL_TASKS, TASKS

PathLike = Union[str, "os.PathLike[str]"]


def read_requirements(path: PathLike) -> List[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


#: The requirement files of every task, in install order (folder: :func:`requirements_folder`).
BASE_REQUIREMENTS = "requirements-base.txt"
MODEL_REQUIREMENTS = "requirements-models.txt"


def requirements_folder() -> Path:
    """Where the requirement files are: ``Resources/`` beside QHQGANLib (Slicer build and source checkout)."""
    return Path(__file__).resolve().parents[2] / "Resources"


def requirement_files(task: str, folder: Optional[PathLike] = None) -> List[Path]:
    """The requirement files ``task`` needs: the base file, plus the models' file for tasks with a network."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    folder = Path(folder) if folder is not None else requirements_folder()
    names = [BASE_REQUIREMENTS] + ([MODEL_REQUIREMENTS] if task in MODEL_TASKS else [])
    return [folder / name for name in names]


def task_needs_torch(task: str) -> bool:
    """True for the tasks that run a network (torch comes from the PyTorch extension in Slicer)."""
    return task in MODEL_TASKS


def _paths(requirements) -> List[Path]:
    if isinstance(requirements, (str, os.PathLike)):
        return [Path(requirements)]
    return [Path(p) for p in requirements]


def applicable_requirements(requirements) -> List[str]:
    """The requirement lines of one file or several whose environment markers hold here."""
    from packaging.requirements import Requirement

    lines = []
    for path in _paths(requirements):
        for line in read_requirements(path):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                if line not in lines:
                    lines.append(line)
    return lines


def missing_requirements(requirements) -> List[str]:
    """The requirements (of one file or several) not satisfied by the installed distributions.

    A requirement whose environment marker does not hold here (``astra-toolbox`` on macOS) is
    not missing.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for line in applicable_requirements(requirements):
        requirement = Requirement(line)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def ensure_requirements(requirements, confirm: Callable[[str], bool],
                        pip_install: Callable[[List[str]], Any], packaging=None,
                        keep: Sequence[str] = ("SimpleITK", "vtk", "numpy", "torch"),
                        constraints_path: Optional[PathLike] = None) -> bool:
    """Install what ``requirements`` (a file or several) list and is missing; False if declined.

    With Slicer >= 5.12 ``packaging`` is ``slicer.packaging``: its ``pip_ensure`` asks the user
    itself (a ``RuntimeError`` when declined: False here) and skips ``keep`` in the dependency
    tree (``skip_packages``). Without it (Slicer 5.8, 5.10, plain Python) ``confirm(text)`` asks
    and ``pip_install`` (``slicer.util.pip_install``) gets the missing requirements with a
    constraints file holding ``keep`` at their installed versions, so Slicer's own SimpleITK,
    vtk, numpy and torch stay. Raises RuntimeError when packages are still missing afterwards
    (Slicer in testing mode installs nothing).
    """
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        reqs = [req for path in _paths(requirements) for req in packaging.load_requirements(str(path))]
        if packaging.pip_check(reqs):  # markers evaluated by Slicer
            return True
        try:
            packaging.pip_ensure(reqs, skip_packages=list(keep), requester="QHQGAN")
        except RuntimeError as error:  # "User declined package installation"
            if "declined" in str(error).lower():
                return False
            raise
    else:
        missing = missing_requirements(requirements)
        if not missing:
            return True
        if not confirm("QHQGAN will now download and install: " + ", ".join(missing) + ". This takes a few minutes."):
            return False
        folder = constraints_path or Path(tempfile.mkdtemp(prefix="qhqgan-pip-")) / "constraints.txt"
        pip_install(["-c", slicer_constraints(keep, folder)] + missing)
    still = missing_requirements(requirements)
    if still and packaging is not None:
        raise RuntimeError("these Python packages are still missing: " + ", ".join(still)
                           + " (Slicer does not install packages in testing mode)")
    return True


def slicer_constraints(packages: Sequence[str], path: PathLike) -> str:
    """Write a pip constraints file holding ``packages`` at their installed versions (so pip keeps them)."""
    from importlib import metadata

    lines = []
    for name in packages:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)
