"""The Slicer module in a clinic (issue #29): items 1, 2, 4 and 7.

1. A result never overwrites another patient's volume: an existing output node is replaced only
   when it is an earlier QHQGAN result of the same input (its attributes; the patient and study
   in the subject hierarchy); anything else is refused before the job starts, in the panel; the
   target chosen at Apply is the one written, and a target deleted or changed meanwhile gets
   nothing (a new node, with a note).
2. First use installs only what the chosen task's worker imports (nothing that already imports):
   "Simulate low dose" and "Enhance" run with no network; a package that is missing and cannot be
   installed offline is named, with the way to install it; the CTest self-test always runs what
   Slicer's own packages allow.
4. PennyLane on Python 3.9: autoray < 0.7.
7. Intel Macs: numpy < 2 (torch 2.2), Slicer's numpy not held at 2.x there.

The module runs on slicer-core's real MRML; the Slicer GUI is faked as in
Testing/test_slicer_app_module.py (whose fixture and fakes are reused).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
import slicer.util  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
try:
    from test_slicer_app_module import FakeCheckBox, adapt_panel, ct_node, module  # noqa: E402,F401 (fixture)
finally:
    sys.path.pop(0)

from QHQGANLib.apps import dependencies, node_task  # noqa: E402
from QHQGANLib.apps.request import TaskRequest, build_command  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESOURCES = REPO / "Resources"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def file_under(scene, node, patient, patient_id=""):
    """File ``node`` under a new patient and study of the subject hierarchy (as DICOM loading does)."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    if patient_id:
        sh.SetItemUID(patient_item, "DICOM", patient_id)
    study = sh.CreateStudyItem(patient_item, f"{patient} study")
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, node)
    return study


def two_patients(scene, ct_small_path):
    a, b = ct_node(scene, ct_small_path), ct_node(scene, ct_small_path)
    a.SetName("PatientA_CT")
    b.SetName("PatientB_CT")
    slicer.util.updateVolumeFromArray(b, slicer.util.arrayFromVolume(b) + 7)  # B's own voxels
    file_under(scene, a, "PatientA", "PID-A")
    file_under(scene, b, "PatientB", "PID-B")
    return a, b


@pytest.fixture
def no_child(monkeypatch):
    """Fails the test if a worker process is started."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError("a worker was started")

    monkeypatch.setattr(node_task, "BackgroundTask", refuse)
    return started


def snapshot(node):
    return (node.GetName(), slicer.util.arrayFromVolume(node).copy(), tuple(node.GetSpacing()),
            tuple(node.GetOrigin()), {n: node.GetAttribute(n) for n in (node.GetAttributeNames() or ())})


def assert_unchanged(node, before):
    after = snapshot(node)
    assert after[0] == before[0] and after[2:] == before[2:]
    np.testing.assert_array_equal(after[1], before[1])


def panel(module, monkeypatch, task="simulate-low-dose"):
    """A panel on a Slicer 5.8 wrapper, with selectors that remember whether they are enabled."""
    widget, wrapper = adapt_panel(module)
    for name in ("inputSelector", "outputSelector", "taskComboBox"):
        setattr(widget.ui, name, FakeCheckBox())
    wrapper.task = module.Task(task)
    errors = []
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: errors.append(text), raising=False)
    monkeypatch.setattr(widget.logic, "compare", lambda *a: None)  # no layout manager here
    return widget, wrapper, errors


def run_panel_job(widget, timeout=240):
    start = time.monotonic()
    while widget._job is not None:
        assert time.monotonic() - start < timeout, "the task did not end"
        widget.onPoll()
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# item 1: results never go into another patient's volume
# ---------------------------------------------------------------------------
def test_another_patients_volume_is_refused_before_anything_runs(module, ct_small_path, no_child):
    scene = slicer.mrmlScene
    a, b = two_patients(scene, ct_small_path)
    before = snapshot(b)
    logic = module.QHQGANLogic()
    with pytest.raises(node_task.OutputRefused, match="PatientB_CT"):
        logic.process(a, task="simulate-low-dose", dose=0.5, outputNode=b)
    with pytest.raises(node_task.OutputRefused, match="PatientB_CT"):
        logic.process(a, task="simulate-low-dose", blocking=False, outputNode=b)
    with pytest.raises(node_task.OutputRefused):  # nor a synthetic result into a patient's volume
        logic.process(None, task="synthesize", n_samples=1, outputNode=b)
    assert no_child == []
    assert_unchanged(b, before)


def test_only_an_earlier_result_of_the_same_input_is_replaced(module, ct_small_path):
    scene = slicer.mrmlScene
    a, b = two_patients(scene, ct_small_path)
    logic = module.QHQGANLogic()
    from_a = logic.process(a, task="simulate-low-dose", dose=0.5, seed=0)
    from_b = logic.process(b, task="simulate-low-dose", dose=0.5, seed=0)
    assert from_a.GetAttribute("QHQGAN.source_node") == a.GetID()
    refusal = logic.outputRefusal(a, from_b, "simulate-low-dose")
    assert refusal and "PatientB" in refusal  # B's result is filed under B
    # a QHQGAN result of another input, filed nowhere: still refused (its source is not this input)
    c = ct_node(scene, ct_small_path)
    c.SetName("PatientC_CT")
    loose = logic.process(c, task="simulate-low-dose", dose=0.25, seed=0)
    assert "made from PatientC_CT, not from PatientA_CT" in logic.outputRefusal(a, loose, "simulate-low-dose")
    # a volume QHQGAN did not make, filed nowhere, holding voxels: refused
    plain = ct_node(scene, ct_small_path)
    assert "not a QHQGAN result" in logic.outputRefusal(a, plain, "simulate-low-dose")
    # an earlier result of A itself: replaced, with the new result (and its name)
    again = logic.process(a, task="simulate-low-dose", dose=0.25, seed=3, outputNode=from_a)
    assert again is from_a and from_a.GetAttribute("QHQGAN.dose_fraction") == "0.25"
    assert from_a.GetAttribute("QHQGAN.seed") == "3" and from_a.GetName() == "PatientA_CT_dose25pct"


def test_a_result_of_a_dicom_series_does_not_go_into_a_result_of_another_series(module, ct_small_path):
    """Same node ID recorded, another DICOM series (a scene loaded into another): refused."""
    scene = slicer.mrmlScene
    a = ct_node(scene, ct_small_path)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    sh.CreateItem(sh.GetSceneItemID(), a)
    sh.SetItemUID(sh.GetItemByDataNode(a), "DICOM", "1.2.3.series-A")
    logic = module.QHQGANLogic()
    out = logic.process(a, task="simulate-low-dose", dose=0.5)
    assert out.GetAttribute("QHQGAN.source_uid") == "1.2.3.series-A"
    assert logic.outputRefusal(a, out, "simulate-low-dose") is None
    sh.SetItemUID(sh.GetItemByDataNode(a), "DICOM", "1.2.3.series-B")  # now another series under that ID
    assert "another DICOM series" in logic.outputRefusal(a, out, "simulate-low-dose")


def test_the_panel_refuses_in_the_panel_before_starting(module, ct_small_path, monkeypatch):
    a, b = two_patients(slicer.mrmlScene, ct_small_path)
    widget, wrapper, errors = panel(module, monkeypatch)
    wrapper.inputVolume, wrapper.outputVolume = a, b
    started = []
    monkeypatch.setattr(widget.logic, "process", lambda *a, **k: started.append(k) or object())
    monkeypatch.setattr(widget.logic, "installDependencies", lambda **k: started.append("install") or True)
    widget.onApplyButton()
    assert started == [] and widget._job is None
    assert "PatientB_CT" in widget.ui.statusLabel.text and "Create new volume" in widget.ui.statusLabel.text
    assert errors and "PatientB_CT" in errors[0]


def test_the_target_chosen_at_apply_is_the_one_written_and_the_selectors_are_locked(module, ct_small_path,
                                                                                   monkeypatch):
    scene = slicer.mrmlScene
    a, _b = two_patients(scene, ct_small_path)
    logic = module.QHQGANLogic()
    first = logic.process(a, task="simulate-low-dose", dose=0.5, seed=0)
    second = logic.process(a, task="simulate-low-dose", dose=0.5, seed=1)
    second_before = snapshot(second)
    widget, wrapper, errors = panel(module, monkeypatch)
    wrapper.inputVolume, wrapper.outputVolume = a, first
    wrapper.doseFraction = 0.25
    widget.onApplyButton()
    assert widget._job is not None, widget.ui.statusLabel.text
    assert not widget.ui.outputSelector.enabled and not widget.ui.inputSelector.enabled  # locked while it runs
    wrapper.outputVolume = second  # changed while the task runs: the choice made at Apply holds
    run_panel_job(widget)
    assert errors == [] and widget.ui.outputSelector.enabled and widget.ui.inputSelector.enabled
    assert first.GetAttribute("QHQGAN.dose_fraction") == "0.25" and first.GetName() == "PatientA_CT_dose25pct"
    assert_unchanged(second, second_before)
    assert widget._lastOutput is first


@pytest.mark.parametrize("change", ["deleted", "moved to another patient", "replaced by another run"])
def test_a_target_deleted_or_changed_meanwhile_gets_nothing(module, ct_small_path, change):
    scene = slicer.mrmlScene
    a, b = two_patients(scene, ct_small_path)
    logic = module.QHQGANLogic()
    target = logic.process(a, task="simulate-low-dose", dose=0.5, seed=0)
    job = logic.process(a, task="simulate-low-dose", dose=0.25, seed=1, blocking=False, outputNode=target)
    if change == "deleted":
        scene.RemoveNode(target)
    elif change == "moved to another patient":
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        sh.SetItemParent(sh.GetItemByDataNode(target), sh.GetItemParent(sh.GetItemByDataNode(b)))
    else:
        target.SetAttribute("QHQGAN.source_node", b.GetID())
    before = snapshot(target) if change != "deleted" else None
    node_task.wait(job)
    node = logic.finish(job)
    assert node is not target and node.GetScene() is scene
    assert node.GetAttribute("QHQGAN.dose_fraction") == "0.25"
    assert job.note and node.GetName() in job.note
    if before is not None:
        assert_unchanged(target, before)


def test_by_default_the_output_is_a_new_node(module, ct_small_path):
    scene = slicer.mrmlScene
    a, _b = two_patients(scene, ct_small_path)
    assert module.QHQGANParameterNode.__annotations__["outputVolume"] is not None
    assert not hasattr(module.QHQGANParameterNode, "outputVolume")  # no default: "Create new volume"
    n = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    out = module.QHQGANLogic().process(a, task="simulate-low-dose", dose=0.5)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n + 1 and out is not a


# ---------------------------------------------------------------------------
# item 2: install only what the worker imports; offline
# ---------------------------------------------------------------------------
#: what a Slicer build has (numpy, SciPy, SimpleITK, vtk ...) and not the packages of the command-line tools
NOT_IN_SLICER = ("pydicom", "pylibjpeg", "openjpeg", "PIL", "astra", "pennylane", "pennylane_lightning",
                 "skimage", "torchmetrics", "tqdm", "autoray")
NOT_IN_SLICER_DISTS = ("pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pillow", "astra-toolbox", "pennylane",
                       "pennylane-lightning", "pennylane_lightning", "scikit-image", "torchmetrics", "tqdm", "autoray")


@pytest.fixture
def bare_slicer(monkeypatch):
    """This process as a fresh Slicer sees it: the CLI's packages are neither importable nor installed;
    pip fails as it does offline. Returns the calls made to pip and to the confirmation box."""
    hidden = set(NOT_IN_SLICER)
    real_find_spec, real_version = importlib.util.find_spec, importlib.metadata.version

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in hidden else real_find_spec(name, *args, **kwargs)

    def version(name):
        if name.lower() in NOT_IN_SLICER_DISTS or name.split(".")[0] in hidden:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "version", version)
    calls = {"pip": [], "confirm": [], "hidden": hidden}

    def pip_install(args):
        calls["pip"].append(args)
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install"] + list(args),
                                            "ERROR: Could not find a version that satisfies the requirement "
                                            "(network is unreachable)")

    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: calls["confirm"].append(text)
                        or True, raising=False)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer 5.8 / 5.10
    return calls


def test_simulate_low_dose_and_enhance_install_nothing_in_a_bare_slicer(module, bare_slicer):
    logic = module.QHQGANLogic()
    assert logic.installDependencies(askConfirmation=True, task="simulate-low-dose") is True
    assert logic.installDependencies(askConfirmation=True, task="enhance") is True  # torch, safetensors are here
    assert logic.installDependencies(askConfirmation=True, task="synthesize") is True
    assert bare_slicer["pip"] == [] and bare_slicer["confirm"] == []
    for task in ("simulate-low-dose", "enhance", "super-resolve", "synthesize"):
        assert logic.taskUnavailableReason(task) is None, task


def test_a_missing_package_offline_is_named_with_how_to_install_it(module, bare_slicer, monkeypatch):
    bare_slicer["hidden"].add("safetensors")
    logic = module.QHQGANLogic()
    with pytest.raises(dependencies.MissingPackages) as raised:
        logic.installDependencies(askConfirmation=True, task="enhance")
    message = str(raised.value)
    assert raised.value.packages == ["safetensors>=0.4"]
    assert "safetensors>=0.4" in message and "slicer.util.pip_install" in message and "offline" in message
    assert "pennylane" not in " ".join(map(str, bare_slicer["pip"]))  # only what enhance imports was asked for
    assert bare_slicer["pip"][0][-1] == "safetensors>=0.4"


def test_the_panel_says_which_package_is_missing_offline(module, bare_slicer, ct_small_path, monkeypatch):
    bare_slicer["hidden"].add("safetensors")
    widget, wrapper, errors = panel(module, monkeypatch, task="enhance")
    wrapper.inputVolume = ct_node(slicer.mrmlScene, ct_small_path)
    started = []
    monkeypatch.setattr(widget.logic, "process", lambda *a, **k: started.append(k) or object())
    widget.onApplyButton()
    assert started == [] and widget._job is None
    assert "safetensors" in widget.ui.statusLabel.text and "pip_install" in widget.ui.statusLabel.text
    assert errors and "could not start" not in errors[0] and "safetensors" in errors[0]


def test_pennylane_is_installed_only_for_its_backend(module, bare_slicer):
    logic = module.QHQGANLogic()
    assert logic.installDependencies(askConfirmation=True, task="enhance", quantumBackend="torch") is True
    assert bare_slicer["pip"] == []
    with pytest.raises(dependencies.MissingPackages, match="pennylane>=0.38"):
        logic.installDependencies(askConfirmation=True, task="enhance", quantumBackend="pennylane:lightning.qubit")
    asked = bare_slicer["pip"][0]
    assert "pennylane>=0.38" in asked and "pennylane-lightning>=0.38" in asked
    assert not [a for a in asked if a.split(">")[0].split("<")[0] in ("astra-toolbox", "pydicom", "torchmetrics")]


def test_a_package_that_imports_is_not_installed_again(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("scipy>=1.5\nnumpy\n")
    assert dependencies.missing_requirements(req) == []
    called = []
    assert dependencies.ensure_requirements(req, lambda t: called.append(t), called.append) is True and not called


#: modules a worker may import: the standard library, Slicer's own numpy, SciPy and SimpleITK, QHQGANLib
SLICER_OWN_IMPORTS = {"numpy", "scipy", "SimpleITK", "QHQGANLib"}


def _dist_closure(names):
    """Import names of the distributions ``names`` and everything they require (markers of this Python)."""
    from packaging.requirements import Requirement

    dists_to_imports = {}
    for top, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            dists_to_imports.setdefault(dist.lower().replace("_", "-"), set()).add(top)
    seen, todo, imports = set(), list(names), set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        imports |= dists_to_imports.get(name, set())
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return imports


def worker_allowed_imports(request: TaskRequest) -> set:
    from packaging.requirements import Requirement

    files = dependencies.requirement_files(request.task, RESOURCES, quantum_backend=request.quantum_backend)
    listed = [Requirement(line).name for line in dependencies.applicable_requirements(files)]
    torch = ["torch"] if dependencies.task_needs_torch(request.task) else []
    return SLICER_OWN_IMPORTS | _dist_closure(listed + torch)


BLOCKER = '''
import socket, sys, runpy
ALLOWED = set({allowed!r}) | set(sys.stdlib_module_names)
class Blocker:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ALLOWED and not top.startswith("_"):
            raise ModuleNotFoundError(f"blocked: {{top}} is not in the task's requirement files", name=top)
        return None
sys.meta_path.insert(0, Blocker())
def no_network(*args, **kwargs):
    raise OSError("network is unreachable (blocked by the test)")
socket.socket.connect = socket.socket.connect_ex = no_network
socket.create_connection = socket.getaddrinfo = no_network
sys.argv = ["qhqgan"] + {argv!r}
runpy.run_module("QHQGANLib", run_name="__main__")
'''


@pytest.mark.parametrize("request_", [TaskRequest("simulate-low-dose", dose=0.25, seed=0),
                                      TaskRequest("enhance", device="cpu")], ids=["simulate-low-dose", "enhance"])
def test_the_worker_imports_only_its_requirement_files_and_needs_no_network(request_, ct_small_path, tmp_path):
    """The panel's own command line, run with every package outside the task's requirement files (and
    Slicer's own) blocked and the network cut: the requirement files hold all that the worker imports."""
    from QHQGANLib.core.io import read_volume, write_volume

    if dependencies.task_needs_torch(request_.task) and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    source = write_volume(read_volume(ct_small_path), tmp_path / "input.nrrd")
    out = tmp_path / "output.nrrd"
    argv = build_command(request_, source, out, sys.executable)[3:]
    code = BLOCKER.format(allowed=sorted(worker_allowed_imports(request_)), argv=argv)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.is_file()
    assert "astra" not in worker_allowed_imports(request_) and "pydicom" not in worker_allowed_imports(request_)


def test_the_self_test_runs_simulate_low_dose_and_the_output_checks_in_a_bare_slicer(module, bare_slicer, monkeypatch):
    """On a build machine without torch or the CLI's packages the CTest self-test still tests something."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name.split(".")[0] in (
        bare_slicer["hidden"] | {"torch", "safetensors"}) else real_find_spec(name, *a, **k))
    test = module.QHQGANTest()
    assert test.test_QHQGAN_tasks_on_a_small_phantom() == ["simulate-low-dose"], test.messages
    assert any("Skipped enhance: torch is not installed" in m for m in test.messages)
    test.test_QHQGAN_results_never_replace_another_patients_volume()
    assert any("Output safety: OK" in m for m in test.messages)
    names = [n for n in vars(module.QHQGANTest) if n.startswith("test_")]
    assert "test_QHQGAN_results_never_replace_another_patients_volume" in names


def test_the_self_test_fails_rather_than_skip_simulate_low_dose(module, monkeypatch):
    monkeypatch.setattr(dependencies, "missing_requirements", lambda files: ["scipy>=1.5"])
    with pytest.raises(AssertionError, match="simulate-low-dose must run"):
        module.QHQGANTest().test_QHQGAN_tasks_on_a_small_phantom()


# ---------------------------------------------------------------------------
# items 4 and 7: environment markers (Python 3.9; Intel Macs)
# ---------------------------------------------------------------------------
def in_environment(monkeypatch, **values):
    import packaging.markers

    real = packaging.markers.default_environment
    monkeypatch.setattr(packaging.markers, "default_environment", lambda: {**real(), **values})


def test_pennylane_on_python_3_9_gets_autoray_below_0_7(monkeypatch, tmp_path):
    from packaging.requirements import Requirement

    in_environment(monkeypatch, python_version="3.9", python_full_version="3.9.10")
    files = dependencies.requirement_files("enhance", RESOURCES, quantum_backend="pennylane:default.qubit")
    lines = dependencies.applicable_requirements(files)
    autoray = [Requirement(line) for line in lines if line.startswith("autoray")]
    assert len(autoray) == 1 and "0.6.12" in autoray[0].specifier and "0.8.2" not in autoray[0].specifier
    assert "autoray<0.7" in " ".join(dependencies.applicable_constraints(dependencies.constraints_file(RESOURCES)))
    # written into the constraints pip gets on Slicer 5.8 / 5.10
    written = Path(dependencies.slicer_constraints(
        ["numpy"], tmp_path / "c.txt", dependencies.applicable_constraints(dependencies.constraints_file(RESOURCES))))
    assert "autoray<0.7" in written.read_text()
    # an autoray 0.8 installed earlier is "missing": it is replaced
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.8.2" if name == "autoray" else real_version(name))
    if importlib.util.find_spec("autoray") is not None:
        assert any(m.startswith("autoray") for m in dependencies.missing_requirements(files))
    # not on Python 3.12, and never without the PennyLane backend
    in_environment(monkeypatch, python_version="3.12", python_full_version="3.12.4")
    assert not [line for line in dependencies.applicable_requirements(files) if line.startswith("autoray")]
    assert not [line for line in dependencies.applicable_requirements(dependencies.requirement_files(
        "enhance", RESOURCES)) if line.startswith(("autoray", "pennylane"))]


@pytest.mark.parametrize("platform, machine, numpy_below_2", [
    ("darwin", "x86_64", True), ("darwin", "arm64", False), ("linux", "x86_64", False), ("win32", "AMD64", False)])
def test_intel_macs_get_numpy_below_2_for_torch_2_2(monkeypatch, tmp_path, platform, machine, numpy_below_2):
    in_environment(monkeypatch, sys_platform=platform, platform_machine=machine)
    files = dependencies.requirement_files("enhance", RESOURCES)
    lines = dependencies.applicable_requirements(files)
    assert ('numpy<2; sys_platform == "darwin" and platform_machine == "x86_64"' in lines) is numpy_below_2
    assert not [line for line in dependencies.applicable_requirements(dependencies.requirement_files(
        "simulate-low-dose", RESOURCES)) if line.startswith("numpy")]  # no torch: numpy stays
    constraints = dependencies.constraints_file(RESOURCES)
    keep = dependencies.kept_packages(dependencies.SLICER_OWN_PACKAGES, files, constraints)
    assert ("numpy" not in keep) is numpy_below_2  # Slicer's numpy 2 is not held there
    # what pip gets on Slicer 5.10 there: numpy<2 asked for, and no numpy==2.x constraint
    installed = []
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.2.6" if name == "numpy" else real_version(name))
    result = dependencies.ensure_requirements(files, lambda text: True, installed.append, None,
                                              constraints_path=tmp_path / "c.txt", constraints=constraints)
    assert result is True
    if numpy_below_2:
        assert installed and "numpy<2; sys_platform" in " ".join(installed[0])
        text = (tmp_path / "c.txt").read_text()
        assert "numpy==" not in text and "numpy<2" in text
    else:
        assert installed == []


# ---------------------------------------------------------------------------
# item 6: a result too large to load is refused before it is computed
# ---------------------------------------------------------------------------
def test_a_result_above_the_voxel_limit_is_refused_before_anything_runs(module, ct_small_path, no_child,
                                                                        monkeypatch):
    from QHQGANLib.core import io

    node = ct_node(slicer.mrmlScene, ct_small_path)  # 128 x 128 x 1
    monkeypatch.setattr(io, "DEFAULT_MAX_VOXELS", 128 * 128 * 3)  # a stand-in limit: x2 in-plane gives 4x
    logic = module.QHQGANLogic()
    with pytest.raises(ValueError, match=r"65,536 voxels .* above the limit of 49,152: choose a smaller scale"):
        logic.process(node, task="super-resolve", scale=2, blocking=False)
    monkeypatch.setattr(io, "DEFAULT_MAX_VOXELS", 128 * 128 - 1)  # a result the input's size: refused too
    with pytest.raises(ValueError, match="Crop Volume"):
        logic.process(node, task="enhance", blocking=False)
    assert no_child == []  # nothing started, nothing computed
    monkeypatch.setattr(io, "DEFAULT_MAX_VOXELS", 128 * 128 * 4)  # exactly the x2 result: allowed
    with pytest.raises(AssertionError, match="a worker was started"):
        logic.process(node, task="super-resolve", scale=2, blocking=False)


# ---------------------------------------------------------------------------
# item 8: the worker's copy of the patient's image goes to Slicer's temporary folder
# ---------------------------------------------------------------------------
def test_the_workspace_lies_in_slicers_temporary_folder(module, ct_small_path, no_child, monkeypatch, tmp_path):
    class App:
        temporaryPath = str(tmp_path / "SlicerTemp")

    (tmp_path / "SlicerTemp").mkdir()
    monkeypatch.setattr(slicer, "app", App(), raising=False)
    assert node_task.slicer_temporary_folder() == App.temporaryPath
    seen = []

    def stop(argv, *args, **kwargs):
        seen.append(argv)
        raise AssertionError("stop before the worker")

    monkeypatch.setattr(node_task, "BackgroundTask", stop)
    node = ct_node(slicer.mrmlScene, ct_small_path)
    with pytest.raises(AssertionError, match="stop before the worker"):
        node_task.NodeTask(node_task.TaskRequest("simulate-low-dose"), node)
    input_arg = next(a for a in seen[0] if a.endswith("input.nrrd"))
    assert Path(input_arg).parent.parent == tmp_path / "SlicerTemp"  # qhqgan-XXXX/input.nrrd in Slicer's folder
    assert list((tmp_path / "SlicerTemp").iterdir()) == []  # and removed when the task could not start
    monkeypatch.setattr(slicer, "app", None, raising=False)
    assert node_task.slicer_temporary_folder() is None  # outside Slicer: the system's temporary folder


# ---------------------------------------------------------------------------
# item 9: Compare links the input only with a result made from it
# ---------------------------------------------------------------------------
def test_compare_never_links_a_synthetic_sample_or_another_patients_result(module, ct_small_path, monkeypatch):
    from QHQGANLib.core.naming import ATTRIBUTE_PREFIX

    a, b = two_patients(slicer.mrmlScene, ct_small_path)
    widget, wrapper, _errors = panel(module, monkeypatch)
    compared = []
    monkeypatch.setattr(widget.logic, "compare", lambda i, o: compared.append((i.GetName(), o.GetName())))
    wrapper.inputVolume = a
    sample = ct_node(slicer.mrmlScene, ct_small_path)  # what Synthesize leaves: made from no input
    sample.SetName("SYNTHETIC_sample")
    widget._lastOutput = sample
    widget.onCompareButton()
    widget._lastOutput = b  # another patient's volume, not made from a
    widget.onCompareButton()
    assert compared == []
    result = ct_node(slicer.mrmlScene, ct_small_path)  # a result of a
    result.SetName("PatientA_CT_enhanced")
    result.SetAttribute(ATTRIBUTE_PREFIX + "source_node", a.GetID())
    widget._lastOutput = result
    widget.onCompareButton()
    assert compared == [("PatientA_CT", "PatientA_CT_enhanced")]


def test_errors_are_worded_for_the_panel_not_the_command_line():
    """Issue #29 item 9: the worker's errors named flags the panel does not have."""
    from QHQGANLib.apps.model_info import panel_wording
    from QHQGANLib.core.devices import pick_device

    try:
        pick_device("cuda:7")
    except ValueError as exc:
        cli = f"qhqgan: error: {exc} (exit status 2)"
    else:
        pytest.skip("a CUDA GPU is present: the message cannot be produced here")
    said = panel_wording(cli)
    assert "--device" not in said and "Device: cpu in the Model section" in said and "exit status" not in said
    forced = panel_wording("x.nrrd: values do not look like CT in HU; if it is CT in HU pass force=True (--force)")
    assert "force=True" not in forced and "the panel does not read such a volume" in forced
