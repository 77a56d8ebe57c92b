"""The Python packages QHQGAN needs inside Slicer: what is missing, and installing it without
replacing Slicer's own packages (SimpleITK, vtk, numpy, scipy, torch).

The panel installs only what the chosen task's worker (``python -m QHQGANLib <task>``, started
by :mod:`QHQGANLib.apps.node_task`) imports beyond the standard library and Slicer's own
numpy and SimpleITK (``Testing/test_slicer_safety.py`` runs the workers with every other
package blocked and the network cut):

* ``requirements-base.txt`` (every task): SciPy, which Slicer bundles (nothing is installed);
* ``requirements-models.txt`` (the tasks with a network): safetensors, plus torch through the
  PyTorch extension (the build that fits the GPU); numpy<2 on Intel Macs, where torch 2.2 (the
  last x86_64 macOS build) cannot run on numpy 2;
* ``requirements-pennylane.txt``: only when the PennyLane backend is chosen (with autoray < 0.7
  on Python < 3.10: PennyLane 0.38 breaks with autoray 0.8);
* ``constraints.txt``: the same pins as pip constraints (environment markers), so that what
  is installed never pulls numpy 2 onto an Intel Mac nor autoray 0.8 onto Python 3.9.

The ASTRA toolbox, pydicom, scikit-image, torchmetrics, ... are not installed by the panel
(ASTRA is optional: :mod:`QHQGANLib.physics.projector` replaces it); ``Resources/requirements.txt``
lists everything the command-line tools use, for a plain ``pip install -r``. A package that is
already importable is never installed again; when one is missing and cannot be installed (no
network), :class:`MissingPackages` names it and says how to install it.

Slicer 5.12 and later have ``slicer.packaging`` (``Base/Python/slicer/packaging.py``: its
``pip_ensure`` asks by itself, raises ``RuntimeError`` when declined and installs nothing in
testing mode); 5.8 and 5.10 have only ``slicer.util.pip_install(requirements)`` (a string or
a list of pip arguments, ``Base/Python/slicer/util.py``), which gets the missing requirements
with a constraints file holding Slicer's own packages at their installed versions.

Console usage::

    >>> from QHQGANLib.apps.dependencies import missing_requirements, requirement_files
    >>> missing_requirements(requirement_files("simulate-low-dose"))      # [] when all are importable
    []
"""
from __future__ import annotations

import importlib.util
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
#: Only with the PennyLane quantum backend (``quantum_backend="pennylane:<device>"``).
PENNYLANE_REQUIREMENTS = "requirements-pennylane.txt"
#: pip constraints (with environment markers) used with every installation.
CONSTRAINTS = "constraints.txt"
#: Packages of Slicer itself that an installation must never replace.
SLICER_OWN_PACKAGES = ("SimpleITK", "vtk", "numpy", "scipy", "torch")
#: Import names of distributions whose import name is not their name with "-" as "_".
IMPORT_NAMES = {"pennylane-lightning": "pennylane_lightning", "scikit-image": "skimage", "pillow": "PIL",
                "astra-toolbox": "astra", "pylibjpeg-openjpeg": "openjpeg", "simpleitk": "SimpleITK",
                "scikit-learn": "sklearn"}


#: The oldest torch QHQGAN runs on: ``torch>=2.2`` in pyproject.toml (the PyTorch extension installs this).
TORCH_MINIMUM = "2.2"


class OutdatedTorch(RuntimeError):
    """The installed torch is older than :data:`TORCH_MINIMUM`; the message says which is installed,
    which is needed and how to update it (the PyTorch extension)."""

    def __init__(self, installed: str, task: Optional[str] = None):
        self.installed = installed
        what = f" for '{task}'" if task else ""
        super().__init__(
            f"torch {installed} is installed, but QHQGAN needs torch >= {TORCH_MINIMUM}{what}: update it in "
            f"Slicer's Python console with: import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch("
            f"torchVersionRequirement='>={TORCH_MINIMUM}') - or in the PyTorch Utils module: Uninstall PyTorch, "
            f"restart, set the version to >={TORCH_MINIMUM}, Install PyTorch - then restart Slicer and press Apply.")


def installed_torch_version() -> Optional[str]:
    """The installed torch's version without importing it (its pip metadata; an imported torch's
    ``__version__`` otherwise); None when torch is not installed or says no version."""
    import sys
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return getattr(sys.modules.get("torch"), "__version__", None)


def torch_too_old(version: Optional[str] = None) -> Optional[str]:
    """The installed torch's version when it is older than :data:`TORCH_MINIMUM`, else None (also when
    it is not installed or its version is unknown). ``version`` overrides what is installed."""
    from packaging.version import InvalidVersion, Version

    version = installed_torch_version() if version is None else version
    if not version:
        return None
    try:  # "2.1.2+cu121": the local part does not count
        older = Version(Version(str(version)).base_version) < Version(TORCH_MINIMUM)
    except InvalidVersion:
        return None
    return str(version) if older else None


def check_torch(task: Optional[str] = None, version: Optional[str] = None) -> None:
    """Raise :class:`OutdatedTorch` (naming ``task``) when the installed torch is older than QHQGAN needs."""
    old = torch_too_old(version)
    if old:
        raise OutdatedTorch(old, task)


class MissingPackages(RuntimeError):
    """Python packages a task needs are missing and could not be installed; the message says how to.

    ``packages`` are the requirement lines still missing.
    """

    def __init__(self, packages: Sequence[str], reason: str = "", task: Optional[str] = None):
        self.packages = list(packages)
        self.reason = reason
        quoted = " ".join(f'"{p}"' for p in self.packages)
        listed = ", ".join(self.packages)
        what = f" for '{task}'" if task else ""
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"QHQGAN needs the Python package{'s' if len(self.packages) > 1 else ''} {listed}{what}, "
            f"which could not be installed{because}. With a network connection, install "
            f"{'them' if len(self.packages) > 1 else 'it'} in Slicer's Python console "
            f"(View > Python Console) with: slicer.util.pip_install([{', '.join(repr(p) for p in self.packages)}]) "
            f"- or in a terminal with: PythonSlicer -m pip install {quoted} - then press Apply again.")


def requirements_folder() -> Path:
    """Where the requirement files are: ``Resources/`` beside QHQGANLib (Slicer build and source checkout)."""
    return Path(__file__).resolve().parents[2] / "Resources"


def requirement_files(task: str, folder: Optional[PathLike] = None, quantum_backend: str = "torch") -> List[Path]:
    """The requirement files of what ``task``'s worker imports: the base file, the models' file for
    tasks with a network, and PennyLane's only when ``quantum_backend`` is ``"pennylane:..."``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    folder = Path(folder) if folder is not None else requirements_folder()
    names = [BASE_REQUIREMENTS]
    if task in MODEL_TASKS:
        names.append(MODEL_REQUIREMENTS)
        if str(quantum_backend or "").startswith("pennylane"):
            names.append(PENNYLANE_REQUIREMENTS)
    return [folder / name for name in names]


def constraints_file(folder: Optional[PathLike] = None) -> Path:
    """``Resources/constraints.txt``: pins (with environment markers) every installation obeys."""
    return (Path(folder) if folder is not None else requirements_folder()) / CONSTRAINTS


def import_name(requirement_name: str) -> str:
    """The top-level module a distribution provides (``pennylane-lightning`` -> ``pennylane_lightning``)."""
    key = requirement_name.lower()
    return IMPORT_NAMES.get(key, key.replace("-", "_"))


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
    """The requirements (of one file or several) that are not importable here, or importable at a
    version outside their range.

    A package that imports is not missing, whatever pip's metadata says (Slicer's own, bundled
    packages); a requirement whose environment marker does not hold here (``numpy<2`` off Intel
    Macs) is not missing either.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for line in applicable_requirements(requirements):
        requirement = Requirement(line)
        try:
            importable = importlib.util.find_spec(import_name(requirement.name)) is not None
        except (ImportError, ValueError):  # a broken package
            importable = False
        if not importable:
            missing.append(line)
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # importable without pip metadata: bundled, taken as it is
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def applicable_constraints(path: Optional[PathLike]) -> List[str]:
    """The lines of a constraints file whose environment markers hold here ([] without a file)."""
    if path is None or not Path(path).is_file():
        return []
    return applicable_requirements(path)


def kept_packages(keep: Sequence[str], requirements, constraints: Optional[PathLike] = None) -> List[str]:
    """``keep`` without the packages that ``requirements`` or ``constraints`` pin here themselves
    (numpy on an Intel Mac: numpy<2 must then replace Slicer's numpy 2)."""
    from packaging.requirements import Requirement

    pinned = {Requirement(line).name.lower()
              for line in applicable_requirements(requirements) + applicable_constraints(constraints)}
    return [name for name in keep if name.lower() not in pinned]


def ensure_requirements(requirements, confirm: Callable[[str], bool],
                        pip_install: Callable[[List[str]], Any], packaging=None,
                        keep: Sequence[str] = SLICER_OWN_PACKAGES,
                        constraints_path: Optional[PathLike] = None,
                        constraints: Optional[PathLike] = None, task: Optional[str] = None) -> bool:
    """Install what ``requirements`` (a file or several) list and is missing; False if declined.

    Nothing is done (no question, no network) when every requirement is importable
    (:func:`missing_requirements`); otherwise only the missing ones are installed. With Slicer
    >= 5.12 ``packaging`` is ``slicer.packaging``: its ``pip_ensure`` asks the user itself (a
    ``RuntimeError`` when declined: False here), skips ``keep`` in the dependency tree
    (``skip_packages``) and obeys ``constraints`` (``Resources/constraints.txt``). Without it
    (Slicer 5.8, 5.10, plain Python) ``confirm(text)`` asks and ``pip_install``
    (``slicer.util.pip_install``) gets the missing requirements with a constraints file
    (written at ``constraints_path``) holding ``keep`` at their installed versions plus the
    lines of ``constraints``. Raises :class:`MissingPackages` (naming the packages and how to
    install them) when the installation fails (offline) or packages are still missing
    afterwards (Slicer in testing mode installs nothing).
    """
    missing = missing_requirements(requirements)
    if not missing:
        return True
    keep = kept_packages(keep, requirements, constraints)
    try:
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            from packaging.requirements import Requirement

            try:
                packaging.pip_ensure([Requirement(line) for line in missing],
                                     constraints=str(constraints) if constraints and Path(constraints).is_file() else None,
                                     skip_packages=list(keep), requester="QHQGAN")
            except RuntimeError as error:  # "User declined package installation"
                if "declined" in str(error).lower():
                    return False
                raise
        else:
            if not confirm("QHQGAN will now download and install: " + ", ".join(missing)
                           + ". This takes a few minutes."):
                return False
            path = constraints_path or Path(tempfile.mkdtemp(prefix="qhqgan-pip-")) / "constraints.txt"
            pip_install(["-c", slicer_constraints(keep, path, applicable_constraints(constraints))] + missing)
    except MissingPackages:
        raise
    except Exception as error:  # pip failed (no network, no wheel): say which package is missing
        still = missing_requirements(requirements)
        if still:
            raise MissingPackages(still, _short_reason(error), task) from error
        raise
    importlib.invalidate_caches()
    still = missing_requirements(requirements)
    if still and packaging is not None:  # slicer.util.pip_install raises when pip fails (caught above)
        raise MissingPackages(still, "still not importable after the installation; Slicer installs "
                              "nothing in testing mode", task)
    return True


def _short_reason(error: BaseException) -> str:
    """One line about a failed pip run ("no network?" when it looks like one)."""
    text = f"{type(error).__name__}: {error}".strip()
    lowered = text.lower()
    network = any(word in lowered for word in ("network", "connection", "resolve", "offline", "timed out",
                                                "no matching distribution", "returned non-zero"))
    text = text.splitlines()[0][:200] if text else type(error).__name__
    return f"pip failed: {text}" + ("; is this computer offline?" if network else "")


def slicer_constraints(packages: Sequence[str], path: PathLike, extra: Sequence[str] = ()) -> str:
    """Write a pip constraints file holding ``packages`` at their installed versions (so pip keeps
    them), then the ``extra`` constraint lines."""
    from importlib import metadata

    lines = []
    for name in packages:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    lines += [line for line in extra if line not in lines]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)
