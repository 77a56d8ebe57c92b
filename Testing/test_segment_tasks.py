"""The panel's tasks on segments (issue #30 item 4): "Insert lesion" and "Synthesize from segmentation".

The module (QHQGAN/QHQGAN.py) runs on slicer-core's real MRML with the stand-ins of
Testing/test_slicer_app_module.py; segmentations are real ``vtkMRMLSegmentationNode`` s, exported by
Slicer's own ``vtkSlicerSegmentationsModuleLogic`` (the converter rules that Slicer's Segmentations module
registers at start-up are registered here). The workers are the real ``qhqgan`` commands in child processes.
The CT is pydicom's CT_small (a real 128x128 slice).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
import slicer.util  # noqa: E402
import vtk  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
try:
    from test_slicer_app_module import Wrapper58, ct_node, fake_ui, module  # noqa: E402,F401 (fixture)
    from test_slicer_safety import BLOCKER, file_under, worker_allowed_imports  # noqa: E402
finally:
    sys.path.pop(0)

from QHQGANLib.apps import segments  # noqa: E402
from QHQGANLib.apps.background import TaskRequest, start_task, wait  # noqa: E402
from QHQGANLib.apps.node_task import OutputRefused  # noqa: E402
from QHQGANLib.apps.request import NO_LABEL_MODEL  # noqa: E402
from QHQGANLib.core.naming import is_synthetic_node  # noqa: E402
from QHQGANLib.physics.tissue_classes import BONE, FAT, LUNG, OUTSIDE, SOFT, body_masks  # noqa: E402

_RULES = []


@pytest.fixture(autouse=True)
def segmentation_converters():
    """What Slicer's Segmentations module does when Slicer starts: register the representation converters."""
    if not _RULES:
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                     slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
            _RULES.append(rule())
            factory.RegisterConverterRule(_RULES[-1])
    yield


def labelmap_on(scene, reference, array, name="painted", spacing_factor=1.0):
    """A labelmap node holding ``array`` (z, y, x) on ``reference``'s grid (or one ``spacing_factor`` times finer
    in-plane, same corner)."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    ijk_to_ras[:3, :2] /= spacing_factor
    corner = ijk_to_ras[:3, 3] - ijk_to_ras[:3, :2].sum(axis=1) * (spacing_factor - 1) / 2  # same voxel edge
    ijk_to_ras[:3, 3] = corner
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.asarray(array, np.int16))
    return node


def segmentation_of(scene, reference, labels, names, node_name="Segmentation"):
    """A segmentation node on ``reference``'s geometry, one segment per value 1..n of ``labels``, named ``names``."""
    labelmap = labelmap_on(scene, reference, labels, "paint")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", node_name)
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    scene.RemoveNode(labelmap)
    ids = segments.segment_ids(node)
    assert len(ids) == len(names)
    for segment_id, name in zip(ids, names):
        node.GetSegmentation().GetSegment(segment_id).SetName(name)
    return node


def disc(shape, centre, radius):
    _, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    return ((y - centre[0]) ** 2 + (x - centre[1]) ** 2) < radius ** 2


def body_centre(ct):
    from QHQGANLib.apps.scene import volume_from_node

    body = body_masks(volume_from_node(ct))
    return tuple(np.round(np.argwhere(body).mean(axis=0)[1:]).astype(int)), body


def sh_parent_is_scene(scene, node):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    return sh.GetItemParent(sh.GetItemByDataNode(node)) == sh.GetSceneItemID()


def tiny_label_model(path):
    """A tiny, untrained label-conditioned generator saved as PATH.safetensors (+ card): fast to run."""
    from QHQGANLib.core.kinds import LABEL_SYNTH_TASK
    from QHQGANLib.nn.label_synthesis import LabelGenerator
    from QHQGANLib.nn.weights import save_model

    card = save_model(LabelGenerator("spade", size=64, width=2, hidden=4), path, {"task": LABEL_SYNTH_TASK})
    return str(Path(path).parent / card["weights"])


# ---------------------------------------------------------------------------
# segment names -> tissue classes
# ---------------------------------------------------------------------------
def test_segment_names_map_to_tissue_classes():
    assert segments.tissue_class_of("Lung") == LUNG and segments.tissue_class_of("soft_tissue") == SOFT
    assert segments.tissue_class_of("  Soft-Tissue ") == SOFT and segments.tissue_class_of("bones") == BONE
    assert segments.tissue_class_of("fat") == FAT and segments.tissue_class_of("background") == OUTSIDE
    assert segments.tissue_class_of("Segment_1") is None and segments.tissue_class_of("liver") is None
    with pytest.raises(ValueError) as info:
        segments.segment_classes({"a": "lung", "b": "Segment_1", "c": "tumour"})
    message = str(info.value)
    assert "'Segment_1', 'tumour' match no tissue class" in message and "'soft tissue'" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------
# Insert lesion
# ---------------------------------------------------------------------------
def test_insert_lesion_makes_new_synthetic_nodes_and_leaves_the_ct_alone(module, ct_small_path):
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    study = file_under(scene, ct, "PatientA", "PID-A")
    before = slicer.util.arrayFromVolume(ct).copy()
    (cy, cx), _body = body_centre(ct)
    shape = before.shape
    lesion = disc(shape, (cy, cx), 6)
    seg = segmentation_of(scene, ct, np.where(lesion, 2, np.where(disc(shape, (cy, cx), 14), 1, 0)),
                          ["liver", "lesion"])
    lesion_id = segments.segment_ids(seg)[1]
    volumes_before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    logic = module.QHQGANLogic()

    with pytest.raises(OutputRefused, match="always makes new synthetic volumes"):  # never an existing volume
        logic.process(ct, task="insert-lesion", segmentation=seg, segmentId=lesion_id, outputNode=ct)
    image = logic.process(ct, task="insert-lesion", segmentation=seg, segmentId=lesion_id, lesion_kind="cyst",
                          texture="smooth", edge_mm=0.0)

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), before)  # the CT is untouched
    assert image is not ct and is_synthetic_node(image) and image.GetName() == "SYNTHETIC_lesion_cyst"
    assert "CT_small" not in image.GetName() and image.GetAttribute("QHQGAN.segment") == "lesion"
    assert image.GetAttribute("QHQGAN.source_node") == ct.GetID()
    values = slicer.util.arrayFromVolume(image)
    assert values.shape == before.shape and np.all(values[lesion] == 10)  # a cyst: 10 HU, sharp edge
    np.testing.assert_array_equal(values[~lesion], before[~lesion])  # outside the segment: the CT's voxels
    labels = scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode")
    label = next(labels.GetItemAsObject(i) for i in range(labels.GetNumberOfItems())
                 if labels.GetItemAsObject(i).GetName() == "SYNTHETIC_lesion_cyst_label")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(label) != 0, lesion)
    assert is_synthetic_node(label) and label.GetAttribute("QHQGAN.label_of") == image.GetID()
    for node in (image, label):  # outside the patient's study, at the top of the subject hierarchy
        assert sh_parent_is_scene(scene, node)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(ct)) == study
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes_before + 2  # image + label map
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1  # no temporary node left
    assert module.QHQGANLogic.madeFrom(image, ct)  # Compare shows the CT beside it
    # an earlier lesion result is not replaced either
    with pytest.raises(OutputRefused, match="choose 'Create new volume'"):
        logic.process(ct, task="insert-lesion", segmentation=seg, segmentId=lesion_id, outputNode=image)


def test_insert_lesion_from_a_label_map_on_another_grid(module, ct_small_path):
    """A label map painted on a 2x finer grid over the CT lands on the CT's voxels (nearest neighbour)."""
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    before = slicer.util.arrayFromVolume(ct).copy()
    (cy, cx), _body = body_centre(ct)
    fine = disc((1, 2 * before.shape[1], 2 * before.shape[2]), (2 * cy + 0.5, 2 * cx + 0.5), 12).astype(np.int16)
    painted = labelmap_on(scene, ct, fine * 3, "fine paint", spacing_factor=2.0)
    image = module.QHQGANLogic().process(ct, task="insert-lesion", segmentation=painted, lesion_kind="hyperdense",
                                         texture="smooth")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), before)
    changed = slicer.util.arrayFromVolume(image) != before
    expected = disc(before.shape, (cy, cx), 6)
    assert changed.any() and (changed & ~disc(before.shape, (cy, cx), 7)).sum() == 0  # only where it was painted
    assert abs(int(changed.sum()) - int(expected.sum())) <= 0.2 * expected.sum()
    np.testing.assert_allclose(np.argwhere(changed).mean(axis=0)[1:], (cy, cx), atol=0.6)  # not shifted
    assert is_synthetic_node(image) and image.GetAttribute("QHQGAN.lesion_kind") == "hyperdense"


def test_insert_lesion_refusals_come_before_anything_runs(module, ct_small_path, monkeypatch):
    from QHQGANLib.apps import runner

    started = []
    monkeypatch.setattr(runner.BackgroundTask, "__init__", lambda *a, **k: started.append(a))
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    shape = slicer.util.arrayFromVolume(ct).shape
    seg = segmentation_of(scene, ct, disc(shape, (60, 60), 5).astype(np.int16), ["lesion"])
    empty = seg.GetSegmentation().AddEmptySegment("", "empty")
    logic = module.QHQGANLogic()
    for kwargs, words in ((dict(segmentation=seg, segmentId=empty), "is empty on the grid of CT_small"),
                          (dict(segmentation=seg, segmentId="nope"), "has no segment 'nope'"),
                          (dict(segmentation=None), "needs a segmentation")):
        with pytest.raises(ValueError, match=words):
            logic.process(ct, task="insert-lesion", **kwargs)
    with pytest.raises(ValueError, match="needs the CT volume"):
        logic.process(None, task="insert-lesion", segmentation=seg, segmentId=segments.segment_ids(seg)[0])
    with pytest.raises(ValueError, match="lesion_hu must be in"):
        logic.process(ct, task="insert-lesion", segmentation=seg, lesion_hu=5000.0)
    assert not started


# ---------------------------------------------------------------------------
# Synthesize from segmentation
# ---------------------------------------------------------------------------
def anatomy(scene, ct):
    """A segmentation of CT_small's body by tissue names: soft tissue, with bone (HU > 300) painted over it."""
    values = slicer.util.arrayFromVolume(ct)
    (_cy, _cx), body = body_centre(ct)
    labels = np.where(body & (values > 300), 2, np.where(body, 1, 0)).astype(np.int16)
    return segmentation_of(scene, ct, labels, ["Soft_tissue", "bone"], "Anatomy"), labels


def test_synthesize_from_segmentation_without_a_model_is_refused(module, ct_small_path, tmp_path, monkeypatch):
    monkeypatch.setenv("QHQGAN_MODELS_DIR", str(tmp_path))  # whatever ships later: no model installed here
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    seg, _labels = anatomy(scene, ct)
    logic = module.QHQGANLogic()
    with pytest.raises(ValueError) as info:
        logic.process(None, task="synthesize-from-labels", segmentation=seg, n_samples=2)
    assert str(info.value) == NO_LABEL_MODEL == (
        "no label-synthesis model is installed: train one with `qhqgan train-from-labels` or choose a weights file")
    assert logic.taskUnavailableReason("synthesize-from-labels") in (NO_LABEL_MODEL, "torch is not installed "
                                                                                     "(PyTorch extension)")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1

    # the panel: only "Custom weights file..." in the model list, Apply disabled, the message shown
    widget, wrapper = panel(module)
    wrapper.task, wrapper.segmentation = module.Task.SYNTHESIZE_FROM_LABELS, seg
    widget._updateGui()
    assert widget.ui.modelComboBox.items == [module.CUSTOM_WEIGHTS]
    assert widget.ui.applyButton.enabled is False
    assert widget.ui.applyButton.toolTip == NO_LABEL_MODEL and widget.ui.statusLabel.text == NO_LABEL_MODEL
    widget.logic.setCustomWeights(wrapper, str(tmp_path / "mine.safetensors"))  # the user's own weights
    widget._updateGui()
    assert widget.ui.applyButton.enabled is True and widget.ui.statusLabel.text == ""


def test_synthesize_from_segmentation_makes_n_synthetic_nodes_on_its_grid(module, ct_small_path, tmp_path):
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    file_under(scene, ct, "PatientA", "PID-A")
    before = slicer.util.arrayFromVolume(ct).copy()
    seg, _labels = anatomy(scene, ct)
    weights = tiny_label_model(tmp_path / "tiny_labels")
    job = module.QHQGANLogic().process(None, task="synthesize-from-labels", segmentation=seg, model=weights,
                                       n_samples=3, seed=4, device="cpu", blocking=False)
    wait(job)
    first = job.finish()
    assert len(job.nodes) == 3 and first is job.nodes[0]
    ct_matrix, matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(ct_matrix)
    for i, node in enumerate(job.nodes):
        assert is_synthetic_node(node) and node.GetName() == f"SYNTHETIC_tiny_labels_seed4_sample{i}"
        assert node.GetAttribute("QHQGAN.task") == "synthesize-from-labels"
        assert node.GetAttribute("QHQGAN.sample") == str(i)
        assert node.GetAttribute("QHQGAN.source_node") is None  # no patient's volume is its source
        node.GetIJKToRASMatrix(matrix)  # on the segmentation's reference grid (the CT's)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), slicer.util.arrayFromVTKMatrix(ct_matrix),
                                   atol=1e-4)
        values = slicer.util.arrayFromVolume(node)
        assert values.shape == before.shape and np.isfinite(values).all()
        assert sh_parent_is_scene(scene, node)  # under no patient's study
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), before)
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # the temporary exports are gone


def test_synthesize_from_a_label_map_and_refusals(module, ct_small_path, tmp_path):
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    seg, labels = anatomy(scene, ct)
    logic = module.QHQGANLogic()
    seg.GetSegmentation().GetSegment(segments.segment_ids(seg)[1]).SetName("Segment_2")
    with pytest.raises(ValueError, match="'Segment_2' match no tissue class"):
        logic.process(None, task="synthesize-from-labels", segmentation=seg, model="any.safetensors")
    codes = labelmap_on(scene, ct, np.where(labels == 2, BONE, np.where(labels == 1, SOFT, OUTSIDE)), "classes")
    weights = tiny_label_model(tmp_path / "tiny")
    node = logic.process(None, task="synthesize-from-labels", segmentation=codes, model=weights, n_samples=1,
                         device="cpu")
    assert is_synthetic_node(node) and slicer.util.arrayFromVolume(node).shape == labels.shape
    wrong = labelmap_on(scene, ct, labels * 9, "not classes")
    with pytest.raises(ValueError, match="not tissue classes"):
        logic.process(None, task="synthesize-from-labels", segmentation=wrong, model=weights)


def test_the_insert_lesion_worker_imports_only_its_requirement_files(ct_small_path, tmp_path):
    """The panel's insert-lesion command line with every package outside requirements-base.txt (and Slicer's
    own) blocked and the network cut: no torch, no model."""
    import subprocess

    from QHQGANLib.apps.request import build_command
    from QHQGANLib.core.io import read_volume, write_volume
    from QHQGANLib.core.volume import Volume

    ct = read_volume(ct_small_path)
    body = body_masks(ct)
    centre = np.round(np.argwhere(body).mean(axis=0)[1:]).astype(int)
    mask = Volume(disc(ct.shape, centre, 5).astype(np.float32), ct.spacing, ct.origin, ct.direction)
    source = write_volume(ct, tmp_path / "input.nrrd")
    mask_path = write_volume(mask, tmp_path / "mask.nrrd", pixel_type="int16")
    out = tmp_path / "output_synthetic.nrrd"
    request = TaskRequest("insert-lesion", lesion_kind="hypodense", texture="noise", seed=2)
    argv = build_command(request, source, out, sys.executable, mask_path=mask_path,
                         label_path=tmp_path / "output_synthetic_label.nrrd")[3:]
    code = BLOCKER.format(allowed=sorted(worker_allowed_imports(request)), argv=argv)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.is_file() and (tmp_path / "output_synthetic_label.nrrd").is_file()
    assert "torch" not in worker_allowed_imports(request)


def test_the_self_test_inserts_a_lesion_with_slicers_own_packages(module):
    """The CTest self-test (QHQGANTest.runTest) runs Insert lesion: no torch, no model."""
    test = module.QHQGANTest()
    test.test_QHQGAN_insert_lesion_from_a_segment()
    assert any(m.startswith("Insert lesion: OK") for m in test.messages)


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def panel(module):
    wrapper = Wrapper58(module, slicer.mrmlScene)
    for field in ("computeDevice", "pennylaneDevice", "tileSize", "overlap", "tileBatch", "nSamples", "seed",
                  "doseFraction", "strength"):
        setattr(wrapper, field, getattr(module.QHQGANParameterNode, field))
    widget = module.QHQGANWidget()
    widget.ui, widget.logic = fake_ui(), module.QHQGANLogic()
    widget.setParameterNode(wrapper)
    return widget, wrapper


def test_panel_lists_the_segments_and_applies_insert_lesion_with_the_chosen_one(module, ct_small_path, monkeypatch):
    scene = slicer.mrmlScene
    ct = ct_node(scene, ct_small_path)
    shape = slicer.util.arrayFromVolume(ct).shape
    seg = segmentation_of(scene, ct, np.where(disc(shape, (60, 60), 4), 2, np.where(disc(shape, (60, 60), 12), 1, 0)),
                          ["liver", "lesion"])
    widget, wrapper = panel(module)
    wrapper.task, wrapper.inputVolume, wrapper.segmentation = module.Task.INSERT_LESION, ct, seg
    wrapper.lesionKind, wrapper.lesionHu = module.LesionKind.CYST, " -15 "
    widget._updateGui()
    assert widget.ui.segmentComboBox.items == ["liver", "lesion"]
    widget.ui.segmentComboBox.setCurrentIndex(1)
    widget.onSegmentChanged(1)
    assert widget.logic.segmentChoice(wrapper) == segments.segment_ids(seg)[1]
    assert widget.ui.applyButton.enabled is True
    added = seg.GetSegmentation().AddEmptySegment("", "another")  # the list follows the segmentation (observed)
    assert widget.ui.segmentComboBox.items == ["liver", "lesion", "another"]
    assert widget.ui.segmentComboBox.currentText == "lesion"  # the choice is kept
    seg.GetSegmentation().GetSegment(added).SetName("renamed")
    assert widget.ui.segmentComboBox.items[-1] == "renamed"

    calls = []
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(widget.logic, "installDependencies", lambda **kwargs: True)
    monkeypatch.setattr(widget.logic, "process", lambda node, **kwargs: calls.append((node, kwargs)) or object())
    widget.onApplyButton()
    node, kwargs = calls[0]
    assert node is ct and kwargs["task"] == "insert-lesion" and kwargs["segmentation"] is seg
    assert kwargs["segmentId"] == segments.segment_ids(seg)[1]
    assert (kwargs["lesion_kind"], kwargs["lesion_hu"], kwargs["texture"]) == ("cyst", -15.0, "matched")
    options = {k: v for k, v in kwargs.items() if k not in ("task", "blocking", "segmentation", "segmentId")}
    assert TaskRequest("insert-lesion", **options).lesion_hu == -15.0  # every key is a TaskRequest field

    widget._job = None
    wrapper.lesionHu = "dark"  # refused in the panel, nothing started
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, *a, **k: errors.append(text), raising=False)
    widget.onApplyButton()
    assert len(calls) == 1 and "lesion_hu must be a number" in widget.ui.statusLabel.text
    wrapper.task = module.Task.SYNTHESIZE_FROM_LABELS  # the model list: label-synthesis models only
    widget._updateGui()
    assert widget.ui.modelComboBox.items[-1] == module.CUSTOM_WEIGHTS


def test_a_segment_task_never_writes_into_a_chosen_output(ct_small_path, tmp_path):
    """start_task refuses any output node for the segment tasks before reading anything."""
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    ct = ct_node(scene, ct_small_path)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    for task in ("insert-lesion", "synthesize-from-labels"):
        with pytest.raises(OutputRefused, match="always makes new synthetic volumes"):
            start_task(TaskRequest(task, model="m.safetensors"), ct, segmentation=ct, output_node=empty)
    with pytest.raises(ValueError, match="reads no segment"):
        start_task(TaskRequest("enhance"), ct, segmentation=ct)
    scene.Clear(True)
