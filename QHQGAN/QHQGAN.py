"""QHQGAN: 3D Slicer module running a hybrid quantum-classical GAN on CT.

The module is thin: the work is done by QHQGANLib (packaged with the extension),
in a child process (QHQGANLib.apps.background) so the panel never freezes.
"""
import enum
import logging
import pathlib
import sys
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

try:  # Slicer's i18n convention (Base/Python/slicer/i18n.py, 5.3 and later): strings in _() go to Qt's lupdate
    from slicer.i18n import tr as _
except ImportError:  # plain Python with the slicer-core wheels: no translation
    def _(text):
        return text

# Developer mode (a source checkout): QHQGANLib sits beside the QHQGAN folder, not in it.
_SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "QHQGANLib" / "__init__.py").is_file() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.append(str(_SOURCE_ROOT))

# the option schema: cheap to import (no torch), the same ranges and defaults as the CLI and the runner
from QHQGANLib.core.options import (ADAPT_DEFAULT_STEPS, FINE_TUNE_DEFAULT_STEPS, option_default,  # noqa: E402
                                    option_from_text, option_range)

CUSTOM_WEIGHTS = _("Custom weights file…")
#: Packages of Slicer itself that QHQGAN's requirements must never replace (SciPy is bundled with Slicer).
SLICER_OWN_PACKAGES = ["SimpleITK", "vtk", "numpy", "scipy", "torch"]
#: The selectors that stay locked while a task runs (the input is read and the output chosen at Apply).
LOCKED_WHILE_RUNNING = ("inputSelector", "outputSelector", "taskComboBox", "segmentationSelector", "segmentComboBox")
#: The panel's spin boxes and the options (QHQGANLib.core.options) whose ranges they take.
SPIN_BOX_OPTIONS = {"tileSizeSpinBox": "tile_size", "overlapSpinBox": "overlap", "tileBatchSpinBox": "tile_batch",
                    "samplesSpinBox": "n_samples", "seedSpinBox": "seed", "doseSpinBox": "dose",
                    "strengthSpinBox": "strength"}
#: Parameters stored in the scene's parameter node beside the wrapper's fields (raw strings):
#: the model chosen for each task ("Model.<task>") and the custom weights file.
MODEL_PARAMETER = "Model."
CUSTOM_WEIGHTS_PARAMETER = "CustomWeights"
#: "Super-resolve" modes of the panel: (axis, scale, label). "Slices": super-resolve slices, thick to thin
#: (through-plane, QHQGANLib.tasks.through_plane); the choice and the fine-tune check box are stored raw.
SUPER_RESOLVE_MODES = (("in-plane", 2, _("Pixels (in-plane) x2")), ("z", 2, _("Slices x2 (thick to thin slices)")),
                       ("z", 3, _("Slices x3 (thick to thin slices)")), ("z", 4, _("Slices x4 (thick to thin slices)")))
SUPER_RESOLVE_MODE_PARAMETER = "SuperResolveMode"
FINE_TUNE_PARAMETER = "FineTune"
#: The "Adapt to this scan first" check box of Enhance (stored raw, like the fine-tune one).
ADAPT_PARAMETER = "Adapt"
#: The segment of the segmentation node where "Insert lesion" puts the lesion (its segment ID, stored raw).
SEGMENT_PARAMETER = "Segment"
#: The property that binds a widget of the .ui to a parameter (slicer.parameterNodeWrapper).
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


class QHQGAN(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CT Enhancement (Hybrid Quantum GAN)")
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["QHQGAN developers"]
        self.parent.helpText = _("""
Enhance low-dose CT, super-resolve CT in-plane x2 or its slices (thick to 2-4x thinner slices),
synthesize CT slices, simulate a lower dose, insert a synthetic lesion into a CT where a segment is
painted, or synthesize CT from a segmentation of tissue classes.
The method is a hybrid quantum-classical generative adversarial network (HQGAN): a classical
convolutional encoder and decoder with a small variational quantum circuit (simulated) in the
bottleneck, trained adversarially against a classical discriminator.
<br><b>Limits:</b> research use only, not for diagnosis. The models were trained on abdomen CT;
other anatomy, contrast phases or scanners may give artefacts. Synthesized volumes are marked
as synthetic (name and node attributes). Processing runs in a background process; Cancel stops it.
See <a href="https://github.com/qhqgan/SlicerQHQGAN">the project page</a>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, PyTorch, PennyLane, SimpleITK, pydicom and the ASTRA toolbox. Models are trained
and tested on public CT under their own licences: the TotalSegmentator example CT (Apache-2.0 /
CC BY 4.0), TCIA C4KC-KiTS slices (CC BY 3.0), the VTKData head CT (BSD-3) and pydicom's test
files (MIT). Each shipped model's card names the data it was trained on.
""")


class Task(enum.Enum):
    ENHANCE = "enhance"
    SUPER_RESOLVE = "super-resolve"
    SYNTHESIZE = "synthesize"
    SIMULATE_LOW_DOSE = "simulate-low-dose"
    INSERT_LESION = "insert-lesion"
    SYNTHESIZE_FROM_LABELS = "synthesize-from-labels"

    def label(self):
        return _({"enhance": "Enhance low-dose CT", "super-resolve": "Super-resolve x2",
                  "synthesize": "Synthesize samples", "simulate-low-dose": "Simulate low dose",
                  "insert-lesion": "Insert lesion",
                  "synthesize-from-labels": "Synthesize from segmentation"}[self.value])

    @property
    def readsSegment(self):
        """The tasks whose input is the segmentation selector's (always new synthetic volumes)."""
        return self in (Task.INSERT_LESION, Task.SYNTHESIZE_FROM_LABELS)


#: Each task's one main setting, shown beside the task (Inputs) and only for its tasks: (widgets, tasks).
#: The Model and Advanced sections start collapsed (QHQGAN.ui); Insert lesion's kind is in the Lesion section.
MAIN_SETTINGS = ((("doseLabel", "doseSpinBox"), (Task.SIMULATE_LOW_DOSE,)),
                 (("strengthLabel", "strengthSpinBox", "adaptCheckBox"), (Task.ENHANCE,)),
                 (("samplesLabel", "samplesSpinBox"), (Task.SYNTHESIZE, Task.SYNTHESIZE_FROM_LABELS)),
                 (("inputsLabel2", "superResolveModeComboBox", "fineTuneCheckBox"), (Task.SUPER_RESOLVE,)))


class LesionKind(enum.Enum):
    HYPODENSE = "hypodense"
    HYPERDENSE = "hyperdense"
    CYST = "cyst"
    CALCIFICATION = "calcification"

    def label(self):
        return _({"hypodense": "Hypodense (40 HU below its surroundings)",
                  "hyperdense": "Hyperdense (40 HU above its surroundings)", "cyst": "Cyst (10 HU)",
                  "calcification": "Calcification (400 HU)"}[self.value])


class LesionTexture(enum.Enum):
    MATCHED = "matched"
    SMOOTH = "smooth"
    NOISE = "noise"

    def label(self):
        return _({"matched": "The scan's own noise", "smooth": "Smooth (no noise)",
                  "noise": "New noise like the scan's (random seed)"}[self.value])


class QuantumBackend(enum.Enum):
    BUILTIN = "torch"
    PENNYLANE = "pennylane"

    def label(self):
        return _("Fast built-in simulator" if self is QuantumBackend.BUILTIN else "PennyLane device")


class ComputeDevice(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return _({"auto": "Automatic", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value])


@parameterNodeWrapper
class QHQGANParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    task: Task = Task.ENHANCE
    quantumBackend: QuantumBackend = QuantumBackend(option_default("quantum_backend"))
    pennylaneDevice: str = "lightning.qubit"
    computeDevice: ComputeDevice = ComputeDevice(option_default("device"))
    tileSize: Annotated[int, WithinRange(*option_range("tile_size"))] = option_default("tile_size")
    overlap: Annotated[float, WithinRange(*option_range("overlap"))] = option_default("overlap")
    tileBatch: Annotated[int, WithinRange(*option_range("tile_batch"))] = option_default("tile_batch")
    nSamples: Annotated[int, WithinRange(*option_range("n_samples"))] = option_default("n_samples")
    seed: Annotated[int, WithinRange(*option_range("seed"))] = option_default("seed")
    doseFraction: Annotated[float, WithinRange(*option_range("dose"))] = option_default("dose")
    strength: Annotated[float, WithinRange(*option_range("strength"))] = option_default("strength")
    outputVolume: vtkMRMLScalarVolumeNode
    # Insert lesion / Synthesize from segmentation (issue #30): the segment or label map, and the lesion
    segmentation: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    lesionKind: LesionKind = LesionKind(option_default("lesion_kind"))
    lesionTexture: LesionTexture = LesionTexture(option_default("texture"))
    lesionHu: str = ""  # empty: the kind's mean


def connectParameterNodeGui(parameterNode, ui):
    """Connect the widgets of ``ui`` that carry a ``SlicerParameterName`` to ``parameterNode``; the tag.

    ``connectParametersToGui(mapping)`` returns the tag on every Slicer: ``connectGui`` returns
    None on Slicer 5.8 (``Base/Python/slicer/parameterNodeWrapper/wrapper.py``, ``_connectGui``;
    fixed in 5.10 by "BUG: Fix not returning GUI tag after connection"), so ``disconnectGui``
    could not undo it and each enter() or scene close added another set of connections.
    """
    widgets = ui.__dict__.values() if not hasattr(ui, "findChildren") else ui.findChildren(qt.QWidget)
    mapping = {}
    for widget in widgets:
        name = widget.property(PARAMETER_NAME_PROPERTY) if hasattr(widget, "property") else None
        if name:
            mapping[name] = widget
    return parameterNode.connectParametersToGui(mapping)


class QHQGANWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._lastOutput = None  # for Compare; never becomes the output volume of the next run
        self._runningTask = ""  # the running task's label (said when the scene closes during the run)
        self._stopNote = ""  # why the running task was stopped, when not by Cancel (the scene closed)
        self._fillingModels = False
        self._segmentIds = []  # the segment selector's segment IDs, in its order
        self._listedSegmentation = None  # the node whose segments are listed
        self._observedSegmentation = None
        self._fillingSegments = False
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/QHQGAN.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = QHQGANLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.showResearchModelsCheckBox.connect("toggled(bool)", self.onShowResearchModelsToggled)
        self.ui.customWeightsPathLineEdit.connect("currentPathChanged(QString)", self.onCustomWeightsChanged)
        for _axis, _scale, label in SUPER_RESOLVE_MODES:
            self.ui.superResolveModeComboBox.addItem(label)
        self.ui.superResolveModeComboBox.connect("currentIndexChanged(int)", self.onSuperResolveModeChanged)
        self.ui.fineTuneCheckBox.connect("toggled(bool)", self.onFineTuneToggled)
        self.ui.adaptCheckBox.connect("toggled(bool)", self.onAdaptToggled)
        self.ui.segmentComboBox.connect("currentIndexChanged(int)", self.onSegmentChanged)
        self.ui.progressBar.setVisible(False)
        for widgetName, optionName in SPIN_BOX_OPTIONS.items():  # the schema's ranges, whatever the .ui says
            getattr(self.ui, widgetName).setRange(*option_range(optionName))
        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None:  # Slicer is closing: kill the worker now (no timer thread may outlive Slicer)
            self._job.cancel(grace=0)
            self._job = None
            self._timer.stop()
        self.removeObservers()
        self._observedSegmentation = None

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()  # enter() connects again; a running task keeps polling

    def _disconnectParameterNode(self):
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        """The scene closes (a module cannot veto it): a running task is cancelled, nothing is written, and
        the panel and Slicer's error log say so in one line."""
        if self._job is not None:
            from QHQGANLib.apps.model_info import scene_closed_message
            self._stopNote = scene_closed_message(self._runningTask or _("the task"))
            logging.error(f"QHQGAN: {self._stopNote}")
        self.onCancel()
        self._lastOutput = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if inputParameterNode is None:  # e.g. the scene closes: its segmentation is no longer watched
            self._observeSegmentation(None)
            self._listedSegmentation = None
        if self._parameterNode:
            self._parameterNodeGuiTag = connectParameterNodeGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self.ui.customWeightsPathLineEdit.currentPath = self.logic.customWeights(self._parameterNode)
            self.ui.superResolveModeComboBox.setCurrentIndex(self.logic.superResolveMode(self._parameterNode))
            self.ui.fineTuneCheckBox.checked = self.logic.fineTune(self._parameterNode)
            self.ui.adaptCheckBox.checked = self.logic.adapt(self._parameterNode)
            self._fillModels()
            self._fillSegments()
            self._updateGui()

    def _modelKey(self):
        """The task, and for super-resolution its axis ("super-resolve", "super-resolve:z"): models differ."""
        task = self._parameterNode.task.value
        axis, scale, _label = SUPER_RESOLVE_MODES[self.ui.superResolveModeComboBox.currentIndex]
        return f"{task}:z{scale}" if task == "super-resolve" and axis == "z" else task

    def _fillModels(self):
        """The models of the task, the stored choice selected (the task's default first otherwise)."""
        key = self._modelKey()
        task, _sep, mode = key.partition(":")
        axis, scale = (mode[:1], int(mode[1:])) if mode else (None, None)  # "z3": through-plane x3
        self._fillingModels = True
        try:
            self.ui.modelComboBox.clear()
            research = bool(getattr(getattr(self.ui, "showResearchModelsCheckBox", None), "checked", False))
            for name in self.logic.modelNames(task, axis, research=research, scale=scale):
                self.ui.modelComboBox.addItem(name)
            self.ui.modelComboBox.addItem(CUSTOM_WEIGHTS)
            chosen = self.logic.modelChoice(self._parameterNode, key)
            index = self.ui.modelComboBox.findText(chosen) if chosen else -1
            self.ui.modelComboBox.setCurrentIndex(max(index, 0))
            self.ui.modelComboBox.setProperty("task", key)
        finally:
            self._fillingModels = False

    def onShowResearchModelsToggled(self, checked=None):
        self._fillModels()
        self._updateGui()

    def onModelChanged(self, index=None):
        if self._parameterNode is not None and not self._fillingModels:
            self.logic.setModelChoice(self._parameterNode, self._modelKey(), self.ui.modelComboBox.currentText)
        self._updateGui()

    def onSuperResolveModeChanged(self, index=None):
        if self._parameterNode is not None:
            self.logic.setSuperResolveMode(self._parameterNode, self.ui.superResolveModeComboBox.currentIndex)
            self._updateGui()

    def onFineTuneToggled(self, checked=None):
        if self._parameterNode is not None:
            self.logic.setFineTune(self._parameterNode, self.ui.fineTuneCheckBox.checked)

    def onAdaptToggled(self, checked=None):
        if self._parameterNode is not None:
            self.logic.setAdapt(self._parameterNode, self.ui.adaptCheckBox.checked)

    def _fillSegments(self, caller=None, event=None):
        """The segments of the chosen segmentation (its only item for a label map: all its non-zero voxels),
        the stored choice selected; kept up to date while segments are added, renamed or removed."""
        from QHQGANLib.apps.segments import is_segmentation, segment_choices
        node = getattr(self._parameterNode, "segmentation", None) if self._parameterNode is not None else None
        self._observeSegmentation(node if is_segmentation(node) else None)
        self._listedSegmentation = node
        choices = segment_choices(node)
        self._segmentIds = [segmentId for segmentId, _name in choices]
        self._fillingSegments = True  # no choice is stored while the list is refilled
        try:
            self.ui.segmentComboBox.clear()
            for _segmentId, name in choices:
                self.ui.segmentComboBox.addItem(name)
            if node is not None and not choices:
                self.ui.segmentComboBox.addItem(_("(no segment)") if is_segmentation(node) else _("All non-zero voxels"))
            stored = self.logic.segmentChoice(self._parameterNode) if self._parameterNode is not None else ""
            self.ui.segmentComboBox.setCurrentIndex(self._segmentIds.index(stored) if stored in self._segmentIds else 0)
        finally:
            self._fillingSegments = False

    def _observeSegmentation(self, node):
        """Refill the segment list when the segments of ``node`` change (events the segmentation node forwards)."""
        if node is self._observedSegmentation:
            return
        events = [getattr(slicer.vtkSegmentation, name)
                  for name in ("SegmentAdded", "SegmentRemoved", "SegmentModified")]
        for event in events if self._observedSegmentation is not None else ():
            self.removeObserver(self._observedSegmentation, event, self._fillSegments)
        self._observedSegmentation = node
        for event in events if node is not None else ():
            self.addObserver(node, event, self._fillSegments)

    def _segmentId(self):
        """The chosen segment's ID ("" for a label map or none)."""
        index = self.ui.segmentComboBox.currentIndex
        return self._segmentIds[index] if 0 <= index < len(self._segmentIds) else ""

    def onSegmentChanged(self, index=None):
        if self._fillingSegments:
            return
        if self._parameterNode is not None:
            self.logic.setSegmentChoice(self._parameterNode, self._segmentId())
        self._updateGui()

    def onCustomWeightsChanged(self, path):
        if self._parameterNode is not None:
            self.logic.setCustomWeights(self._parameterNode, path)

    def _updateGui(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        task = p.task
        if self.ui.modelComboBox.property("task") != self._modelKey():
            self._fillModels()
        if getattr(p, "segmentation", None) is not self._listedSegmentation:
            self._fillSegments()
        axis = SUPER_RESOLVE_MODES[self.ui.superResolveModeComboBox.currentIndex][0]
        self.ui.superResolveModeComboBox.setEnabled(task is Task.SUPER_RESOLVE)
        self.ui.fineTuneCheckBox.setEnabled(task is Task.SUPER_RESOLVE and axis == "z")
        usesModel = task not in (Task.SIMULATE_LOW_DOSE, Task.INSERT_LESION)
        self.ui.modelCollapsibleButton.setEnabled(usesModel)
        self.ui.customWeightsPathLineEdit.setEnabled(self.ui.modelComboBox.currentText == CUSTOM_WEIGHTS)
        # what the chosen model measurably does (its card's held-out validation), where the clinician looks
        self.ui.modelComboBox.toolTip = self.logic.modelSummary(self.ui.modelComboBox.currentText)
        self.ui.pennylaneDeviceLineEdit.setEnabled(p.quantumBackend is QuantumBackend.PENNYLANE)
        self.ui.tileSizeSpinBox.setEnabled(task in (Task.ENHANCE, Task.SUPER_RESOLVE))
        self.ui.overlapSpinBox.setEnabled(task in (Task.ENHANCE, Task.SUPER_RESOLVE))
        self.ui.tileBatchSpinBox.setEnabled(task in (Task.ENHANCE, Task.SUPER_RESOLVE))
        self.ui.lesionCollapsibleButton.setEnabled(task is Task.INSERT_LESION)
        for names, tasks in MAIN_SETTINGS:  # the task's own setting only, where the clinician looks
            for name in names:
                widget = getattr(self.ui, name, None)
                if widget is not None:
                    widget.setVisible(task in tasks)
        self.ui.samplesSpinBox.setEnabled(task in (Task.SYNTHESIZE, Task.SYNTHESIZE_FROM_LABELS))
        self.ui.doseSpinBox.setEnabled(task is Task.SIMULATE_LOW_DOSE)
        self.ui.strengthSpinBox.setEnabled(task is Task.ENHANCE)
        self.ui.adaptCheckBox.setEnabled(task is Task.ENHANCE)
        for name in LOCKED_WHILE_RUNNING:  # the input and output chosen at Apply stay as they are
            widget = getattr(self.ui, name, None)
            if widget is not None:
                widget.setEnabled(self._job is None)
        segmentation = getattr(p, "segmentation", None)
        pickSegment = self._job is None and task is Task.INSERT_LESION and bool(self._segmentIds)
        self.ui.segmentComboBox.setEnabled(pickSegment)
        if self._job is not None:
            return
        if task is Task.INSERT_LESION:
            isSegmentation = bool(segmentation) and segmentation.IsA("vtkMRMLSegmentationNode")
            ready = bool(p.inputVolume) and bool(segmentation) and (bool(self._segmentId()) or not isSegmentation)
            hint = _("Select the CT volume, and the segmentation and segment (or label map) where the lesion goes")
        elif task is Task.SYNTHESIZE_FROM_LABELS:
            ready = bool(segmentation)
            hint = _("Select a segmentation whose segments are named after tissue classes (lung, fat, soft tissue, "
                     "bone, ...) or a label map of tissue classes")
        else:
            ready = bool(p.inputVolume) or task is Task.SYNTHESIZE
            hint = _("Select an input volume")
        # a mode no shipped model serves (e.g. Slices x3 when only x2 ships) runs only with the user's own weights
        noModel = usesModel and self.ui.modelComboBox.currentText == CUSTOM_WEIGHTS and not self.logic.customWeights(p)
        noModelText = (self.logic.noModelMessage(task.value) or _("No shipped model for this choice: pick another "
                                                                   "mode, or give your own weights file"))
        if noModel and task is Task.SYNTHESIZE_FROM_LABELS:  # said where the clinician looks, not only in a tooltip
            self.ui.statusLabel.text = noModelText
        elif self.ui.statusLabel.text == self.logic.noModelMessage(Task.SYNTHESIZE_FROM_LABELS.value):
            self.ui.statusLabel.text = ""
        self.ui.applyButton.text = _("Apply")
        self.ui.applyButton.enabled = ready and not noModel
        self.ui.applyButton.toolTip = (noModelText if noModel else _("Run: {task}").format(task=task.label()) if ready
                                       else hint)
        self.ui.compareButton.enabled = self._comparedOutput() is not None

    def _options(self):
        p = self._parameterNode
        model = self.ui.modelComboBox.currentText
        if model == CUSTOM_WEIGHTS:
            model = self.logic.customWeights(p) or None
        backend = "torch" if p.quantumBackend is QuantumBackend.BUILTIN else f"pennylane:{p.pennylaneDevice.strip()}"
        axis, scale, _label = SUPER_RESOLVE_MODES[self.ui.superResolveModeComboBox.currentIndex]
        fineTune = axis == "z" and self.ui.fineTuneCheckBox.checked
        adapt = p.task is Task.ENHANCE and self.ui.adaptCheckBox.checked
        # the lesion's mean HU as typed ("": the kind's); a ValueError naming the option when it is no number in range
        lesionHu = option_from_text("lesion_hu", p.lesionHu) if p.task is Task.INSERT_LESION else None
        return dict(model=model or None, quantum_backend=backend, device=p.computeDevice.value,
                    tile_size=p.tileSize, overlap=p.overlap, tile_batch=p.tileBatch, n_samples=p.nSamples,
                    seed=p.seed, dose=p.doseFraction, strength=p.strength, axis=axis, scale=scale,
                    fine_tune_steps=FINE_TUNE_DEFAULT_STEPS if fineTune else 0,
                    adapt_steps=ADAPT_DEFAULT_STEPS if adapt else 0, lesion_kind=p.lesionKind.value,
                    texture=p.lesionTexture.value, lesion_hu=lesionHu)

    def _refuse(self, message):
        """Tell the user why nothing was started: in the panel's status line and in a message box."""
        self.ui.statusLabel.text = message
        logging.warning(f"QHQGAN: {message}")
        slicer.util.errorDisplay(message)

    def onApplyButton(self):
        if self._job is not None:
            self.onCancel()
            return
        from QHQGANLib.apps.dependencies import MissingPackages, OutdatedTorch
        from QHQGANLib.apps.node_task import OutputRefused
        p = self._parameterNode
        task = p.task.value
        try:
            options = self._options()
        except ValueError as error:  # e.g. a mean HU that is no number
            self._refuse(_("Not started: {reason}.").format(reason=error))
            return
        # the segment tasks read the segmentation selector's node (and the segment where the lesion goes)
        segment = dict(segmentation=p.segmentation, segmentId=self._segmentId() or None) if p.task.readsSegment else {}
        inputNode = p.inputVolume if p.task is not Task.SYNTHESIZE_FROM_LABELS else None
        # the output is chosen now: the node checked here is the one written when the task ends
        outputNode = p.outputVolume or None
        refusal = self.logic.outputRefusal(inputNode, outputNode, task)
        if refusal:
            self._refuse(_("Not started: {reason}.").format(reason=refusal))
            return
        problem = None
        with slicer.util.tryWithErrorDisplay(_("QHQGAN could not start."), waitCursor=True):
            try:
                installed = self.logic.installDependencies(askConfirmation=True, task=task,
                                                           quantumBackend=options["quantum_backend"])
            except (MissingPackages, OutdatedTorch) as error:  # offline, torch too old: which, and how to fix it
                problem = str(error)
            except Exception as error:  # e.g. the PyTorch extension is not installed
                problem = _("QHQGAN could not start: {error}").format(error=error)
        if problem:  # said after the wait cursor is gone
            self._refuse(problem)
            return
        if not installed:
            self.ui.statusLabel.text = _("Not started: the packages were not installed.")
            return
        with slicer.util.tryWithErrorDisplay(_("QHQGAN could not start."), waitCursor=True):
            target = {"outputNode": outputNode} if outputNode is not None else {}
            try:
                self._job = self.logic.process(inputNode, task=task, blocking=False, **target, **segment, **options)
            except (OutputRefused, ValueError) as error:  # refused before anything runs: another patient's
                self._refuse(_("Not started: {reason}.").format(reason=error))  # volume, an unnamed segment...
                return
            self._runningTask, self._stopNote = p.task.label(), ""
            self._updateGui()  # locks the input and output selectors
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running task; the scene is left unchanged")
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("{task}: starting…").format(task=p.task.label())
            self._timer.start()

    def onPoll(self):
        job = self._job
        if job is None:
            return
        for fraction, message in job.poll():
            self.ui.progressBar.setValue(int(round(fraction * 100)))
            self.ui.statusLabel.text = self._stopNote or message
        if job.running:  # after Cancel too: the worker is being ended, the timer polls again
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        try:
            node = self.logic.finish(job)  # into the output chosen at Apply, never the selector's value now
        except Exception as exc:  # OperationCancelled, TaskFailed: one line for the user
            from QHQGANLib.apps.model_info import panel_wording
            message = self._stopNote or panel_wording(str(exc))  # the panel's controls, not command-line flags
            self.ui.statusLabel.text = message
            if job.task.cancelled:
                logging.info("QHQGAN: cancelled")
            else:
                slicer.util.errorDisplay(_("QHQGAN failed: {error}").format(error=message))
        else:
            # the result is shown, not selected as the next run's output (which would replace it,
            # whatever that run is: a synthetic result must never land in a real patient's node)
            self._lastOutput = node
            names = ", ".join(n.GetName() for n in getattr(job, "nodes", None) or [node])
            self.ui.statusLabel.text = _("Done: {name}").format(name=names)
            if getattr(job, "note", ""):
                self.ui.statusLabel.text += " (" + job.note + ")"
            self.onCompareButton()
        self._updateGui()

    def onCancel(self):
        if self._job is not None:
            self._job.cancel()  # returns at once; the worker's whole process group is ended
            self.ui.statusLabel.text = self._stopNote or _("Cancelling…")
            self.onPoll()

    def _comparedOutput(self):
        """The result to show beside the input: only one QHQGAN made from this very input (a synthetic
        sample, or another patient's result, is never linked to the input's views)."""
        p = self._parameterNode
        if p is None or not p.inputVolume:
            return None
        output = self._lastOutput if self._lastOutput is not None and self._lastOutput.GetScene() else p.outputVolume
        return output if output is not None and self.logic.madeFrom(output, p.inputVolume) else None

    def onCompareButton(self):
        output = self._comparedOutput()
        if output is not None:
            self.logic.compare(self._parameterNode.inputVolume, output)


class QHQGANLogic(ScriptedLoadableModuleLogic):
    """Console use::

        logic = slicer.modules.qhqgan.widgetRepresentation().self().logic  # or QHQGANLogic()
        out = logic.process(slicer.util.getNode("CTChest"), task="simulate-low-dose", dose=0.25)
    """

    def getParameterNode(self):
        return QHQGANParameterNode(super().getParameterNode())

    def modelNames(self, task, axis=None, research=True, scale=None):
        """Shipped models of ``task`` (super-resolution: of ``axis``, "in-plane" or "z", and of ``scale`` when
        given), default first; ``research=False`` leaves out the research controls (MLP in the circuit's
        place, no circuit)."""
        from QHQGANLib.core.kinds import is_research_model, models_for_task
        if task == "super-resolve":
            axis = axis or "in-plane"

        def fits(card):
            given = card.get("scale", (card.get("config") or {}).get("scale"))
            return scale is None or given is None or int(given) == int(scale)
        return [card["name"] for card in models_for_task(task, axis=axis)
                if (research or not is_research_model(card["name"])) and fits(card)]

    @staticmethod
    def madeFrom(outputNode, inputNode):
        """True when QHQGAN made ``outputNode`` from ``inputNode`` (its recorded source node)."""
        from QHQGANLib.core.naming import ATTRIBUTE_PREFIX
        return (outputNode is not None and inputNode is not None and outputNode is not inputNode
                and outputNode.GetAttribute(ATTRIBUTE_PREFIX + "source_node") == inputNode.GetID())

    def modelSummary(self, name):
        """What a shipped model measurably does (its card's held-out validation), for the selector's tooltip."""
        from QHQGANLib.apps.model_info import validation_summary
        from QHQGANLib.core.resources import model_cards
        card = next((c for c in model_cards() if c.get("name") == name), None)
        if card is None:
            return _("Weights chosen from a file: their card says what they were validated on")
        return f"{name}: {validation_summary(card) or _('no held-out validation in its card')}"

    # --- choices kept in the parameter node (saved with the scene), beside the wrapper's fields
    @staticmethod
    def _rawNode(parameterNode):
        return getattr(parameterNode, "parameterNode", parameterNode)  # the wrapper's vtkMRMLScriptedModuleNode

    def modelChoice(self, parameterNode, task):
        """The model last chosen for ``task`` ("" when none)."""
        return self._rawNode(parameterNode).GetParameter(MODEL_PARAMETER + task) or ""

    def setModelChoice(self, parameterNode, task, name):
        self._rawNode(parameterNode).SetParameter(MODEL_PARAMETER + task, name or "")

    def superResolveMode(self, parameterNode):
        """The index in SUPER_RESOLVE_MODES last chosen (0: pixels x2)."""
        text = self._rawNode(parameterNode).GetParameter(SUPER_RESOLVE_MODE_PARAMETER) or "0"
        return int(text) if text.isdigit() and int(text) < len(SUPER_RESOLVE_MODES) else 0

    def setSuperResolveMode(self, parameterNode, index):
        self._rawNode(parameterNode).SetParameter(SUPER_RESOLVE_MODE_PARAMETER, str(max(int(index), 0)))

    def fineTune(self, parameterNode):
        return self._rawNode(parameterNode).GetParameter(FINE_TUNE_PARAMETER) == "true"

    def setFineTune(self, parameterNode, checked):
        self._rawNode(parameterNode).SetParameter(FINE_TUNE_PARAMETER, "true" if checked else "false")

    def adapt(self, parameterNode):
        """Whether Enhance first adapts the model to the scan ("Adapt to this scan first")."""
        return self._rawNode(parameterNode).GetParameter(ADAPT_PARAMETER) == "true"

    def setAdapt(self, parameterNode, checked):
        self._rawNode(parameterNode).SetParameter(ADAPT_PARAMETER, "true" if checked else "false")

    def segmentChoice(self, parameterNode):
        """The segment ID last chosen for Insert lesion ("" when none)."""
        return self._rawNode(parameterNode).GetParameter(SEGMENT_PARAMETER) or ""

    def setSegmentChoice(self, parameterNode, segmentId):
        self._rawNode(parameterNode).SetParameter(SEGMENT_PARAMETER, segmentId or "")

    @staticmethod
    def noModelMessage(task):
        """What the panel says when ``task`` has no installed model (None: the generic wording)."""
        from QHQGANLib.apps.request import NO_LABEL_MODEL
        return NO_LABEL_MODEL if task == Task.SYNTHESIZE_FROM_LABELS.value else None

    def customWeights(self, parameterNode):
        """The custom weights file, "" when none (never ".", what an empty pathlib.Path prints)."""
        return self._rawNode(parameterNode).GetParameter(CUSTOM_WEIGHTS_PARAMETER) or ""

    def setCustomWeights(self, parameterNode, path):
        path = str(path or "").strip()
        self._rawNode(parameterNode).SetParameter(CUSTOM_WEIGHTS_PARAMETER, "" if path in (".", "") else path)

    def process(self, inputNode, task="enhance", blocking=True, progress=None, cancel=None, outputNode=None,
                segmentation=None, segmentId=None, **options):
        """Run ``task`` on ``inputNode``: the output node (blocking) or a running NodeTask.

        The output is a new node, or ``outputNode`` when it is an earlier QHQGAN result of the
        same input; any other ``outputNode`` is refused before anything runs
        (``QHQGANLib.apps.node_task.OutputRefused``, a ValueError saying why). Blocking,
        Slicer's events are processed between polls (the application stays responsive).

        "insert-lesion" (``inputNode``: the CT) and "synthesize-from-labels" read ``segmentation``: a
        segmentation node (with ``segmentId``, the segment where the lesion goes) or a labelmap node; their
        results are always new synthetic nodes outside any patient's study (blocking: the first of them; a
        running job's ``nodes`` lists all after ``finish``).
        """
        from QHQGANLib.apps import background as background
        request = background.TaskRequest(task, **options)
        scene = next((n.GetScene() for n in (inputNode, segmentation) if n is not None), None) or slicer.mrmlScene
        job = background.start_task(request, inputNode, segmentation=segmentation, segment_id=segmentId, scene=scene,
                                    output_node=outputNode)
        if not blocking:
            return job
        app = getattr(slicer, "app", None)
        background.wait(job, progress=progress, cancel=cancel, idle=app.processEvents if app is not None else None)
        return self.finish(job)

    def outputRefusal(self, inputNode, outputNode, task):
        """Why ``outputNode`` may not receive ``task``'s result on ``inputNode`` (None: it may, or it is None)."""
        from QHQGANLib.apps.node_task import output_refusal
        return output_refusal(outputNode, inputNode if task != "synthesize" else None, task)

    def finish(self, job):
        """The output of a finished NodeTask: in the output node chosen at its start, or a new node.

        When that node was deleted or changed while the task ran, the result is a new node and
        ``job.note`` says why (logged too).
        """
        node = job.finish()
        if getattr(job, "note", ""):
            logging.warning(f"QHQGAN: {job.note}")
        return node

    def compare(self, inputNode, outputNode):
        """Input and output side by side in linked axial slice views, with the same window/level."""
        from QHQGANLib.apps.scene import show_side_by_side
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        views = []
        for viewName in ("Red", "Yellow"):
            sliceWidget = layoutManager.sliceWidget(viewName)
            views.append((sliceWidget.mrmlSliceNode(), sliceWidget.mrmlSliceCompositeNode()))
        show_side_by_side(inputNode, outputNode, views)
        slicer.util.resetSliceViews()

    def installDependencies(self, askConfirmation=True, task="enhance", needTorch=None, quantumBackend="torch"):
        """What ``task``'s worker imports: torch through the PyTorch extension, the rest from its
        requirement files (PennyLane's only for ``quantumBackend="pennylane:..."``).

        Nothing is installed that already imports: "Simulate low dose" needs only Slicer's own
        packages and runs offline. False if declined. Raises
        ``QHQGANLib.apps.dependencies.MissingPackages`` naming the missing package and how to
        install it when the installation fails (offline). Slicer >= 5.12 installs through
        ``slicer.packaging.pip_ensure`` (it asks, and installs nothing in testing mode); 5.8 and
        5.10 through ``slicer.util.pip_install`` with a constraints file keeping Slicer's packages.
        """
        from QHQGANLib.apps.dependencies import (TORCH_MINIMUM, MissingPackages, check_torch, constraints_file,
                                                 ensure_requirements, requirement_files, task_needs_torch)
        if needTorch is None:
            needTorch = task_needs_torch(task)
        if needTorch and self.torchInstalled():
            check_torch(task)  # an installed torch older than QHQGAN needs: OutdatedTorch says how to update it
        elif needTorch:
            try:
                import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
            except ImportError:
                raise RuntimeError(_("QHQGAN needs the PyTorch extension: install it from the Extensions Manager."))
            # fepegar/SlicerPyTorch PyTorchUtils.py: installTorch(askConfirmation, forceComputationBackend,
            # torchVersionRequirement, ...) returns None when the user declines
            try:
                installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                                          torchVersionRequirement=f">={TORCH_MINIMUM}")
            except Exception as error:  # offline: say so, with the way to install torch
                raise MissingPackages([f"torch>={TORCH_MINIMUM}"],
                                      f"the PyTorch extension could not install it: {error}",
                                      task) from error
            if installed is None:
                return False
        try:
            import slicer.packaging as packaging  # Slicer >= 5.12 (Base/Python/slicer/packaging.py)
        except ImportError:
            packaging = None
        confirm = slicer.util.confirmOkCancelDisplay if askConfirmation else (lambda text: True)
        folder = self._resourcesFolder()
        return ensure_requirements(requirement_files(task, folder, quantum_backend=quantumBackend), confirm,
                                   slicer.util.pip_install, packaging, keep=SLICER_OWN_PACKAGES,
                                   constraints=constraints_file(folder), task=task)

    @staticmethod
    def torchInstalled():
        import importlib.util
        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def _resourcesFolder():
        """Resources/ with the requirement files: beside the module when built, at the top in a checkout."""
        here = pathlib.Path(__file__).resolve().parent / "Resources"
        return here if (here / "requirements-base.txt").is_file() else pathlib.Path(__file__).resolve().parents[1] / "Resources"

    def taskUnavailableReason(self, task):
        """None when ``task`` can run in this Slicer now, else why not (packages or model missing)."""
        from QHQGANLib.apps.dependencies import (OutdatedTorch, check_torch, missing_requirements, requirement_files,
                                                 task_needs_torch)
        from QHQGANLib.apps.request import task_unavailable_reason
        if task_needs_torch(task) and not self.torchInstalled():
            return "torch is not installed (PyTorch extension)"
        try:
            if task_needs_torch(task):
                check_torch(task)
        except OutdatedTorch as error:
            return str(error)
        missing = missing_requirements(requirement_files(task, self._resourcesFolder()))
        if missing:
            return "missing Python packages: " + ", ".join(missing)
        return task_unavailable_reason(task)


class QHQGANTest(ScriptedLoadableModuleTest):
    """Self-test on a small synthetic CT made in the scene (no download, no network).

    "Simulate low dose" needs only Slicer's own packages: it must run (it is never skipped),
    and so must the checks that a result never replaces another patient's volume. A task with
    a network whose packages or model are missing is skipped, with the reason (Slicer installs
    nothing in testing mode)."""

    #: the task that runs with the packages of every Slicer build (numpy, SciPy, SimpleITK)
    ALWAYS_RUNS = "simulate-low-dose"

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_QHQGAN_tasks_on_a_small_phantom()
        self.setUp()
        self.test_QHQGAN_results_never_replace_another_patients_volume()
        self.setUp()
        self.test_QHQGAN_insert_lesion_from_a_segment()

    @staticmethod
    def phantomNode(slices=3, size=64):
        """A water ellipse with a bone insert in air, 0.8 mm pixels: a tiny CT."""
        import numpy as np
        from QHQGANLib.apps.scene import node_from_volume
        from QHQGANLib.core.volume import Volume
        _z, y, x = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
        c = (size - 1) / 2
        body = ((y - c) / (0.42 * size)) ** 2 + ((x - c) / (0.46 * size)) ** 2 < 1
        bone = (y - c) ** 2 + (x - c - size / 6) ** 2 < (size / 12) ** 2
        noise = np.random.default_rng(0).normal(0, 15, body.shape)
        array = np.where(bone, 900.0, np.where(body, 40.0, -1000.0)) + np.where(body, noise, 0)
        volume = Volume(array.astype(np.float32), (0.8, 0.8, 2.5), (-25.0, -25.0, 0.0), np.eye(3))
        return node_from_volume(volume, slicer.mrmlScene, "QHQGANPhantom")

    def test_QHQGAN_tasks_on_a_small_phantom(self):
        import numpy as np
        from QHQGANLib.core.naming import is_synthetic_node
        ct = self.phantomNode()
        self.delayDisplay(f"Made {ct.GetName()}")
        logic = QHQGANLogic()
        ran = []
        source = ct
        for task, scale in (("simulate-low-dose", 1), ("enhance", 1), ("super-resolve", 2), ("synthesize", None)):
            reason = logic.taskUnavailableReason(task)
            if reason and task == self.ALWAYS_RUNS:
                raise AssertionError(f"{task} must run with Slicer's own packages, but: {reason}")
            if reason:
                self.delayDisplay(f"Skipped {task}: {reason}")
                continue
            out = logic.process(None if task == "synthesize" else source, task=task, device="cpu", seed=0,
                                n_samples=2, dose=0.25, tile_size=64)
            values = slicer.util.arrayFromVolume(out)
            if not (-1500 <= float(np.min(values)) and float(np.max(values)) <= 3500):  # noise may dip below -1024
                raise AssertionError(f"{task}: HU out of range")
            if scale:
                self._checkGrid(source, out, scale)
            elif not (is_synthetic_node(out) and "synthetic" in out.GetName().lower()):
                raise AssertionError(f"{task}: the output is not marked synthetic")
            if task == "simulate-low-dose":
                source = out
            ran.append(task)
            self.delayDisplay(f"{task}: OK ({out.GetName()})")
        from QHQGANLib.core.kinds import models_for_task
        if "super-resolve" in ran and models_for_task("super-resolve", axis="z"):  # super-resolve slices x2
            out = logic.process(source, task="super-resolve", axis="z", scale=2, device="cpu", tile_size=64)
            self._checkGrid(source, out, 2, axis="z")
            ran.append("super-resolve slices")
            self.delayDisplay(f"super-resolve slices: OK ({out.GetName()})")
        self.delayDisplay(f"QHQGAN self-test passed ({', '.join(ran) or 'no task could run here'})")
        return ran

    def test_QHQGAN_results_never_replace_another_patients_volume(self):
        """Another patient's volume is refused before anything runs; an earlier result of the same
        input is replaced; the output captured at the start is the one written (needs no torch)."""
        from QHQGANLib.apps.node_task import OutputRefused
        logic = QHQGANLogic()
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patients = []
        for name in ("PatientA", "PatientB"):
            node = self.phantomNode(slices=1, size=32)
            node.SetName(f"{name}_CT")
            study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), name), f"{name} study")
            item = sh.GetItemByDataNode(node)
            if item:
                sh.SetItemParent(item, study)
            else:
                sh.CreateItem(study, node)
            patients.append(node)
        a, b = patients
        before = slicer.util.arrayFromVolume(b).copy()
        for target in (b, a):  # another patient's volume; the input itself
            try:
                logic.process(a, task="simulate-low-dose", dose=0.5, seed=0, outputNode=target)
            except OutputRefused as refusal:
                self.delayDisplay(f"Refused as it should be: {refusal}")
            else:
                raise AssertionError(f"a result of {a.GetName()} was written into {target.GetName()}")
        if not (slicer.util.arrayFromVolume(b) == before).all() or b.GetName() != "PatientB_CT":
            raise AssertionError("PatientB_CT was changed")
        first = logic.process(a, task="simulate-low-dose", dose=0.5, seed=0)
        again = logic.process(a, task="simulate-low-dose", dose=0.25, seed=1, outputNode=first)
        if again is not first or first.GetAttribute("QHQGAN.dose_fraction") != "0.25":
            raise AssertionError("an earlier result of the same input was not replaced")
        self.delayDisplay("Output safety: OK")

    def test_QHQGAN_insert_lesion_from_a_segment(self):
        """Insert lesion (Slicer's own packages only): a segment exported by Slicer's segmentations logic, a new
        synthetic volume and its label map outside any study, the CT untouched."""
        import numpy as np
        from QHQGANLib.core.naming import is_synthetic_node
        ct = self.phantomNode(slices=2, size=64)
        before = slicer.util.arrayFromVolume(ct).copy()
        painted = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "QHQGANPainted")
        matrix = vtk.vtkMatrix4x4()
        ct.GetIJKToRASMatrix(matrix)
        painted.SetIJKToRASMatrix(matrix)
        _z, y, x = np.mgrid[0:2, 0:64, 0:64]
        lesion = ((y - 32) ** 2 + (x - 22) ** 2) < 36  # in the water, away from the bone insert
        slicer.util.updateVolumeFromArray(painted, lesion.astype(np.int16))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "QHQGANSegments")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(painted, segmentation)
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        out = QHQGANLogic().process(ct, task="insert-lesion", segmentation=segmentation, segmentId=segmentId,
                                    lesion_kind="cyst", texture="smooth", edge_mm=0.0)
        values = slicer.util.arrayFromVolume(out)
        if not (slicer.util.arrayFromVolume(ct) == before).all():
            raise AssertionError("insert-lesion changed the CT")
        if not (is_synthetic_node(out) and out.GetName().startswith("SYNTHETIC_")) or not np.all(values[lesion] == 10):
            raise AssertionError("insert-lesion: not a synthetic volume with a 10 HU cyst in the segment")
        if not (values[~lesion] == before[~lesion]).all():
            raise AssertionError("insert-lesion changed voxels outside the segment")
        label = slicer.mrmlScene.GetFirstNodeByName(out.GetName() + "_label")
        if label is None or not ((slicer.util.arrayFromVolume(label) != 0) == lesion).all():
            raise AssertionError("insert-lesion: no label map of the lesion beside it")
        self.delayDisplay(f"Insert lesion: OK ({out.GetName()}, {label.GetName()})")

    def _checkGrid(self, reference, node, scale, axis="in-plane"):
        import numpy as np
        spacing, refSpacing = np.array(node.GetSpacing()), np.array(reference.GetSpacing())
        refined = np.array([False, False, True]) if axis == "z" else np.array([True, True, False])
        np.testing.assert_allclose(spacing[refined] * scale, refSpacing[refined], rtol=1e-4)
        np.testing.assert_allclose(spacing[~refined], refSpacing[~refined], rtol=1e-4)
        refDims, dims = np.array(reference.GetImageData().GetDimensions()), np.array(node.GetImageData().GetDimensions())
        np.testing.assert_allclose(dims * spacing, refDims * refSpacing, rtol=1e-4)  # same physical extent
