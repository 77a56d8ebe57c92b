"""QHQGAN/QHQGAN.py as it runs in the Slicer application (issue #11, items 5-9, 11, 12).

The module runs on slicer-core's real MRML (``slicer.mrmlScene = slicer.vtkMRMLScene()``);
only what the application alone provides is stubbed: Qt's timer, the scripted-module base
classes and the parameter-node wrapper. The wrapper stand-in behaves like Slicer 5.8's
(``connectGui`` returns None; ``connectParametersToGui`` returns a tag:
``Base/Python/slicer/parameterNodeWrapper/wrapper.py`` of v5.8.1).
"""
from __future__ import annotations

import ast
import enum
import importlib.util
import re
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
import slicer.util  # noqa: E402

from QHQGANLib import read_volume  # noqa: E402
from QHQGANLib.apps.request import TaskRequest, default_output_name  # noqa: E402
from QHQGANLib.apps.scene import node_from_volume, show_side_by_side  # noqa: E402
from QHQGANLib.core.naming import is_synthetic_node, output_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "QHQGAN" / "QHQGAN.py"


@pytest.fixture
def module(monkeypatch):
    """QHQGAN.py executed with stand-ins for what only the Slicer application provides."""

    class _Signal:
        def connect(self, slot):
            self.slot = slot

    class QTimer:
        def __init__(self):
            self.timeout = _Signal()
            self.active = False

        def setInterval(self, ms):
            pass

        def start(self):
            self.active = True

        def stop(self):
            self.active = False

    qt = types.ModuleType("qt")
    qt.QTimer, qt.QWidget = QTimer, object
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic(_Base):
        def getParameterNode(self):
            raise NotImplementedError("no parameter node outside Slicer")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            self.messages = getattr(self, "messages", []) + [message]

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = _Base
    slm.ScriptedLoadableModuleLogic, slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda low, high: ("WithinRange", low, high)
    for name, stub in (("qt", qt), ("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw)):
        monkeypatch.setitem(sys.modules, name, stub)
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("QHQGAN_app_under_test", MODULE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    yield loaded
    scene.Clear(True)


def ct_node(scene, path):
    return node_from_volume(read_volume(path), scene, "CT_small")


# ---------------------------------------------------------------------------
# item 5: the GUI tag on Slicer 5.8
# ---------------------------------------------------------------------------
class FakeWidget:
    def __init__(self, parameter=None):
        self._properties = {"SlicerParameterName": parameter} if parameter else {}
        self.text, self.enabled, self.toolTip, self.currentPath = "", True, "", ""

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value

    def __getattr__(self, name):  # setEnabled, setVisible, setRange, connect ...: no-ops
        return lambda *args, **kwargs: None


class FakeCombo(FakeWidget):
    def __init__(self, parameter=None):
        super().__init__(parameter)
        self.items, self.index = [], -1

    def clear(self):
        self.items, self.index = [], -1

    def addItem(self, text):
        self.items.append(text)
        self.index = max(self.index, 0)

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):
        self.index = index

    @property
    def currentText(self):
        return self.items[self.index] if 0 <= self.index < len(self.items) else ""

    @property
    def currentIndex(self):
        return self.index


class Wrapper58:
    """The parameter-node wrapper as Slicer 5.8 has it, over a real vtkMRMLScriptedModuleNode."""

    def __init__(self, module, scene):
        self.parameterNode = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        self.task, self.quantumBackend = module.Task.ENHANCE, module.QuantumBackend.BUILTIN
        self.inputVolume = self.outputVolume = self.segmentation = None
        self.lesionKind, self.lesionTexture, self.lesionHu = module.LesionKind.HYPODENSE, module.LesionTexture.MATCHED, ""
        self.connections, self._next, self.observers = {}, 0, {}

    def connectGui(self, gui):  # 5.8: connects, returns nothing
        self.connectParametersToGui({})
        return None

    def connectParametersToGui(self, mapping):
        self._next += 1
        self.connections[self._next] = dict(mapping)
        return self._next

    def disconnectGui(self, tag):
        self.connections.pop(tag, None)

    def AddObserver(self, event, callback, priority=0.0):
        self._next += 1
        self.observers[self._next] = callback
        return self._next

    def RemoveObserver(self, tag):
        self.observers.pop(tag, None)


def fake_ui():
    ui = types.SimpleNamespace()
    for name in ("applyButton", "compareButton", "progressBar", "statusLabel", "modelCollapsibleButton",
                 "customWeightsPathLineEdit", "pennylaneDeviceLineEdit", "tileSizeSpinBox", "overlapSpinBox",
                 "tileBatchSpinBox", "samplesSpinBox", "doseSpinBox", "strengthSpinBox", "lesionCollapsibleButton"):
        setattr(ui, name, FakeWidget())
    ui.segmentComboBox = FakeCombo()
    ui.taskComboBox = FakeCombo("task")
    ui.inputSelector = FakeWidget("inputVolume")
    ui.modelComboBox = FakeCombo()
    ui.superResolveModeComboBox = FakeCombo()
    ui.fineTuneCheckBox = FakeCheckBox()
    ui.adaptCheckBox = FakeCheckBox()
    ui.showResearchModelsCheckBox = FakeCheckBox()
    return ui


class FakeCheckBox(FakeWidget):
    """A check box that remembers whether the panel enabled it."""

    def __init__(self, parameter=None):
        super().__init__(parameter)
        self.checked = False

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)


def test_connect_gui_gets_a_tag_and_entering_again_adds_no_connections(module):
    wrapper = Wrapper58(module, slicer.mrmlScene)
    ui = fake_ui()
    tag = module.connectParameterNodeGui(wrapper, ui)
    assert tag is not None and set(wrapper.connections[tag]) == {"task", "inputVolume"}
    wrapper.disconnectGui(tag)
    widget = module.QHQGANWidget()
    widget.ui, widget.logic = ui, module.QHQGANLogic()
    for _ in range(4):  # enter(), exit(), scene close ... as often as the user likes
        widget.setParameterNode(wrapper)
        assert len(wrapper.connections) == 1 and len(wrapper.observers) == 1
        widget.exit()
        assert wrapper.connections == {} and wrapper.observers == {}


# ---------------------------------------------------------------------------
# item 8: the model choice and the custom weights are kept in the parameter node
# ---------------------------------------------------------------------------
def test_research_controls_are_listed_only_on_request(module):
    """Issue #29 item 9: the model list mixed research controls (mlp-control-*, no-circuit-*) with the
    product; they appear when "Show research models" is ticked."""
    wrapper = Wrapper58(module, slicer.mrmlScene)
    widget = module.QHQGANWidget()
    widget.ui, widget.logic = fake_ui(), module.QHQGANLogic()
    widget.setParameterNode(wrapper)
    shown = list(widget.ui.modelComboBox.items)
    assert shown[0] == "hqgan-film-enhance" and "redcnn-enhance" in shown
    assert not any(n.startswith(("mlp-control", "no-circuit")) for n in shown)
    widget.ui.showResearchModelsCheckBox.checked = True
    widget.onShowResearchModelsToggled(True)
    assert {"mlp-control-enhance", "mlp-control-film-enhance", "no-circuit-enhance"} <= set(widget.ui.modelComboBox.items)


def test_model_choice_survives_leaving_and_entering_the_module(module):
    wrapper = Wrapper58(module, slicer.mrmlScene)
    logic = module.QHQGANLogic()
    widget = module.QHQGANWidget()
    widget.ui, widget.logic = fake_ui(), logic
    widget.setParameterNode(wrapper)
    names = logic.modelNames("enhance", research=False)
    assert len(names) >= 2 and widget.ui.modelComboBox.currentText == names[0]
    widget.ui.modelComboBox.setCurrentIndex(1)
    widget.onModelChanged(1)
    widget.exit()
    again = module.QHQGANWidget()  # a new panel on the same scene: the choice is read back
    again.ui, again.logic = fake_ui(), logic
    again.setParameterNode(wrapper)
    assert again.ui.modelComboBox.currentText == names[1]
    assert wrapper.parameterNode.GetParameter("Model.enhance") == names[1]
    # the selector's tooltip says what the chosen model measurably does (issue #26 item 6): its card's
    # held-out numbers, in dB
    tip = again.ui.modelComboBox.toolTip
    assert tip.startswith(names[1] + ":") and " dB" in tip


def test_an_empty_weights_path_is_empty_not_a_dot(module):
    wrapper = Wrapper58(module, slicer.mrmlScene)
    logic = module.QHQGANLogic()
    assert logic.customWeights(wrapper) == ""
    logic.setCustomWeights(wrapper, ".")
    assert logic.customWeights(wrapper) == ""
    logic.setCustomWeights(wrapper, "/w/my.safetensors")
    assert logic.customWeights(wrapper) == "/w/my.safetensors"
    fields = {n.target.id for n in ast.walk(ast.parse(MODULE.read_text())) if isinstance(n, ast.AnnAssign)
              and isinstance(n.target, ast.Name)}
    assert "customWeights" not in fields, "a pathlib.Path field shows an empty path as '.'"


# ---------------------------------------------------------------------------
# "Adapt to this scan first" (Enhance): kept in the parameter node, enabled for Enhance only,
# adapt_steps=ADAPT_DEFAULT_STEPS given to the runner when ticked
# ---------------------------------------------------------------------------
def adapt_panel(module):
    """A panel on a Slicer 5.8 wrapper holding the parameter node's defaults (what ``_options`` reads)."""
    wrapper = Wrapper58(module, slicer.mrmlScene)
    for field in ("computeDevice", "pennylaneDevice", "tileSize", "overlap", "tileBatch", "nSamples", "seed",
                  "doseFraction", "strength"):
        setattr(wrapper, field, getattr(module.QHQGANParameterNode, field))
    widget = module.QHQGANWidget()
    widget.ui, widget.logic = fake_ui(), module.QHQGANLogic()
    widget.setParameterNode(wrapper)
    return widget, wrapper


def test_adapt_box_is_kept_in_the_parameter_node(module):
    widget, wrapper = adapt_panel(module)
    logic = widget.logic
    assert logic.adapt(wrapper) is False and widget.ui.adaptCheckBox.checked is False  # off by default
    widget.ui.adaptCheckBox.checked = True
    widget.onAdaptToggled(True)
    assert wrapper.parameterNode.GetParameter(module.ADAPT_PARAMETER) == "true" and logic.adapt(wrapper)
    assert module.ADAPT_PARAMETER != module.FINE_TUNE_PARAMETER and not logic.fineTune(wrapper)
    widget.exit()
    again = module.QHQGANWidget()  # a new panel on the same scene: the box is read back
    again.ui, again.logic = fake_ui(), logic
    again.setParameterNode(wrapper)
    assert again.ui.adaptCheckBox.checked is True
    logic.setAdapt(wrapper, False)
    assert wrapper.parameterNode.GetParameter(module.ADAPT_PARAMETER) == "false" and not logic.adapt(wrapper)


def test_adapt_box_is_enabled_for_enhance_only(module):
    widget, wrapper = adapt_panel(module)
    for task in module.Task:
        wrapper.task = task
        widget._updateGui()
        assert widget.ui.adaptCheckBox.enabled is (task is module.Task.ENHANCE), task
        assert widget.ui.fineTuneCheckBox.enabled is False, task  # super-resolve pixels: no fine-tuning


def test_adapt_box_gives_the_runner_adapt_steps_for_enhance_only(module):
    from QHQGANLib.apps.cli import build_parser
    from QHQGANLib.apps.request import build_command
    from QHQGANLib.core.options import ADAPT_DEFAULT_STEPS

    widget, wrapper = adapt_panel(module)
    assert module.ADAPT_DEFAULT_STEPS == ADAPT_DEFAULT_STEPS == 300
    assert widget._options()["adapt_steps"] == 0  # not ticked
    widget.ui.adaptCheckBox.checked = True
    options = widget._options()
    assert options["adapt_steps"] == ADAPT_DEFAULT_STEPS and options["fine_tune_steps"] == 0
    request = TaskRequest("enhance", **options)  # what logic.process makes of the panel's options
    argv = build_command(request, "in.nrrd", "out.nrrd", "python")
    assert argv[argv.index("--adapt-steps") + 1] == "300"
    args = build_parser().parse_args(argv[3:])  # and the child's command line takes it
    assert args.adapt_steps == ADAPT_DEFAULT_STEPS and args.adapt_time_limit == request.adapt_time_limit
    assert request.attributes()["adapt_steps"] == ADAPT_DEFAULT_STEPS
    for task in module.Task:  # ticked, but not Enhance: no adaptation; the options suit every task's request
        if task is module.Task.ENHANCE:
            continue
        wrapper.task = task
        options = widget._options()
        assert options["adapt_steps"] == 0, task
        assert "adapt_steps" not in TaskRequest(task.value, **options).attributes(), task
    wrapper.task = module.Task.ENHANCE
    widget.ui.adaptCheckBox.checked = False
    argv = build_command(TaskRequest("enhance", **widget._options()), "in.nrrd", "out.nrrd", "python")
    assert argv[argv.index("--adapt-steps") + 1] == "0"


def test_adapt_starts_an_enhance_run_with_adapt_steps(module, monkeypatch):
    """Apply with the box ticked: logic.process gets task="enhance" and adapt_steps=ADAPT_DEFAULT_STEPS."""
    import contextlib

    widget, wrapper = adapt_panel(module)
    wrapper.inputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    widget.ui.adaptCheckBox.checked = True
    calls = []
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(widget.logic, "installDependencies", lambda **kwargs: True)
    monkeypatch.setattr(widget.logic, "process", lambda node, **kwargs: calls.append((node, kwargs)) or object())
    widget.onApplyButton()
    assert len(calls) == 1
    node, kwargs = calls[0]
    assert node is wrapper.inputVolume and kwargs["task"] == "enhance" and kwargs["blocking"] is False
    assert kwargs["adapt_steps"] == 300
    options = {k: v for k, v in kwargs.items() if k not in ("task", "blocking")}
    assert TaskRequest(kwargs["task"], **options).adapt_steps == 300  # every key is a TaskRequest field


# ---------------------------------------------------------------------------
# item 7: synthetic results never end up under (or inside) a real patient's data
# ---------------------------------------------------------------------------
def test_synthesis_is_not_placed_under_the_input_nor_moved_into_a_real_volume(module, ct_small_path):
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "Study")
    sh.CreateItem(study, ct)
    logic = module.QHQGANLogic()
    low = logic.process(ct, task="simulate-low-dose", dose=0.5, seed=0)
    assert sh.GetItemParent(sh.GetItemByDataNode(low)) == study and not is_synthetic_node(low)
    before = slicer.util.arrayFromVolume(low).copy()

    with pytest.raises(ValueError, match="choose 'Create new volume'"):  # refused before it runs (#29)
        logic.process(ct, task="synthesize", n_samples=1, seed=0, outputNode=low)
    synthetic = logic.process(ct, task="synthesize", n_samples=1, seed=0)
    assert synthetic is not low, "a synthetic result was moved into a real patient's volume"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(low), before)
    assert is_synthetic_node(synthetic) and synthetic.GetAttribute("QHQGAN.synthetic") == "true"
    assert synthetic.GetName().startswith("SYNTHETIC_") and "CT_small" not in synthetic.GetName()
    assert synthetic.GetAttribute("QHQGAN.source_node") is None
    item = sh.GetItemByDataNode(synthetic)  # none here; Slicer's subject hierarchy logic adds it at the top
    assert not item or sh.GetItemParent(item) == sh.GetSceneItemID()

    # the reverse: a result from real CT is not moved into a synthetic volume
    with pytest.raises(ValueError, match="is synthetic"):
        logic.process(ct, task="simulate-low-dose", dose=0.5, seed=1, outputNode=synthetic)
    assert is_synthetic_node(synthetic)
    # and an earlier output picked on purpose takes the new result and its name
    picked = logic.process(ct, task="simulate-low-dose", dose=0.25, seed=1, outputNode=low)
    assert picked is low and low.GetName() == "CT_small_dose25pct"


def test_the_panel_does_not_select_its_result_as_the_next_output():
    tree = ast.parse(MODULE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                assert not (isinstance(target, ast.Attribute) and target.attr == "outputVolume"), (
                    f"line {node.lineno}: the panel sets the output volume itself")


def test_one_naming_for_the_runner_and_the_scene_bridge():
    assert default_output_name(TaskRequest("super-resolve")) == output_name("super-resolve") == "QHQGAN_SRx2"
    assert TaskRequest("synthesize").attributes()["synthetic"] == "true"
    source = (REPO / "QHQGANLib" / "apps" / "scene.py").read_text()
    assert "YES (not for diagnosis)" not in source and '"sr{scale}x"' not in source
    request = TaskRequest("synthesize", seed=3)
    assert default_output_name(request, types.SimpleNamespace(GetName=lambda: "Patient_CT")) == (
        f"SYNTHETIC_{request.model_name()}_seed3")


# ---------------------------------------------------------------------------
# item 6: Compare shows both axial, with the same window/level
# ---------------------------------------------------------------------------
def test_compare_shows_both_views_axial_with_the_inputs_window(ct_small_path):
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    views = []
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal")):  # Yellow as Slicer creates it
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        slice_node.SetOrientation(orientation)
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        views.append((slice_node, composite))
    ct = node_from_volume(read_volume(ct_small_path), scene, "CT")
    ct.GetDisplayNode().SetWindowLevel(1500, -600)  # the user's lung window
    out = node_from_volume(read_volume(ct_small_path), scene, "CT_enhanced")
    show_side_by_side(ct, out, views)
    assert [s.GetOrientation() for s, _ in views] == ["Axial", "Axial"]
    assert [c.GetBackgroundVolumeID() for _, c in views] == [ct.GetID(), out.GetID()]
    assert all(c.GetLinkedControl() for _, c in views)
    display = out.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1500, -600) and not display.GetAutoWindowLevel()
    scene.Clear(True)


# ---------------------------------------------------------------------------
# item 9: no gzip on the GUI thread; a blocking call processes Slicer's events
# ---------------------------------------------------------------------------
def test_the_temporary_input_is_written_uncompressed(ct_small_path):
    from QHQGANLib.apps.node_task import TemporaryWorkspace

    with TemporaryWorkspace(read_volume(ct_small_path)) as ws:
        header = ws.input_path.read_bytes()[:2000].split(b"\n\n")[0].decode("latin-1")
        assert re.search(r"^encoding: raw$", header, re.M), header


def test_blocking_process_keeps_slicer_responsive(module, ct_small_path, monkeypatch):
    calls = []
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: calls.append(1)), raising=False)
    ct = ct_node(slicer.mrmlScene, ct_small_path)
    out = module.QHQGANLogic().process(ct, task="simulate-low-dose", dose=0.5)
    assert out.GetName() == "CT_small_dose50pct" and len(calls) >= 1


# ---------------------------------------------------------------------------
# item 11: the self-test, registered with CTest, on a small volume, skipping what cannot run
# ---------------------------------------------------------------------------
def test_self_test_runs_on_a_small_phantom_without_download(module):
    test = module.QHQGANTest()
    ran = test.test_QHQGAN_tasks_on_a_small_phantom()
    assert ran == ["simulate-low-dose", "enhance", "super-resolve", "synthesize", "super-resolve slices"], test.messages
    assert "SampleData" not in MODULE.read_text() and "downloadSample" not in MODULE.read_text()


def test_self_test_skips_a_task_whose_packages_are_missing(module, monkeypatch):
    from QHQGANLib.apps import dependencies

    monkeypatch.setattr(dependencies, "missing_requirements", lambda files: ["pennylane>=0.38"]
                        if any(Path(f).name == dependencies.MODEL_REQUIREMENTS for f in files) else [])
    test = module.QHQGANTest()
    assert test.test_QHQGAN_tasks_on_a_small_phantom() == ["simulate-low-dose"]
    assert any("Skipped enhance: missing Python packages: pennylane>=0.38" in m for m in test.messages)


def test_install_asks_no_torch_for_simulate_low_dose(module, monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    logic = module.QHQGANLogic()
    assert logic.installDependencies(askConfirmation=False, task="simulate-low-dose") is True
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        logic.installDependencies(askConfirmation=False, task="enhance")


def test_self_test_is_registered_with_ctest(tmp_path):
    import shutil
    import subprocess

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_extension_build import STAND_IN_SLICER_CONFIG
    finally:
        sys.path.pop(0)
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    slicer_dir, build = tmp_path / "Slicer", tmp_path / "build"
    slicer_dir.mkdir()
    config = STAND_IN_SLICER_CONFIG + "\nmacro(slicer_add_python_unittest)\n  _record_call(slicer_add_python_unittest ${ARGN})\nendmacro()\n"
    (slicer_dir / "SlicerConfig.cmake").write_text(config)
    for name in ("UseSlicer.cmake", "GenerateConfig.cmake", "CPack.cmake"):
        (slicer_dir / name).write_text("# stand-in: empty\n")
    result = subprocess.run([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={slicer_dir}",
                             "-DBUILD_TESTING=ON"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = (build / "macro-calls.txt").read_text().splitlines()
    assert any(line.startswith("slicer_add_python_unittest|SCRIPT|QHQGAN.py|") for line in calls), calls
    for name in ("requirements-base.txt", "requirements-models.txt"):
        assert (build / "lib/Slicer-5.8/qt-scripted-modules/Resources" / name).is_file()


# ---------------------------------------------------------------------------
# item 12: licence, a human-readable title, translatable strings
# ---------------------------------------------------------------------------
def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Copyright" in text and "QHQGAN contributors" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_title_is_human_readable_and_strings_are_translatable(module):
    tree = ast.parse(MODULE.read_text())
    wrapped = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) and \
                isinstance(node.targets[0].value, ast.Attribute) and node.targets[0].value.attr == "parent":
            value = node.value
            wrapped[node.targets[0].attr] = isinstance(value, ast.Call) and getattr(value.func, "id", "") == "_"
    assert wrapped["title"] and wrapped["helpText"] and wrapped["acknowledgementText"]
    parent = types.SimpleNamespace()
    module.QHQGAN(parent)
    assert parent.title != "QHQGAN" and " " in parent.title and "Hybrid Quantum GAN" in parent.title
    assert module._("Apply") == "Apply"  # identity without slicer.i18n
    assert isinstance(module.Task.ENHANCE, enum.Enum) and module.Task.ENHANCE.label() == "Enhance low-dose CT"
    assert "from slicer.i18n import tr as _" in MODULE.read_text()


def test_a_super_resolution_mode_without_a_shipped_model_is_not_run_with_another_scale(module, ct_small_path):
    """Issue #29 item 9: "Slices x3/x4" kept the x2 model selected and failed at once. Each mode lists only the
    models of its own scale; a mode none serves offers the user's own weights file, and Apply waits for one."""
    widget, wrapper = adapt_panel(module)
    wrapper.inputVolume = ct_node(slicer.mrmlScene, ct_small_path)
    wrapper.task = module.Task("super-resolve")
    for _axis, _scale, label in module.SUPER_RESOLVE_MODES:
        widget.ui.superResolveModeComboBox.addItem(label)
    shipped_z2 = widget.logic.modelNames("super-resolve", "z", scale=2)
    assert shipped_z2 and not widget.logic.modelNames("super-resolve", "z", scale=3)
    widget.ui.superResolveModeComboBox.setCurrentIndex(1)  # Slices x2
    widget._updateGui()
    assert widget.ui.modelComboBox.currentText == shipped_z2[0] and widget.ui.applyButton.enabled
    widget.ui.superResolveModeComboBox.setCurrentIndex(2)  # Slices x3: no x3 model ships
    widget._updateGui()
    assert widget.ui.modelComboBox.items == [module.CUSTOM_WEIGHTS]
    assert not widget.ui.applyButton.enabled and "No shipped model" in widget.ui.applyButton.toolTip


# ---------------------------------------------------------------------------
# issue #29 item 9: the panel as a clinician sees it
# ---------------------------------------------------------------------------
class ShownWidget(FakeCheckBox):
    """A widget that remembers whether the panel shows it."""

    def __init__(self, parameter=None):
        super().__init__(parameter)
        self.visible = True

    def setVisible(self, visible):
        self.visible = bool(visible)


def test_each_task_shows_its_one_main_setting_and_hides_the_others(module):
    widget, wrapper = adapt_panel(module)
    for names, _tasks in module.MAIN_SETTINGS:
        for name in names:
            shown = getattr(widget.ui, name, None) or ShownWidget()  # the fakes' own kind (a combo stays one)
            shown.visible = True
            shown.setVisible = lambda visible, w=shown: setattr(w, "visible", bool(visible))
            setattr(widget.ui, name, shown)
    shown_for = {"simulate-low-dose": "doseSpinBox", "enhance": "strengthSpinBox", "synthesize": "samplesSpinBox",
                 "synthesize-from-labels": "samplesSpinBox", "super-resolve": "superResolveModeComboBox",
                 "insert-lesion": None}  # its kind is in the Lesion section, enabled for it alone
    settings = {"doseSpinBox", "strengthSpinBox", "samplesSpinBox", "superResolveModeComboBox"}
    for task in module.Task:
        wrapper.task = task
        widget._updateGui()
        visible = {name for name in settings if getattr(widget.ui, name).visible}
        assert visible == ({shown_for[task.value]} if shown_for[task.value] else set()), task
        main = shown_for[task.value]
        if main and main != "superResolveModeComboBox":
            assert getattr(widget.ui, main).enabled, task


def _running_panel(module, ct_small_path, monkeypatch):
    """A panel whose Apply started Simulate low dose on CT_small (a real worker), observing the real scene's
    StartCloseEvent as setup() does."""
    import contextlib

    widget, wrapper = adapt_panel(module)
    scene = slicer.mrmlScene
    widget.addObserver(scene, scene.StartCloseEvent, widget.onSceneStartClose)
    wrapper.inputVolume = ct_node(scene, ct_small_path)
    wrapper.task = module.Task.SIMULATE_LOW_DOSE
    widget._updateGui()
    errors = []
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: errors.append(text), raising=False)
    monkeypatch.setattr(widget.logic, "installDependencies", lambda **kwargs: True)
    widget.onApplyButton()
    assert widget._job is not None and widget._job.running
    return widget, errors


def test_closing_the_scene_during_a_run_cancels_it_and_says_so_in_one_line(module, ct_small_path, monkeypatch,
                                                                          caplog):
    """Slicer cannot let a module veto a scene close: the run is cancelled, nothing is written, and the panel's
    status and Slicer's error log (Python logging) say so in one line, also after the worker has ended."""
    import logging
    import time

    widget, errors = _running_panel(module, ct_small_path, monkeypatch)
    scene = slicer.mrmlScene
    expected = ("the scene was closed while Simulate low dose ran: the run was cancelled and nothing was written")
    with caplog.at_level(logging.INFO):
        scene.Clear(False)  # File > Close Scene: StartCloseEvent, then EndCloseEvent
        assert widget.ui.statusLabel.text == expected
        deadline = time.monotonic() + 30
        while widget._job is not None and time.monotonic() < deadline:
            widget.onPoll()
            time.sleep(0.05)
    assert widget._job is None, "the worker was not ended"
    assert widget.ui.statusLabel.text == expected
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in logged] == [f"QHQGAN: {expected}"]
    assert errors == []  # a message box after the scene is gone would only repeat it
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0, "a result was written into the new scene"
    widget.removeObservers()


def test_cancel_by_the_user_still_says_cancelled(module, ct_small_path, monkeypatch):
    """The scene-closed line is only for a scene close: Cancel keeps its own wording, and the next run starts clean."""
    import time

    widget, _errors = _running_panel(module, ct_small_path, monkeypatch)
    widget.onApplyButton()  # the button reads Cancel while running
    deadline = time.monotonic() + 30
    while widget._job is not None and time.monotonic() < deadline:
        widget.onPoll()
        time.sleep(0.05)
    assert widget._job is None and "cancelled" in widget.ui.statusLabel.text.lower()
    assert "scene was closed" not in widget.ui.statusLabel.text
    widget.removeObservers()


def test_an_installed_torch_older_than_needed_is_refused_with_how_to_update(module, monkeypatch):
    """An existing torch is version-checked (torch>=2.2, pyproject.toml): the panel refuses the model tasks in one
    line naming the installed and the needed torch and the PyTorch extension's way to update; Simulate low dose
    (no torch) still runs."""
    import contextlib
    import importlib.util as iu
    from importlib import metadata

    from QHQGANLib.apps import dependencies

    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"torch>={dependencies.TORCH_MINIMUM}"' in pyproject  # one floor for the CLI and the panel
    real_spec, real_version = iu.find_spec, metadata.version
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: (types.SimpleNamespace(name="torch") if name == "torch"
                                                            else real_spec(name, *a)))
    monkeypatch.setattr(metadata, "version", lambda name: "2.1.2+cu121" if name == "torch" else real_version(name))
    assert dependencies.installed_torch_version() == "2.1.2+cu121"
    assert dependencies.torch_too_old() == "2.1.2+cu121"
    assert dependencies.torch_too_old("2.2.0+cpu") is None and dependencies.torch_too_old("2.5.1") is None
    installs = []
    extension = types.SimpleNamespace(PyTorchUtilsLogic=lambda: installs.append(1))  # never asked to install
    monkeypatch.setitem(sys.modules, "PyTorchUtils", extension)
    logic = module.QHQGANLogic()
    with pytest.raises(dependencies.OutdatedTorch) as refused:
        logic.installDependencies(askConfirmation=False, task="enhance")
    line = str(refused.value)
    assert "\n" not in line and installs == []
    for words in ("torch 2.1.2+cu121 is installed", "needs torch >= 2.2", "PyTorch Utils module", "restart Slicer",
                  "installTorch(torchVersionRequirement='>=2.2')"):
        assert words in line, line
    assert logic.taskUnavailableReason("enhance") == line
    assert logic.taskUnavailableReason("simulate-low-dose") is None
    # the panel: Apply says it in the status line (and a message box), and starts nothing
    widget, wrapper = adapt_panel(module)
    wrapper.inputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    shown, started = [], []
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: shown.append(text), raising=False)
    monkeypatch.setattr(widget.logic, "process", lambda *a, **k: started.append(1))
    widget.onApplyButton()
    assert started == [] and widget._job is None
    assert widget.ui.statusLabel.text == shown[0] and "torch 2.1.2+cu121 is installed" in shown[0]
