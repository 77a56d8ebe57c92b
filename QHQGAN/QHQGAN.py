"""QHQGAN: 3D Slicer module running a hybrid quantum-classical GAN on CT.

The module is thin: the work is done by QHQGANLib (packaged with the extension),
in a child process (QHQGANLib.apps.background) so the panel never freezes.
"""
import enum
import logging
import pathlib
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

# Developer mode (a source checkout): QHQGANLib sits beside the QHQGAN folder, not in it.
_SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "QHQGANLib" / "__init__.py").is_file() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.append(str(_SOURCE_ROOT))

# the option schema: cheap to import (no torch), the same ranges and defaults as the CLI and the runner
from QHQGANLib.core.options import option_default, option_range  # noqa: E402

CUSTOM_WEIGHTS = "Custom weights file…"
#: Packages of Slicer itself that QHQGAN's requirements must never replace.
SLICER_OWN_PACKAGES = ["SimpleITK", "vtk", "numpy", "torch"]
#: The panel's spin boxes and the options (QHQGANLib.core.options) whose ranges they take.
SPIN_BOX_OPTIONS = {"tileSizeSpinBox": "tile_size", "overlapSpinBox": "overlap", "tileBatchSpinBox": "tile_batch",
                    "samplesSpinBox": "n_samples", "seedSpinBox": "seed", "doseSpinBox": "dose"}


class QHQGAN(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "QHQGAN"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["QHQGAN developers"]
        self.parent.helpText = """
Enhance low-dose CT, super-resolve CT in-plane x2, synthesize CT slices, or simulate a lower dose.
The method is a hybrid quantum-classical generative adversarial network (HQGAN): a classical
convolutional encoder and decoder with a small variational quantum circuit (simulated) in the
bottleneck, trained adversarially against a classical discriminator.
<br><b>Limits:</b> research use only, not for diagnosis. The models were trained on abdomen CT;
other anatomy, contrast phases or scanners may give artefacts. Synthesized volumes are marked
as synthetic (name and node attributes). Processing runs in a background process; Cancel stops it.
See <a href="https://github.com/qhqgan/SlicerQHQGAN">the project page</a>.
"""
        self.parent.acknowledgementText = """
Built on 3D Slicer, PyTorch, PennyLane, SimpleITK, pydicom and the ASTRA toolbox. Models are trained
and tested on public CT under their own licences: the TotalSegmentator example CT (Apache-2.0 /
CC BY 4.0), TCIA C4KC-KiTS slices (CC BY 3.0), the VTKData head CT (BSD-3) and pydicom's test
files (MIT). Each shipped model's card names the data it was trained on.
"""


class Task(enum.Enum):
    ENHANCE = "enhance"
    SUPER_RESOLVE = "super-resolve"
    SYNTHESIZE = "synthesize"
    SIMULATE_LOW_DOSE = "simulate-low-dose"

    def label(self):
        return {"enhance": "Enhance low-dose CT", "super-resolve": "Super-resolve x2",
                "synthesize": "Synthesize samples", "simulate-low-dose": "Simulate low dose"}[self.value]


class QuantumBackend(enum.Enum):
    BUILTIN = "torch"
    PENNYLANE = "pennylane"

    def label(self):
        return "Fast built-in simulator" if self is QuantumBackend.BUILTIN else "PennyLane device"


class ComputeDevice(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return {"auto": "Automatic", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


@parameterNodeWrapper
class QHQGANParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    task: Task = Task.ENHANCE
    customWeights: pathlib.Path
    quantumBackend: QuantumBackend = QuantumBackend(option_default("quantum_backend"))
    pennylaneDevice: str = "lightning.qubit"
    computeDevice: ComputeDevice = ComputeDevice(option_default("device"))
    tileSize: Annotated[int, WithinRange(*option_range("tile_size"))] = option_default("tile_size")
    overlap: Annotated[float, WithinRange(*option_range("overlap"))] = option_default("overlap")
    tileBatch: Annotated[int, WithinRange(*option_range("tile_batch"))] = option_default("tile_batch")
    nSamples: Annotated[int, WithinRange(*option_range("n_samples"))] = option_default("n_samples")
    seed: Annotated[int, WithinRange(*option_range("seed"))] = option_default("seed")
    doseFraction: Annotated[float, WithinRange(*option_range("dose"))] = option_default("dose")
    outputVolume: vtkMRMLScalarVolumeNode


class QHQGANWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self._updateGui)
        self.ui.progressBar.setVisible(False)
        for widgetName, optionName in SPIN_BOX_OPTIONS.items():  # the schema's ranges, whatever the .ui says
            getattr(self.ui, widgetName).setRange(*option_range(optionName))
        self.initializeParameterNode()

    def cleanup(self):
        self.onCancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._fillModels()
            self._updateGui()

    def _fillModels(self):
        self.ui.modelComboBox.clear()
        for name in self.logic.modelNames(self._parameterNode.task.value):
            self.ui.modelComboBox.addItem(name)
        self.ui.modelComboBox.addItem(CUSTOM_WEIGHTS)

    def _updateGui(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        task = p.task
        if self.ui.modelComboBox.property("task") != task.value:
            self.ui.modelComboBox.setProperty("task", task.value)
            self._fillModels()
        usesModel = task is not Task.SIMULATE_LOW_DOSE
        self.ui.modelCollapsibleButton.setEnabled(usesModel)
        self.ui.customWeightsPathLineEdit.setEnabled(self.ui.modelComboBox.currentText == CUSTOM_WEIGHTS)
        self.ui.pennylaneDeviceLineEdit.setEnabled(p.quantumBackend is QuantumBackend.PENNYLANE)
        self.ui.tileSizeSpinBox.setEnabled(task in (Task.ENHANCE, Task.SUPER_RESOLVE))
        self.ui.overlapSpinBox.setEnabled(task in (Task.ENHANCE, Task.SUPER_RESOLVE))
        self.ui.tileBatchSpinBox.setEnabled(task in (Task.ENHANCE, Task.SUPER_RESOLVE))
        self.ui.samplesSpinBox.setEnabled(task is Task.SYNTHESIZE)
        self.ui.doseSpinBox.setEnabled(task is Task.SIMULATE_LOW_DOSE)
        if self._job is not None:
            return
        ready = bool(p.inputVolume) or task is Task.SYNTHESIZE
        self.ui.applyButton.text = "Apply"
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = f"Run: {task.label()}" if ready else "Select an input volume"
        self.ui.compareButton.enabled = bool(p.inputVolume and p.outputVolume)

    def _options(self):
        p = self._parameterNode
        model = self.ui.modelComboBox.currentText
        if model == CUSTOM_WEIGHTS:
            model = str(p.customWeights) if p.customWeights and str(p.customWeights) not in ("", ".") else None
        backend = "torch" if p.quantumBackend is QuantumBackend.BUILTIN else f"pennylane:{p.pennylaneDevice.strip()}"
        return dict(model=model or None, quantum_backend=backend, device=p.computeDevice.value,
                    tile_size=p.tileSize, overlap=p.overlap, tile_batch=p.tileBatch, n_samples=p.nSamples,
                    seed=p.seed, dose=p.doseFraction)

    def onApplyButton(self):
        if self._job is not None:
            self.onCancel()
            return
        with slicer.util.tryWithErrorDisplay("QHQGAN could not start.", waitCursor=True):
            p = self._parameterNode
            if not self.logic.installDependencies(askConfirmation=True, needTorch=p.task is not Task.SIMULATE_LOW_DOSE):
                return
            self._job = self.logic.process(p.inputVolume, task=p.task.value, blocking=False, **self._options())
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running task; the scene is left unchanged"
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = f"{p.task.label()}: starting…"
            self._timer.start()

    def onPoll(self):
        job = self._job
        if job is None:
            return
        for fraction, message in job.poll():
            self.ui.progressBar.setValue(int(round(fraction * 100)))
            self.ui.statusLabel.text = message
        if job.running:
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        try:
            node = self.logic.finish(job, self._parameterNode.outputVolume)
        except Exception as exc:  # OperationCancelled, TaskFailed: one line for the user
            self.ui.statusLabel.text = str(exc)
            if job.task.cancelled:
                logging.info("QHQGAN: cancelled")
            else:
                slicer.util.errorDisplay(f"QHQGAN failed: {exc}")
        else:
            self._parameterNode.outputVolume = node
            self.ui.statusLabel.text = f"Done: {node.GetName()}"
            self.onCompareButton()
        self._updateGui()

    def onCancel(self):
        if self._job is not None:
            self._job.cancel()
            self.onPoll()

    def onCompareButton(self):
        p = self._parameterNode
        if p and p.inputVolume and p.outputVolume:
            self.logic.compare(p.inputVolume, p.outputVolume)


class QHQGANLogic(ScriptedLoadableModuleLogic):
    """Console use::

        logic = slicer.modules.qhqgan.widgetRepresentation().self().logic  # or QHQGANLogic()
        out = logic.process(slicer.util.getNode("CTChest"), task="simulate-low-dose", dose=0.25)
    """

    def getParameterNode(self):
        return QHQGANParameterNode(super().getParameterNode())

    def modelNames(self, task):
        from QHQGANLib.core.kinds import models_for_task
        return [card["name"] for card in models_for_task(task)]

    def process(self, inputNode, task="enhance", blocking=True, progress=None, cancel=None, outputNode=None, **options):
        """Run ``task`` on ``inputNode``: the new output node (blocking) or a running NodeTask."""
        from QHQGANLib.apps import background as background
        request = background.TaskRequest(task, **options)
        scene = inputNode.GetScene() if inputNode is not None else slicer.mrmlScene
        if not blocking:
            return background.start_node_task(request, inputNode, scene=scene)
        job = background.start_node_task(request, inputNode, scene=scene)
        background.wait(job, progress=progress, cancel=cancel)
        return self.finish(job, outputNode)

    def finish(self, job, outputNode=None):
        """The output of a finished NodeTask, moved into ``outputNode`` when one is given."""
        node = job.finish()
        if outputNode is not None and outputNode is not node and outputNode is not job.input_node:  # never the input
            from QHQGANLib.apps.node_task import move_volume_into
            node = move_volume_into(node, outputNode)
        return node

    def compare(self, inputNode, outputNode):
        """Input and output side by side in linked slice views."""
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, node in (("Red", inputNode), ("Yellow", outputNode)):
            composite = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
        slicer.util.resetSliceViews()

    def installDependencies(self, askConfirmation=True, needTorch=True):
        """torch through the PyTorch extension, the rest from Resources/requirements.txt; False if declined."""
        import importlib.util
        if needTorch and importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("QHQGAN needs the PyTorch extension: install it from the Extensions Manager.")
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation) is None:
                return False
        requirements = pathlib.Path(__file__).parent / "Resources" / "requirements.txt"
        if not requirements.is_file():  # source checkout: Resources/ is at the top
            requirements = pathlib.Path(__file__).parents[1] / "Resources" / "requirements.txt"
        try:
            import slicer.pydeps as pydeps  # Slicer >= 5.11: pip_ensure; older: slicer.util.pip_install
        except ImportError:
            pydeps = None
        from QHQGANLib.apps.dependencies import ensure_requirements
        confirm = slicer.util.confirmOkCancelDisplay if askConfirmation else (lambda text: True)
        return ensure_requirements(requirements, confirm, slicer.util.pip_install, pydeps, keep=SLICER_OWN_PACKAGES)


class QHQGANTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer on SampleData CTChest (tasks without a model are skipped, with the reason)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_QHQGAN_tasks_on_CTChest()

    def test_QHQGAN_tasks_on_CTChest(self):
        import numpy as np
        import SampleData
        from QHQGANLib.apps.request import task_unavailable_reason
        ct = SampleData.downloadSample("CTChest")
        self.delayDisplay(f"Loaded {ct.GetName()}")
        logic = QHQGANLogic()
        low = logic.process(ct, task="simulate-low-dose", dose=0.25, seed=0)
        self._checkGrid(ct, low, 1)
        source = low
        for task, scale in (("enhance", 1), ("super-resolve", 2), ("synthesize", None)):
            reason = task_unavailable_reason(task)
            if reason:
                self.delayDisplay(f"Skipped {task}: {reason}")
                continue
            out = logic.process(None if task == "synthesize" else source, task=task, device="auto", seed=0, n_samples=2)
            values = slicer.util.arrayFromVolume(out)
            self.assertTrue(-1100 <= float(np.min(values)) and float(np.max(values)) <= 3100, f"{task}: HU out of range")
            if scale:
                self._checkGrid(source, out, scale)
            else:
                self.assertEqual(out.GetAttribute("QHQGAN.synthetic"), "true")
                self.assertIn("synthetic", out.GetName())
            self.delayDisplay(f"{task}: OK ({out.GetName()})")
        self.delayDisplay("QHQGAN self-test passed")

    def _checkGrid(self, reference, node, scale):
        import numpy as np
        spacing, refSpacing = np.array(node.GetSpacing()), np.array(reference.GetSpacing())
        np.testing.assert_allclose(spacing[:2] * scale, refSpacing[:2], rtol=1e-4)
        np.testing.assert_allclose(spacing[2], refSpacing[2], rtol=1e-4)
        refDims, dims = np.array(reference.GetImageData().GetDimensions()), np.array(node.GetImageData().GetDimensions())
        np.testing.assert_allclose(dims * spacing, refDims * refSpacing, rtol=1e-4)  # same physical extent
