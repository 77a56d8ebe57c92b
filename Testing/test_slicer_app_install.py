"""Installing in Slicer on every platform (issue #11, items 2, 3, 4 and 10).

* requirements split per task, ``astra-toolbox`` only where it has wheels; "Simulate low dose"
  needs no torch and nothing that pulls one;
* ``slicer.packaging`` (Slicer >= 5.12) and ``slicer.util.pip_install`` (5.8, 5.10) called
  with the signatures of Slicer's own sources (``Base/Python/slicer/packaging.py``,
  ``Base/Python/slicer/util.py``), copied into the fakes below;
* the child's interpreter: this one, through Slicer's launcher where there is one.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from QHQGANLib.apps.dependencies import (BASE_REQUIREMENTS, MODEL_REQUIREMENTS, PENNYLANE_REQUIREMENTS,
                                         applicable_requirements,
                                         ensure_requirements, missing_requirements, read_requirements,
                                         requirement_files, task_needs_torch)
from QHQGANLib.apps.request import python_executable
from QHQGANLib.core.kinds import MODEL_TASKS, TASKS

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "Resources"


def names(path) -> set:
    return {Requirement(line).name.lower() for line in read_requirements(path)}


# ---------------------------------------------------------------------------
# the split requirement files
# ---------------------------------------------------------------------------
def test_each_task_gets_its_files_and_requirements_txt_covers_them():
    # (issue #29 item 2: the panel installs per task only what the worker imports; requirements.txt
    # is the plain `pip install -r` of the command-line tools and covers them, numpy aside)
    assert requirement_files("simulate-low-dose", RESOURCES) == [RESOURCES / BASE_REQUIREMENTS]
    for task in MODEL_TASKS:
        assert requirement_files(task, RESOURCES) == [RESOURCES / BASE_REQUIREMENTS, RESOURCES / MODEL_REQUIREMENTS]
        assert requirement_files(task, RESOURCES, quantum_backend="pennylane:lightning.qubit") == [
            RESOURCES / BASE_REQUIREMENTS, RESOURCES / MODEL_REQUIREMENTS, RESOURCES / PENNYLANE_REQUIREMENTS]
        assert task_needs_torch(task)
    assert not task_needs_torch("simulate-low-dose") and not task_needs_torch("insert-lesion")
    assert requirement_files("insert-lesion", RESOURCES) == [RESOURCES / BASE_REQUIREMENTS]
    assert set(TASKS) == set(MODEL_TASKS) | {"simulate-low-dose", "insert-lesion"}
    union = set().union(*(names(RESOURCES / f) for f in (BASE_REQUIREMENTS, MODEL_REQUIREMENTS, PENNYLANE_REQUIREMENTS)))
    assert union - {"numpy"} <= names(RESOURCES / "requirements.txt")
    assert not names(RESOURCES / BASE_REQUIREMENTS) & names(RESOURCES / MODEL_REQUIREMENTS)
    with pytest.raises(ValueError, match="unknown task"):
        requirement_files("denoise")


def test_simulate_low_dose_requirements_pull_no_torch():
    """Nothing in requirements-base.txt depends on torch (torchmetrics would fetch a generic torch from PyPI)."""
    from importlib import metadata

    base = names(RESOURCES / BASE_REQUIREMENTS)
    assert not base & {"torch", "torchmetrics", "pennylane", "pennylane-lightning", "safetensors", "torchvision"}
    assert "safetensors" in names(RESOURCES / MODEL_REQUIREMENTS)
    for name in base:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # astra-toolbox where it has no wheel
        hard = [r for r in requires if "extra ==" not in r]
        assert not [r for r in hard if Requirement(r).name.lower() == "torch"], f"{name} depends on torch"


@pytest.mark.parametrize("platform, machine, python, expected", [
    ("linux", "x86_64", "3.9", True),      # Slicer 5.8 on Linux: cp39 wheels up to astra 2.4
    ("linux", "aarch64", "3.12", False),   # no aarch64 wheel
    ("win32", "AMD64", "3.9", False),      # Slicer 5.8 on Windows: the first Windows wheels are cp310
    ("win32", "AMD64", "3.12", True),
    ("darwin", "arm64", "3.12", False),    # no macOS wheel at all
    ("darwin", "x86_64", "3.9", False),
])
def test_astra_is_asked_for_only_where_it_has_wheels(platform, machine, python, expected):
    for name in (BASE_REQUIREMENTS, MODEL_REQUIREMENTS, PENNYLANE_REQUIREMENTS):  # optional: the panel never installs it
        assert "astra-toolbox" not in names(RESOURCES / name)
    for path in (RESOURCES / "requirements.txt",):
        astra = [Requirement(line) for line in read_requirements(path) if line.startswith("astra-toolbox")]
        assert len(astra) == 1 and astra[0].marker is not None
        env = {**default_environment(), "sys_platform": platform, "platform_machine": machine, "python_version": python}
        assert astra[0].marker.evaluate(env) is expected


def test_a_requirement_whose_marker_does_not_hold_is_not_missing(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text('no-such-package-qhqgan>=1; sys_platform == "no-such-os"\npydicom>=1.0\nno-such-other>=1\n')
    assert applicable_requirements(req) == ["pydicom>=1.0", "no-such-other>=1"]
    assert missing_requirements([req, req]) == ["no-such-other>=1"]


def test_simulate_low_dose_runs_without_torch_or_astra(ct_small_path, tmp_path):
    """The CLI child of "Simulate low dose" with torch, torchmetrics, pennylane and astra unimportable."""
    out = tmp_path / "low.nrrd"
    code = ("import sys, runpy\n"
            "for m in ('torch', 'torchmetrics', 'pennylane', 'safetensors', 'astra'): sys.modules[m] = None\n"
            f"sys.argv = ['qhqgan', 'simulate-low-dose', {str(ct_small_path)!r}, {str(out)!r}, '--dose', '0.25']\n"
            "runpy.run_module('QHQGANLib', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.is_file() and "inserted noise" in run.stdout


def test_insert_lesion_runs_without_torch_or_astra(tmp_path):
    """The CLI child of "Insert lesion" (issue #30) needs only Slicer's own packages, like "Simulate low dose"."""
    import numpy as np

    from QHQGANLib import Volume, read_volume, write_volume

    _, y, x = np.mgrid[0:2, 0:48, 0:48]
    body = ((y - 23.5) ** 2 + (x - 23.5) ** 2) < 20 ** 2
    ct = Volume(np.where(body, 40.0, -1000.0).astype(np.float32), (0.8, 0.8, 2.5))
    mask = ct.with_array((((y - 23.5) ** 2 + (x - 23.5) ** 2) < 5 ** 2).astype(np.float32))
    write_volume(ct, tmp_path / "ct.nrrd")
    write_volume(mask, tmp_path / "mask.nrrd")
    out = tmp_path / "ct_lesion_synthetic.nrrd"
    code = ("import sys, runpy\n"
            "for m in ('torch', 'torchmetrics', 'pennylane', 'safetensors', 'astra'): sys.modules[m] = None\n"
            f"sys.argv = ['qhqgan', 'insert-lesion', {str(tmp_path / 'ct.nrrd')!r}, {str(tmp_path / 'mask.nrrd')!r}, "
            f"{str(out)!r}, '--kind', 'cyst', '--texture', 'smooth', '--progress', 'lines']\n"
            "runpy.run_module('QHQGANLib', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "QHQGAN-PROGRESS 1" in run.stdout and "SYNTHETIC" in run.stdout
    image = read_volume(out, force=True)
    assert image.metadata.get("synthetic") is True and abs(float(image.array[0, 24, 24]) - 10.0) < 1e-3


# ---------------------------------------------------------------------------
# slicer.packaging (5.12+) and slicer.util.pip_install (5.8, 5.10), with their real signatures
# ---------------------------------------------------------------------------
class FakePackaging:
    """``slicer.packaging`` as in Slicer 5.12 (``Base/Python/slicer/packaging.py``): same signatures."""

    def __init__(self, answer=True, testing=False):
        self.answer, self.testing, self.calls, self.installed = answer, testing, [], set()

    def load_requirements(self, path):
        return [Requirement(line) for line in read_requirements(path)]

    def pip_check(self, req, _seen=None):
        reqs = req if isinstance(req, list) else [req]
        env = default_environment()
        return all((r.marker is not None and not r.marker.evaluate(env)) or r.name in self.installed
                   or not missing_requirements_for(str(r)) for r in reqs)

    def pip_ensure(self, requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
        self.calls.append(dict(requirements=[str(r) for r in requirements], skip_packages=skip_packages,
                               prompt_install=prompt_install, requester=requester, constraints=constraints))
        if skip_in_testing and self.testing:
            return None
        if prompt_install and not self.answer:
            raise RuntimeError("User declined package installation")
        self.installed |= {r.name for r in requirements}
        return None


def missing_requirements_for(line: str):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.txt"
        path.write_text(line + "\n")
        return missing_requirements(path)


def pip_install_5_8(requirements):
    """``slicer.util.pip_install`` of Slicer 5.8/5.10: a string or a list of pip arguments, nothing else."""
    if type(requirements) not in (str, list):
        raise ValueError("pip_install requirement input must be string or list")
    pip_install_5_8.calls.append(requirements)


def test_slicer_5_12_packaging_asks_itself_and_a_refusal_is_false(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("pydicom>=1.0\nno-such-package-qhqgan>=1\n")
    ask = lambda text: pytest.fail("slicer.packaging asks by itself")  # noqa: E731
    declined = FakePackaging(answer=False)
    assert ensure_requirements(req, ask, pip_install_5_8, declined) is False
    assert declined.calls[0]["requester"] == "QHQGAN" and declined.calls[0]["prompt_install"] is True
    assert declined.calls[0]["skip_packages"] == ["SimpleITK", "vtk", "numpy", "scipy", "torch"]
    assert declined.calls[0]["requirements"] == ["no-such-package-qhqgan>=1"]  # pydicom imports: not asked for
    accepted = FakePackaging(answer=True)
    with pytest.raises(RuntimeError, match="no-such-package-qhqgan"):  # "installed", still not importable
        ensure_requirements(req, ask, pip_install_5_8, accepted)
    assert accepted.calls[0]["requirements"] == ["no-such-package-qhqgan>=1"]
    req.write_text("pydicom>=1.0\n")
    importable = FakePackaging(answer=True)
    assert ensure_requirements(req, ask, pip_install_5_8, importable) is True and importable.calls == []


def test_slicer_5_12_testing_mode_installs_nothing_and_says_so(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("no-such-package-qhqgan>=1\n")
    with pytest.raises(RuntimeError, match="no-such-package-qhqgan.*testing mode"):
        ensure_requirements(req, lambda text: True, pip_install_5_8, FakePackaging(testing=True))


def test_slicer_5_8_pip_install_gets_a_list_with_constraints(tmp_path):
    pip_install_5_8.calls = []
    req = tmp_path / "r.txt"
    req.write_text("pydicom>=1.0\nno-such-package-qhqgan>=1\n")
    assert ensure_requirements(req, lambda text: True, pip_install_5_8, None, constraints_path=tmp_path / "c.txt")
    assert pip_install_5_8.calls == [["-c", str(tmp_path / "c.txt"), "no-such-package-qhqgan>=1"]]
    assert "numpy==" in (tmp_path / "c.txt").read_text()
    assert ensure_requirements(req, lambda text: False, pip_install_5_8, None) is False


def test_there_is_no_slicer_pydeps():
    source = (REPO / "QHQGAN" / "QHQGAN.py").read_text() + (REPO / "QHQGANLib" / "apps" / "dependencies.py").read_text()
    assert "pydeps" not in source and "slicer.packaging" in source


# ---------------------------------------------------------------------------
# which Python runs the child
# ---------------------------------------------------------------------------
def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_outside_slicer_this_interpreter_even_with_a_pythonslicer_on_path(tmp_path, monkeypatch):
    other = _executable(tmp_path / "Slicer-5.8" / "bin" / "PythonSlicer")
    monkeypatch.setenv("PATH", f"{other.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert python_executable() == sys.executable
    assert python_executable(in_slicer=False) == sys.executable


def test_in_slicer_sys_executable_is_the_launcher(tmp_path):
    launcher = _executable(tmp_path / "bin" / "PythonSlicer")
    assert python_executable(str(launcher), in_slicer=True) == str(launcher)


def test_in_pythonslicer_the_launcher_beside_python_real(tmp_path):
    real = _executable(tmp_path / "bin" / "python-real")
    launcher = _executable(tmp_path / "bin" / "PythonSlicer")
    assert python_executable(str(real), in_slicer=False) == str(launcher)
    alone = _executable(tmp_path / "other" / "python-real")
    assert python_executable(str(alone), in_slicer=False) == str(alone)


def test_in_slicer_without_sys_executable_the_launcher_on_path(tmp_path, monkeypatch):
    launcher = _executable(tmp_path / "bin" / "PythonSlicer")
    monkeypatch.setenv("PATH", str(launcher.parent))
    assert python_executable("", in_slicer=True) == str(launcher)
    with pytest.raises(RuntimeError, match="sys.executable is empty"):
        python_executable("", in_slicer=False)
