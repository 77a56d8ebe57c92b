"""QHQGAN Reader: 3D Slicer module for reading a blinded reader study, one item at a time.

The study folder is made by ``qhqgan reader-study create``; the answers go to its
``responses/<reader>.csv`` and are analysed by ``qhqgan reader-study analyze``. The logic is
QHQGANLib.apps.reading.ReadingLogic (no Qt; tested on slicer-core's MRML); this file is the panel.
"""
import pathlib
import sys

import ctk
import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)

try:  # Slicer's i18n convention (Base/Python/slicer/i18n.py, 5.3 and later)
    from slicer.i18n import tr as _
except ImportError:
    def _(text):
        return text

# Developer mode (a source checkout): QHQGANLib sits beside this folder, not in it.
_SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "QHQGANLib" / "__init__.py").is_file() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.append(str(_SOURCE_ROOT))

#: The slice views an item is shown in: one, or two side by side for a pair (Slicer's layouts).
VIEWS = {1: ("Red",), 2: ("Red", "Yellow")}


class QHQGANReader(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Reader Study (blinded)")
        self.parent.categories = ["Utilities"]  # a reading tool, not an image filter
        self.parent.dependencies = []
        self.parent.contributors = ["QHQGAN developers"]
        self.parent.helpText = _("""
Read a blinded study made with <code>qhqgan reader-study create</code>: choose the study folder,
enter your reader ID and press Start. Each item (one image, or two side by side) is shown in the
slice views with the study's window; answer the questions and press Save and next. Saved answers
are locked: there is no going back. Pause (or leaving the module) stops the clock; Start with the same ID
resumes.
Research software: not for diagnosis.
""")
        self.parent.acknowledgementText = _("QHQGAN reader study. Research use only.")


class QHQGANReaderWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.answerWidgets = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/QHQGANReader.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.studyPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.nextButton.connect("clicked(bool)", self.onNext)
        self.ui.pauseButton.connect("clicked(bool)", self.onPause)

    def cleanup(self):
        self._closeLogic()

    def exit(self):
        """Leaving the module stops the clock of the shown item (as Pause does); Start resumes it."""
        if self.logic is not None and self.logic.item is not None:
            self.onPause()

    def _closeLogic(self):
        if self.logic is not None:
            self.logic.close()
            self.logic = None

    # --- actions -------------------------------------------------------
    def onStart(self):
        from QHQGANLib.apps.reading import ReadingLogic

        study, reader = self.ui.studyPathLineEdit.currentPath, self.ui.readerIdLineEdit.text.strip()
        try:
            if self.logic is None or str(self.logic.session.folder) != str(pathlib.Path(study).expanduser()) \
                    or self.logic.session.reader_id != reader:
                self._closeLogic()
                self.logic = ReadingLogic(slicer.mrmlScene, study, reader)
                self._buildQuestions(self.logic.questions)
            self._showCurrent()
        except (ValueError, OSError) as exc:
            self._closeLogic()
            slicer.util.errorDisplay(_("Cannot open the study: {error}").format(error=exc))

    def onNext(self):
        try:
            self.logic.answer(self._answers())
        except ValueError as exc:
            self.ui.statusLabel.text = str(exc)
            return
        self._showCurrent()

    def onPause(self):
        seconds = self.logic.pause()
        self._setReading(False)
        self.ui.itemLabel.text = _("Paused. Press Start / resume reading to continue.")
        self.ui.statusLabel.text = _("{s:.0f} s recorded for this item so far.").format(s=seconds)

    # --- display -------------------------------------------------------
    def _showCurrent(self):
        names = VIEWS[self.logic.views_needed]
        manager = slicer.app.layoutManager()
        manager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView if len(names) == 2
                          else slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
        item = self.logic.show([(manager.sliceWidget(n).mrmlSliceNode(), manager.sliceWidget(n).mrmlSliceCompositeNode())
                                for n in names])
        done, total = self.logic.progress()
        self.ui.progressLabel.text = _("{done} of {total} items answered").format(done=done, total=total)
        self._clearAnswers()
        if item is None:
            self._setReading(False)
            self.ui.itemLabel.text = _("All items are answered. Thank you!")
            return
        for n in names:
            manager.sliceWidget(n).sliceLogic().FitSliceToAll()
        self.ui.itemLabel.text = item.label + ("  (left | right)" if len(names) == 2 else "")
        self.ui.statusLabel.text = ""
        self._setReading(True)

    def _setReading(self, reading):
        self.ui.questionsFrame.enabled = reading
        self.ui.nextButton.enabled = reading
        self.ui.pauseButton.enabled = reading

    # --- questions -----------------------------------------------------
    def _buildQuestions(self, questions):
        layout = self.ui.questionsFrame.layout()
        while layout.count():
            child = layout.takeAt(0)
            if child.widget():
                child.widget().deleteLater()
        self.answerWidgets = {}
        for q in questions:
            if q["type"] == "text":
                widget = qt.QLineEdit()
                self.answerWidgets[q["key"]] = (q, widget)
            else:
                widget, group = qt.QWidget(), qt.QButtonGroup()
                row = qt.QHBoxLayout(widget)
                row.setContentsMargins(0, 0, 0, 0)
                options = self._options(q)
                for value, (text, tip) in enumerate(options):
                    button = qt.QRadioButton(text)
                    button.toolTip = tip
                    group.addButton(button, value)
                    row.addWidget(button)
                self.answerWidgets[q["key"]] = (q, group)
            layout.addRow(q["text"] + ":", widget)

    @staticmethod
    def _options(q):
        if q["type"] == "scale":
            labels = q.get("labels") or [""] * (q["max"] - q["min"] + 1)
            return [(str(q["min"] + i), label) for i, label in enumerate(labels)]
        if q["type"] == "yesno":
            return [(_("no"), ""), (_("yes"), "")]
        return [(choice, "") for choice in q["choices"]]

    def _answers(self):
        answers = {}
        for key, (q, widget) in self.answerWidgets.items():
            if q["type"] == "text":
                answers[key] = widget.text
                continue
            checked = widget.checkedId()
            if checked < 0:
                answers[key] = None
            elif q["type"] == "scale":
                answers[key] = q["min"] + checked
            elif q["type"] == "yesno":
                answers[key] = ("no", "yes")[checked]
            else:
                answers[key] = q["choices"][checked]
        return answers

    def _clearAnswers(self):
        for q, widget in self.answerWidgets.values():
            if q["type"] == "text":
                widget.text = ""
            else:
                widget.setExclusive(False)
                for button in widget.buttons():
                    button.checked = False
                widget.setExclusive(True)


class QHQGANReaderTest(ScriptedLoadableModuleTest):
    """Makes a two-case study of synthetic volumes and reads it through the logic in the app's views."""

    def runTest(self):
        import tempfile

        import numpy as np

        from QHQGANLib.apps.reading import ReadingLogic, slice_views
        from QHQGANLib.core.volume import Volume
        from QHQGANLib.tasks.reader_study import create_study

        slicer.mrmlScene.Clear(0)
        with tempfile.TemporaryDirectory() as tmp:
            vols = {f"c{c}": {m: Volume(np.full((1, 16, 16), -1000.0 + 100 * k, np.float32)) for k, m in
                              enumerate(("a", "b"))} for c in range(2)}
            study = create_study(vols, pathlib.Path(tmp) / "study", mode="pairs", seed=0)
            logic = ReadingLogic(slicer.mrmlScene, study, "selftest")
            try:
                while logic.show(slice_views(VIEWS[2])) is not None:
                    logic.answer({"preference": "left"})
                self.assertEqual(logic.progress(), (2, 2))
            finally:
                logic.close()
        self.delayDisplay("QHQGAN Reader test passed")
