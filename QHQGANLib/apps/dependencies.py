"""The Python packages QHQGAN needs inside Slicer: what is missing, and installing it without
replacing Slicer's own packages (SimpleITK, vtk, numpy, torch).

Slicer 5.11 and later offer ``slicer.pydeps``; older versions get the missing
requirements through ``slicer.util.pip_install`` with a constraints file that
holds Slicer's own packages at their installed versions.

Console usage::

    >>> from QHQGANLib.apps.dependencies import missing_requirements
    >>> missing_requirements("Resources/requirements.txt")      # [] when all are installed
    []
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]


def read_requirements(path: PathLike) -> List[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def missing_requirements(path: PathLike) -> List[str]:
    """The requirements of ``path`` not satisfied by the installed distributions."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for line in read_requirements(path):
        requirement = Requirement(line)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def ensure_requirements(requirements: PathLike, confirm: Callable[[str], bool],
                        pip_install: Callable[[List[str]], Any], pydeps=None,
                        keep: Sequence[str] = ("SimpleITK", "vtk", "numpy", "torch"),
                        constraints_path: Optional[PathLike] = None) -> bool:
    """Install what ``requirements`` lists and is missing, after ``confirm(text)``; False if declined.

    With Slicer >= 5.11 ``pydeps`` is ``slicer.pydeps`` (``pip_ensure`` skipping
    ``keep``); on older Slicer ``pip_install`` (``slicer.util.pip_install``) gets the
    missing requirements with a constraints file holding ``keep`` at their
    installed versions, so Slicer's own SimpleITK, vtk, numpy and torch stay.
    """
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        reqs = pydeps.load_requirements(str(requirements))
        if pydeps.pip_check(reqs):
            return True
        if not confirm("QHQGAN will now download and install the Python packages it needs "
                       "(PennyLane, pydicom, scikit-image, ...). This takes a few minutes."):
            return False
        pydeps.pip_ensure(reqs, skip_packages=list(keep), requester="QHQGAN")
        return True
    missing = missing_requirements(requirements)
    if not missing:
        return True
    if not confirm("QHQGAN will now download and install: " + ", ".join(missing) + ". This takes a few minutes."):
        return False
    constraints = slicer_constraints(keep, constraints_path or Path(tempfile.mkdtemp(prefix="qhqgan-pip-")) / "constraints.txt")
    pip_install(["-c", constraints] + missing)
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
