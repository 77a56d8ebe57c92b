"""The QHQGAN Reader module: its logic (QHQGANLib.apps.reading) on slicer-core's real MRML, its panel offscreen."""
from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib.core.volume import Volume
from QHQGANLib.tasks.reader_study import create_study, load_key
from QHQGANLib.tasks.reading_session import LockedAnswerError, load_readings

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "QHQGANReader" / "QHQGANReader.py"
UI = REPO / "QHQGANReader" / "Resources" / "UI" / "QHQGANReader.ui"
METHODS = ("low-dose", "hqgan-enhance")
LIKERT = {"acceptability": 4, "noise": 3, "sharpness": 4, "artefacts": "no"}


def _study(tmp_path, mode):
    vols = {}
    for c in range(3):
        vols[f"case{c}"] = {}
        for k, m in enumerate(METHODS):
            array = np.full((2, 10, 12), 40.0 + 10 * k, np.float32)
            array[:, :, :2] = -1000.0
            vols[f"case{c}"][m] = Volume(array, (0.8, 0.8, 2.0), (5.0, 6.0, 7.0))
    return create_study(vols, tmp_path / mode, mode=mode, seed=2, window="lung")


@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(True)


def _views(scene, n):
    """Slice views as Slicer makes them (orientation presets, layout names), the Red one left sagittal."""
    import slicer

    if not scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"):
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    views = []
    for name in ("Red", "Yellow")[:n]:
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        slice_node.SetOrientation("Sagittal")
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        views.append((slice_node, composite))
    return views


def _volume_nodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def test_logic_shows_single_items_blinded_and_locks_answers(scene, tmp_path):
    from QHQGANLib.apps.reading import ReadingLogic

    study = _study(tmp_path, "single")
    key = load_key(study)
    views = _views(scene, 1)
    logic = ReadingLogic(scene, study, "r1")
    item = logic.show(views)
    (node,) = _volume_nodes(scene)
    assert node.GetName() == item.label and views[0][1].GetBackgroundVolumeID() == node.GetID()
    assert views[0][0].GetOrientation() == "Axial"
    text = node.GetName() + " ".join(f"{n}={node.GetAttribute(n)}" for n in node.GetAttributeNames() or [])
    assert not any(m in text.lower() or "case0" in text.lower() for m in METHODS)
    display = node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1500.0, -600.0)  # the study's lung window
    method = key["items"][item.id]["methods"][0]
    import slicer.util

    expected = 40.0 if method == "low-dose" else 50.0  # the image the key names, voxel for voxel
    assert np.all(slicer.util.arrayFromVolume(node)[:, :, 5:] == expected)
    logic.answer(LIKERT)
    assert _volume_nodes(scene) == []  # the answered item leaves the scene
    with pytest.raises(LockedAnswerError):
        logic.session.answer(item.id, LIKERT)
    second = logic.show(views)
    assert second.id != item.id and second.position == 2
    logic.pause()
    assert _volume_nodes(scene) == [] and logic.item is None
    logic.close()
    logic = ReadingLogic(scene, study, "r1")  # resume: the paused item again
    assert logic.show(views).id == second.id
    while logic.item is not None:
        logic.answer(LIKERT)
        logic.show(views)
    assert logic.progress() == (6, 6) and _volume_nodes(scene) == []
    logic.close()


def test_logic_shows_pairs_side_by_side(scene, tmp_path):
    from QHQGANLib.apps.reading import ReadingLogic

    study = _study(tmp_path, "pairs")
    logic = ReadingLogic(scene, study, "r2")
    with pytest.raises(ValueError, match="2 image"):
        logic.show(_views(scene, 1))
    views = _views(scene, 2)
    item = logic.show(views)
    left, right = _volume_nodes(scene)
    assert [left.GetName(), right.GetName()] == [f"{item.case} / left", f"{item.case} / right"]
    assert [c.GetBackgroundVolumeID() for _, c in views] == [left.GetID(), right.GetID()]
    assert all(c.GetLinkedControl() for _, c in views)
    with pytest.raises(ValueError):
        logic.answer({"preference": "middle"})
    logic.answer({"preference": "right"})
    logic.close()
    readings = load_readings(study)["readings"]
    assert readings[0]["preferred"] == readings[0]["right"]


# ---------------------------------------------------------------------------
# the module (issue #29 item 9): a fitting category, and the clock stops when the module is left
# ---------------------------------------------------------------------------
def _reader_module(monkeypatch):
    """QHQGANReader.py executed with stand-ins for what only the Slicer application provides (Qt, CTK, the
    scripted-module base classes)."""
    import importlib.util
    import types

    pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")

    class _Base:
        def __init__(self, parent=None):
            self.parent = parent if parent is not None else types.SimpleNamespace()

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = slm.ScriptedLoadableModuleTest = _Base
    for name, stub in (("qt", types.ModuleType("qt")), ("ctk", types.ModuleType("ctk")),
                       ("slicer.ScriptedLoadableModule", slm)):
        monkeypatch.setitem(sys.modules, name, stub)
    spec = importlib.util.spec_from_file_location("QHQGANReader_under_test", MODULE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_reader_module_sits_under_a_reading_category_not_filtering(monkeypatch):
    module = _reader_module(monkeypatch)
    reader = module.QHQGANReader(None)
    assert reader.parent.categories == ["Utilities"] and "Filtering" not in reader.parent.categories


def test_leaving_the_reader_module_stops_the_clock(scene, tmp_path, monkeypatch):
    """exit() (another module chosen) pauses the shown item as Pause does: its time stops counting, its images
    leave the views; Start resumes the same item."""
    import types

    from QHQGANLib.apps.reading import ReadingLogic

    module = _reader_module(monkeypatch)
    study = _study(tmp_path, "single")
    views = _views(scene, 1)
    widget = module.QHQGANReaderWidget()
    widget.ui = types.SimpleNamespace(**{name: types.SimpleNamespace(text="", enabled=True)
                                         for name in ("itemLabel", "statusLabel", "questionsFrame", "nextButton",
                                                      "pauseButton")})
    widget.exit()  # nothing shown: nothing happens
    widget.logic = ReadingLogic(scene, study, "r1")
    shown = widget.logic.show(views)
    assert widget.logic.session._started is not None  # the item's clock runs
    widget.exit()
    assert widget.logic.item is None and widget.logic.session._started is None  # stopped
    assert _volume_nodes(scene) == [] and not widget.ui.nextButton.enabled
    assert "paused" in widget.ui.itemLabel.text.lower()
    assert widget.logic.show(views).id == shown.id  # Start resumes the same item
    widget.cleanup()


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def test_reader_ui_loads_offscreen_with_every_widget_the_module_uses():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("PySide6.QtWidgets", reason="PySide6 (test extra) renders the .ui offscreen")
    from test_slicer_module import load_panel  # built with stand-ins for Slicer's and CTK's widget classes
    from PySide6 import QtCore, QtWidgets

    panel = load_panel(UI)
    assert panel.objectName() == "QHQGANReader"
    names = {w.objectName() for w in panel.findChildren(QtCore.QObject)}
    used = {n.attr for n in ast.walk(ast.parse(MODULE.read_text())) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"}
    assert {"startButton", "nextButton", "pauseButton", "questionsFrame", "readerIdLineEdit"} <= used
    assert not used - names, f"QHQGANReader.py uses self.ui.{sorted(used - names)} which the .ui lacks"
    assert isinstance(panel.findChild(QtWidgets.QFrame, "questionsFrame").layout(), QtWidgets.QFormLayout)
    assert not any("back" in (b.text() or "").lower() for b in panel.findChildren(QtWidgets.QPushButton))


def test_reader_module_is_built_and_holds_no_science():
    assert "add_subdirectory(QHQGANReader)" in (REPO / "CMakeLists.txt").read_text()
    cmake = (REPO / "QHQGANReader" / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "QHQGANReader")
    for resource in ("Resources/UI/QHQGANReader.ui", "Resources/Icons/QHQGANReader.png"):
        assert resource in cmake and (REPO / "QHQGANReader" / resource).is_file()
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", (REPO / "QHQGANReader" /
                                                                                   "CMakeLists.txt").read_text())
    used = {n.module for n in ast.walk(ast.parse(MODULE.read_text())) if isinstance(n, ast.ImportFrom)
            and n.module and n.module.startswith("QHQGANLib")}
    assert used and {m.split(".")[1] for m in used} <= {"apps", "core", "tasks"}
    classes = [ET.fromstring(UI.read_text()).find("widget").get("class")]
    assert classes == ["qMRMLWidget"]


# ---------------------------------------------------------------------------
# the README picture
# ---------------------------------------------------------------------------
def render_reader_panel(path: Path, width: int = 380) -> Path:
    """Render the reading panel as a reader sees it on item 4 of 12 (the questions of a single-image study).

    ``QT_QPA_PLATFORM=offscreen python Testing/test_reader_module.py`` writes Resources/Images/reader-panel.png.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from test_slicer_module import load_panel
    from PySide6 import QtWidgets

    from QHQGANLib.tasks.reader_study import questions_for

    panel = load_panel(UI)
    panel.findChild(QtWidgets.QLineEdit, "readerIdLineEdit").setText("reader-01")
    panel.findChild(QtWidgets.QLabel, "itemLabel").setText("Case 03 / image B")
    panel.findChild(QtWidgets.QLabel, "progressLabel").setText("Item 4 of 12 (answers are locked once saved)")
    layout = panel.findChild(QtWidgets.QFrame, "questionsFrame").layout()
    keep = []
    for q in questions_for("single"):
        if q["type"] == "text":
            widget = QtWidgets.QLineEdit()
        else:
            widget = QtWidgets.QWidget()
            row = QtWidgets.QHBoxLayout(widget)
            row.setContentsMargins(0, 0, 0, 0)
            texts = ([str(v) for v in range(q["min"], q["max"] + 1)] if q["type"] == "scale" else ["no", "yes"])
            group = QtWidgets.QButtonGroup(widget)
            keep.append(group)
            for text in texts:
                button = QtWidgets.QRadioButton(text)
                group.addButton(button)
                row.addWidget(button)
        layout.addRow(q["text"] + ":", widget)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("Window: abdomen (W 400 / L 40)")
    for name in ("questionsFrame", "nextButton", "pauseButton"):
        panel.findChild(QtWidgets.QWidget, name).setEnabled(True)
    panel.findChild(QtWidgets.QLineEdit, "studyPathLineEdit").setText("/data/studies/liver-ldct-2026")
    panel.resize(width, panel.sizeHint().height())
    panel.adjustSize()
    panel.resize(width, panel.height())
    path.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(path)), f"could not write {path}"
    return path


if __name__ == "__main__":
    print(render_reader_panel(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "Resources" / "Images" / "reader-panel.png"))
