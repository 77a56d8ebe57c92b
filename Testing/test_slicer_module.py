"""The Slicer module's panel (QHQGAN/Resources/UI/QHQGAN.ui) checked against QHQGAN/QHQGAN.py, offscreen.

Slicer itself is not needed: PySide6's QUiLoader builds the .ui with stand-in
widgets for Slicer's and CTK's own classes, and the module source is read with
``ast`` (it imports Slicer's ``qt``, so it is not imported here).

Render the panel picture for the README::

    QT_QPA_PLATFORM=offscreen python Testing/test_slicer_module.py   # writes Resources/Images/panel.png
"""
from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from QHQGANLib.core.kinds import TASKS

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 (test extra) renders the .ui offscreen")
from PySide6 import QtCore, QtGui, QtUiTools  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "QHQGAN" / "QHQGAN.py"
UI = REPO / "QHQGAN" / "Resources" / "UI" / "QHQGAN.ui"
PANEL_PNG = REPO / "Resources" / "Images" / "panel.png"
PARAMETER_PROPERTY = "SlicerParameterName"


# ---------------------------------------------------------------------------
# stand-ins for Slicer/CTK widget classes
# ---------------------------------------------------------------------------
def _text_property(getter_name: str, setter_name: str):
    return QtCore.Property(str, lambda self: getattr(self, getter_name)(),
                           lambda self, value: getattr(self, setter_name)(value))


def _stand_in_classes():
    """QWidget subclasses named like Slicer's, with the few properties the .ui sets that matter for a picture."""

    def set_none_display(self, text):
        self._none_display = text
        if self.count() == 0:
            self.addItem(text)
        else:
            self.setItemText(0, text)

    node_combo = type("qMRMLNodeComboBox", (QtWidgets.QComboBox,), {
        "noneDisplay": QtCore.Property(str, lambda self: getattr(self, "_none_display", ""), set_none_display)})
    collapsible = type("ctkCollapsibleButton", (QtWidgets.QGroupBox,), {
        "text": _text_property("title", "setTitle"),
        "collapsed": QtCore.Property(bool, lambda self: bool(getattr(self, "_collapsed", False)),
                                     lambda self, value: setattr(self, "_collapsed", bool(value)))})
    path_edit = type("ctkPathLineEdit", (QtWidgets.QLineEdit,), {})
    mrml_widget = type("qMRMLWidget", (QtWidgets.QWidget,), {})
    return [node_combo, collapsible, path_edit, mrml_widget]


_APP = None
#: created once and kept alive: QUiLoader does not hold a reference to registered classes
STAND_INS = _stand_in_classes()


def app():
    global _APP
    _APP = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    return _APP


def load_panel(ui: Path = UI):
    """The widget tree of a module's .ui (QHQGAN's by default), built offscreen with the stand-ins."""
    app()
    loader = QtUiTools.QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    ui_file = QtCore.QFile(str(ui))
    assert ui_file.open(QtCore.QFile.ReadOnly)
    try:
        widget = loader.load(ui_file)
    finally:
        ui_file.close()
    assert widget is not None, loader.errorString()
    return widget


# ---------------------------------------------------------------------------
# what the module source says
# ---------------------------------------------------------------------------
def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(), filename=str(MODULE))


def ui_names_used() -> set:
    """Every ``self.ui.<name>`` in QHQGAN.py."""
    names = set()
    for node in ast.walk(module_tree()):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def parameter_fields() -> dict:
    """Fields of the ``@parameterNodeWrapper`` class: name -> annotation source."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return {stmt.target.id: ast.unparse(stmt.annotation)
                    for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in QHQGAN.py")


def enum_labels(enum_name: str) -> list:
    """The labels of an Enum of QHQGAN.py, from the dict literal its ``label`` method returns, in member order."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == enum_name:
            values = [ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.Assign)]
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "label":
                    for sub in ast.walk(item):
                        if isinstance(sub, ast.Dict):
                            mapping = ast.literal_eval(sub)
                            return [mapping[v] for v in values]
                        if isinstance(sub, ast.IfExp):
                            return [ast.literal_eval(sub.body), ast.literal_eval(sub.orelse)]
    raise AssertionError(f"no labels for {enum_name}")


def ui_widget_fields() -> dict:
    """objectName -> SlicerParameterName, read from the .ui XML."""
    return {object_name: name for name, (_, object_name) in ui_parameter_widgets().items()}


def ui_parameter_widgets() -> dict:
    """SlicerParameterName -> (widget class, objectName), read from the .ui XML."""
    found = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == PARAMETER_PROPERTY:
                name = prop.findtext("string")
                assert name not in found, f"{name} is bound to two widgets"
                found[name] = (widget.get("class"), widget.get("name"))
    return found


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------
def test_ui_loads_offscreen():
    panel = load_panel()
    assert panel.objectName() == "QHQGAN"
    assert panel.findChild(QtWidgets.QPushButton, "applyButton").text() == "Apply"
    assert panel.findChild(QtWidgets.QProgressBar, "progressBar") is not None
    selector = panel.findChild(QtWidgets.QComboBox, "outputSelector")
    assert type(selector).__name__ == "qMRMLNodeComboBox" and selector.itemText(0) == "Create new volume"


def test_every_ui_name_used_by_the_module_exists():
    panel = load_panel()
    object_names = {w.objectName() for w in panel.findChildren(QtCore.QObject)}
    used = ui_names_used()
    assert {"applyButton", "progressBar", "statusLabel", "compareButton", "modelComboBox"} <= used
    missing = sorted(used - object_names)
    assert not missing, f"QHQGAN.py uses self.ui.{missing} which the .ui lacks"


def test_parameter_names_match_the_parameter_node():
    fields = parameter_fields()
    bound = ui_parameter_widgets()
    assert set(bound) - set(fields) == set(), f"SlicerParameterName without a field: {set(bound) - set(fields)}"
    assert set(fields) - set(bound) == set(), f"fields without a widget: {set(fields) - set(bound)}"
    # the widget types suit the field types (what Slicer's GUI connectors accept)
    expected = {"vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox", "pathlib.Path": "ctkPathLineEdit",
                "str": "QLineEdit", "int": "QSpinBox", "float": "QDoubleSpinBox",
                "Task": "QComboBox", "QuantumBackend": "QComboBox", "ComputeDevice": "QComboBox",
                "LesionKind": "QComboBox", "LesionTexture": "QComboBox",
                # a union of node classes (and None): Slicer's connector sets the combo box's nodeTypes from it
                "Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]": "qMRMLNodeComboBox"}
    for name, annotation in fields.items():
        base = re.sub(r"^Annotated\[(\w+),.*\]$", r"\1", annotation)
        assert bound[name][0] == expected[base], f"{name}: {annotation} bound to a {bound[name][0]}"
    # the panel's widgets carry the property at run time too (what connectGui reads)
    panel = load_panel()
    runtime = {w.property(PARAMETER_PROPERTY) for w in panel.findChildren(QtWidgets.QWidget)} - {None}
    assert runtime == set(fields)


def test_bounds_in_ui_match_the_parameter_node():
    """The loaded panel's spin boxes have the ranges and defaults of the options their fields take them from
    (``WithinRange(*option_range("tile_size"))``; QHQGAN.py's setup() sets the ranges from the schema too)."""
    from QHQGANLib.core.options import OPTIONS, option_range

    panel = load_panel()
    fields = parameter_fields()
    checked = set()
    for name, (cls, object_name) in ui_parameter_widgets().items():
        match = re.search(r"WithinRange\(\*option_range\('(\w+)'\)\)", fields[name])
        if not match:
            assert "WithinRange" not in fields[name], f"{name}: a range written outside the schema"
            continue
        option = match.group(1)
        box = panel.findChild(QtWidgets.QAbstractSpinBox, object_name)
        assert (box.minimum(), box.maximum()) == option_range(option), name
        assert box.value() == OPTIONS[option].default, name
        checked.add(option)
    assert checked == {"tile_size", "overlap", "tile_batch", "n_samples", "seed", "dose", "strength"}


def test_adapt_check_box_sits_under_the_strength_and_says_what_it_does():
    """The "Adapt to this scan first" check box: below Enhancement strength (stored raw in the parameter node,
    like the fine-tune box, so bound to no field), its rows numbered one after the other. Both sit in Inputs,
    beside the task (issue #29 item 9: a task's main setting is outside the collapsed sections)."""
    root = ET.parse(UI).getroot()
    layouts = {layout.get("name"): layout for layout in root.iter("layout")}
    inputs = layouts["inputsFormLayout"]
    cells = {}
    for item in inputs.findall("item"):
        widget = item.find("widget")
        cells[(int(item.get("row")), int(item.get("column")))] = widget.get("name")
    for name in ("inputsFormLayout", "modelFormLayout", "advancedFormLayout", "outputsFormLayout"):
        rows = sorted({int(item.get("row")) for item in layouts[name].findall("item")})
        assert rows == list(range(len(rows))), f"{name}: rows {rows}"
        assert len(layouts[name].findall("item")) == len({(i.get("row"), i.get("column"))
                                                          for i in layouts[name].findall("item")}), name
    strength_row = next(row for (row, column), name in cells.items() if name == "strengthSpinBox")
    assert cells[(strength_row + 1, 1)] == "adaptCheckBox" and (strength_row + 1, 0) not in cells
    panel = load_panel()
    box = panel.findChild(QtWidgets.QCheckBox, "adaptCheckBox")
    assert box is not None and box.text() == "Adapt to this scan first (1-2 minutes)"
    assert not box.isChecked() and box.property(PARAMETER_PROPERTY) is None
    tip = box.toolTip().lower()
    for words in ("fine-tune", "own noise", "self-supervised", "no clean image", "minutes on a cpu", "cancel",
                  "input volume is not modified"):
        assert words in tip, f"the tooltip does not say {words!r}: {box.toolTip()}"
    assert "adaptCheckBox" in ui_names_used()


#: each task's one main setting (issue #29 item 9): the widget a clinician sets, outside Model and Advanced
MAIN_SETTING_WIDGETS = {"simulate-low-dose": "doseSpinBox", "enhance": "strengthSpinBox",
                        "super-resolve": "superResolveModeComboBox", "synthesize": "samplesSpinBox",
                        "synthesize-from-labels": "samplesSpinBox", "insert-lesion": "lesionKindComboBox"}


def test_model_and_advanced_are_collapsed_and_each_main_setting_is_outside_them():
    """As setup() loads the panel: Model and Advanced start collapsed (their ~10 technical controls hidden),
    and every task's main setting (dose, strength, scale/mode, samples, lesion kind) is outside them."""
    assert set(MAIN_SETTING_WIDGETS) == set(TASKS)
    panel = load_panel()
    collapsibles = {w.objectName(): w for w in panel.findChildren(QtWidgets.QGroupBox)
                    if type(w).__name__ == "ctkCollapsibleButton"}
    for name in ("modelCollapsibleButton", "advancedCollapsibleButton"):
        assert collapsibles[name].property("collapsed") is True, f"{name} is not collapsed by default"
    for name in ("inputsCollapsibleButton", "lesionCollapsibleButton", "outputsCollapsibleButton"):
        assert collapsibles[name].property("collapsed") is False, f"{name} is collapsed"
    hidden = (collapsibles["modelCollapsibleButton"], collapsibles["advancedCollapsibleButton"])
    for task, name in MAIN_SETTING_WIDGETS.items():
        widget = panel.findChild(QtWidgets.QWidget, name)
        assert widget is not None, name
        assert not any(section.isAncestorOf(widget) for section in hidden), f"{task}: {name} is in a collapsed section"
    # the module neither expands them nor relies on a main setting's widget under them
    source = MODULE.read_text()
    assert not re.search(r"(modelCollapsibleButton|advancedCollapsibleButton)\.(collapsed|setCollapsed)", source)


def test_panel_renders(tmp_path):
    path = render_panel(tmp_path / "panel.png")
    image = QtGui.QImage(str(path))
    assert image.width() >= 300 and image.height() >= 400
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 5, "the rendered panel is blank"


# ---------------------------------------------------------------------------
# the module's logic on slicer-core's real MRML (Qt and the scripted-module base classes stubbed)
# ---------------------------------------------------------------------------
@pytest.fixture
def qhqgan_module(monkeypatch):
    """QHQGAN.py executed with stand-ins for what only the Slicer application provides."""
    import importlib.util
    import types

    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
    import slicer.util  # noqa: F401

    class _Signal:
        def connect(self, slot):
            self.slot = slot

    class QTimer:
        def __init__(self):
            self.timeout = _Signal()

        def setInterval(self, ms):
            self.interval = ms

        def start(self):
            pass

        def stop(self):
            pass

    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class _Base:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleLogic(_Base):
        def getParameterNode(self):
            raise NotImplementedError("no parameter node outside Slicer")

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = slm.ScriptedLoadableModuleTest = _Base
    slm.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda low, high: ("WithinRange", low, high)
    for name, module in (("qt", qt), ("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw)):
        monkeypatch.setitem(sys.modules, name, module)
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("QHQGAN_under_test", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, scene
    scene.Clear(True)


def test_parameter_node_is_built_from_the_schema(qhqgan_module):
    """Evaluated, the parameter node's annotations hold the schema's ranges and its defaults the schema's."""
    import typing

    from QHQGANLib.core.options import OPTIONS

    module, _ = qhqgan_module
    node = module.QHQGANParameterNode
    for widget, name in module.SPIN_BOX_OPTIONS.items():
        field = ui_widget_fields()[widget]
        base, within = typing.get_args(node.__annotations__[field])
        assert base is OPTIONS[name].type and within == ("WithinRange", *OPTIONS[name].range), field
        assert getattr(node, field) == OPTIONS[name].default, field
    assert node.computeDevice.value == OPTIONS["device"].default
    assert node.quantumBackend.value == OPTIONS["quantum_backend"].default


def test_module_logic_runs_a_task_on_real_mrml(qhqgan_module, ct_small_path):
    module, scene = qhqgan_module
    import slicer.util

    from QHQGANLib import read_volume
    from QHQGANLib.apps.scene import node_from_volume

    assert tuple(t.value for t in module.Task) == TASKS
    assert module.Task.SUPER_RESOLVE.label() == "Super-resolve x2"
    ct = node_from_volume(read_volume(ct_small_path), scene, "CT_small")
    logic = module.QHQGANLogic()
    seen = []
    out = logic.process(ct, task="simulate-low-dose", dose=0.5, seed=2, progress=lambda f, m: seen.append(f))
    assert out.GetName() == "CT_small_dose50pct" and out.GetAttribute("QHQGAN.seed") == "2"
    assert seen and seen[-1] == 1.0
    picked = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "picked")  # an empty volume: a new node
    again = logic.process(ct, task="simulate-low-dose", outputNode=picked)
    assert again is picked and slicer.util.arrayFromVolume(picked).shape == slicer.util.arrayFromVolume(ct).shape
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3  # input, first output, picked
    with pytest.raises(ValueError, match="is the input volume"):  # the input is never the output (#29: refused)
        logic.process(ct, task="simulate-low-dose", outputNode=ct)
    assert slicer.util.arrayFromVolume(ct).max() == read_volume(ct_small_path).array.max()
    job = logic.process(ct, task="simulate-low-dose", blocking=False)
    job.cancel()
    with pytest.raises(Exception, match="cancelled"):
        logic.finish(job)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3
    assert logic.installDependencies(askConfirmation=False) is True  # all present here: nothing to install


# ---------------------------------------------------------------------------
# the README picture
# ---------------------------------------------------------------------------
def render_panel(path: Path, width: int = 380) -> Path:
    """Render the panel to ``path`` as a clinician sees it while enhancing CTChest (Apply has become Cancel)."""
    panel = load_panel()
    panel.findChild(QtWidgets.QComboBox, "inputSelector").insertItem(0, "CTChest")
    panel.findChild(QtWidgets.QComboBox, "inputSelector").setCurrentIndex(0)
    for object_name, enum_name in (("taskComboBox", "Task"), ("quantumBackendComboBox", "QuantumBackend"),
                                   ("deviceComboBox", "ComputeDevice")):
        panel.findChild(QtWidgets.QComboBox, object_name).addItems(enum_labels(enum_name))
    from QHQGANLib.core.kinds import models_for_task

    models = [card["name"] for card in models_for_task("enhance")]  # as the panel lists them, default first
    panel.findChild(QtWidgets.QComboBox, "modelComboBox").addItems(models + ["Custom weights file…"])
    panel.findChild(QtWidgets.QLineEdit, "customWeightsPathLineEdit").setEnabled(False)
    panel.findChild(QtWidgets.QLineEdit, "pennylaneDeviceLineEdit").setText("lightning.qubit")
    panel.findChild(QtWidgets.QLineEdit, "pennylaneDeviceLineEdit").setEnabled(False)
    for name in ("segmentComboBox", "lesionCollapsibleButton"):  # not Enhance's
        panel.findChild(QtWidgets.QWidget, name).setEnabled(False)
    for name in ("doseLabel", "doseSpinBox", "samplesLabel", "samplesSpinBox", "inputsLabel2",
                 "superResolveModeComboBox", "fineTuneCheckBox"):  # the other tasks' main settings are hidden
        panel.findChild(QtWidgets.QWidget, name).setVisible(False)
    for box in panel.findChildren(QtWidgets.QGroupBox):  # a collapsed ctkCollapsibleButton shows its title only
        if box.property("collapsed"):
            for child in box.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                child.setVisible(False)
            box.setTitle("▸ " + box.title())
            box.setFlat(True)
            box.setMaximumHeight(box.fontMetrics().height() + 4)
    panel.findChild(QtWidgets.QPushButton, "applyButton").setEnabled(True)
    panel.findChild(QtWidgets.QPushButton, "applyButton").setText("Cancel")
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(42)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("Enhance low-dose CT: slice 42/100")
    panel.resize(width, panel.sizeHint().height())
    panel.adjustSize()
    panel.resize(width, panel.height())
    path.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(path)), f"could not write {path}"
    return path


if __name__ == "__main__":
    print(render_panel(Path(sys.argv[1]) if len(sys.argv) > 1 else PANEL_PNG))
