"""The MRML scene bridge, tested against 3D Slicer's own MRML classes (the slicer-core wheels)."""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
import slicer.util  # noqa: E402

from QHQGANLib import Volume, read_volume, write_volume  # noqa: E402
from QHQGANLib.apps import scene as bridge  # noqa: E402


def oblique_direction(seed: int = 0) -> np.ndarray:
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


@pytest.fixture
def mrml_scene():
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene  # what slicer.util helpers use inside Slicer
    yield scene
    scene.Clear(True)


def ct_phantom(shape=(6, 40, 56)) -> np.ndarray:
    """A water-like ellipse with a bone insert in air: non-square, physically plausible HU."""
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]].astype(np.float32)
    cy, cx = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    body = ((y - cy) / (0.45 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 < 1
    bone = ((y - cy) ** 2 + (x - cx - 5) ** 2) < 16
    return np.where(bone, 1000.0, np.where(body, 40.0, -1000.0)).astype(np.float32) + z


def test_volume_to_node_and_back_oblique_non_square(mrml_scene):
    vol = Volume(ct_phantom(), (0.7, 0.9, 2.5), (-120.0, 35.0, -400.0), oblique_direction(3))
    node = bridge.node_from_volume(vol, mrml_scene, "phantom")
    # Slicer's own view of the node: RAS = flip(LPS)
    np.testing.assert_allclose(node.GetSpacing(), vol.spacing, atol=1e-6)
    ras_origin = np.asarray(vol.origin) * [-1, -1, 1]
    np.testing.assert_allclose(node.GetOrigin(), ras_origin, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), vol.array)
    # a voxel centre lands where the Volume says, in RAS
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = np.asarray(m.MultiplyPoint((55, 39, 5, 1)))[:3]
    np.testing.assert_allclose(ras, vol.index_to_physical((55, 39, 5)) * [-1, -1, 1], atol=1e-6)
    back = bridge.volume_from_node(node)
    assert back.same_geometry(vol, tol=1e-6)
    np.testing.assert_array_equal(back.array, vol.array)


def test_geometry_agrees_with_slicers_own_file_reader(mrml_scene, tmp_path):
    vol = Volume(ct_phantom((4, 30, 50)), (0.8, 0.6, 3.0), (10.0, -20.0, 30.0), oblique_direction(7))
    path = write_volume(vol, tmp_path / "phantom.nrrd")
    loaded = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "loaded")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    mrml_scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(loaded), "Slicer's archetype reader failed"
    ours = bridge.node_from_volume(vol, mrml_scene, "ours")
    import vtk

    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    loaded.GetIJKToRASMatrix(a)
    ours.GetIJKToRASMatrix(b)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=1e-5)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(ours))


def test_simulate_low_dose_node_makes_a_new_node_and_keeps_the_input(mrml_scene, ct_small_path):
    vol = read_volume(ct_small_path)
    node = bridge.node_from_volume(vol, mrml_scene, "CT_small")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "Study")
    sh.CreateItem(study, node)
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    before = slicer.util.arrayFromVolume(node).copy()
    n_nodes = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")

    out = bridge.simulate_low_dose_node(node, dose_fraction=0.25, seed=1)

    assert out.GetID() != node.GetID()
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_nodes + 1
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)  # input untouched
    assert bridge.volume_from_node(out).same_geometry(bridge.volume_from_node(node))
    diff = slicer.util.arrayFromVolume(out) - before
    assert 1.0 < diff.std() < 200.0
    assert out.GetName() == "CT_small_dose25pct"
    assert out.GetAttribute("QHQGAN.task") == "simulate-low-dose"
    assert out.GetAttribute("QHQGAN.dose_fraction") == "0.25"
    assert out.GetParentTransformNode() is transform
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study
    display = out.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == bridge.CT_WINDOW


def test_degrade_resolution_node_keeps_physical_extent(mrml_scene):
    vol = Volume(ct_phantom((3, 40, 56)), (0.7, 0.9, 2.5), (-12.0, 3.5, -40.0), oblique_direction(5))
    node = bridge.node_from_volume(vol, mrml_scene, "phantom")
    out = bridge.degrade_resolution_node(node, scale=2)
    low = bridge.volume_from_node(out)
    np.testing.assert_allclose(low.spacing, (1.4, 1.8, 2.5), atol=1e-6)
    lo_a, hi_a = vol.physical_extent()
    lo_b, hi_b = low.physical_extent()
    np.testing.assert_allclose(lo_a, lo_b, atol=1e-5)
    np.testing.assert_allclose(hi_a, hi_b, atol=1e-5)


def test_label_maps_are_refused(mrml_scene):
    label = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "seg")
    slicer.util.updateVolumeFromArray(label, np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(TypeError, match="label map"):
        bridge.volume_from_node(label)


def _textured(task):
    import torch

    from QHQGANLib.nn.enhancer import HQGANGenerator

    torch.manual_seed(0)
    g = HQGANGenerator(task=task, width=4, n_qubits=3, n_layers=1)
    torch.nn.init.normal_(g.head.weight, std=0.05)
    return g.eval()


def test_enhance_and_super_resolve_nodes_oblique_non_square(mrml_scene):
    vol = Volume(ct_phantom((3, 40, 56)), (0.7, 0.9, 2.5), (-12.0, 3.5, -40.0), oblique_direction(9))
    node = bridge.node_from_volume(vol, mrml_scene, "phantom")
    before = slicer.util.arrayFromVolume(node).copy()

    enhanced = bridge.enhance_node(node, model=_textured("enhance"))
    assert bridge.volume_from_node(enhanced).same_geometry(vol, tol=1e-6)
    assert enhanced.GetAttribute("QHQGAN.task") == "enhance"
    assert enhanced.GetName() == "phantom_enhanced"

    sr = bridge.super_resolve_node(node, 2, model=_textured("super-resolve"))
    high = bridge.volume_from_node(sr)
    assert high.shape == (3, 80, 112)
    np.testing.assert_allclose(high.spacing, (0.35, 0.45, 2.5), atol=1e-9)
    np.testing.assert_allclose(high.direction, vol.direction, atol=1e-9)  # oblique axes kept
    for a, b in zip(vol.physical_extent(), high.physical_extent()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
