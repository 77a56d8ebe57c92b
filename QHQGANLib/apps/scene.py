"""The bridge between QHQGANLib volumes and 3D Slicer's MRML scene.

It imports only ``slicer`` (the MRML classes and ``slicer.util``), vtk and numpy,
and only inside the functions, so it works in Slicer's Python console and in
plain Python with the ``slicer-core`` wheels. Every function leaves its input
node untouched and returns a NEW ``vtkMRMLScalarVolumeNode`` in the input's
scene: with exact IJK-to-RAS geometry, under the same parent transform, with a
display node in a CT window, placed under the input's study in the subject
hierarchy when it has one, and with node attributes recording what made it.

Console usage (Slicer's Python console)::

    >>> from QHQGANLib import scene
    >>> ct = slicer.util.getNode("CTChest")
    >>> low = scene.simulate_low_dose_node(ct, dose_fraction=0.25, seed=0)
    >>> slicer.util.setSliceViewerLayers(background=low)
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..core.constants import CT_DISPLAY_WINDOW, __version__
from ..core.kinds import default_model
from ..core.naming import ATTRIBUTE_PREFIX, is_synthetic_node, output_name, synthetic_attributes
from ..core.pixel_types import SOURCE_PIXEL_TYPE, choose_pixel_type
from ..core.volume import Volume

#: The LPS <-> RAS flip (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Default display window (width, level) in HU for new CT nodes: a soft-tissue window.
CT_WINDOW = CT_DISPLAY_WINDOW


def volume_from_node(node) -> Volume:
    """The node's voxels (copied) and geometry as a :class:`Volume` (LPS, in the node's own frame).

    A parent transform is not applied: results go back under the same transform.
    """
    import slicer.util

    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise TypeError(f"expected a scalar volume node, got {node.GetClassName() if node else None}")
    if node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLSegmentationNode"):
        raise TypeError(f"{node.GetName()} is a label map, not a CT volume")
    if node.GetImageData() is None:
        raise ValueError(f"{node.GetName()} holds no image data")
    stored = slicer.util.arrayFromVolume(node)
    array = np.array(stored, dtype=np.float32, copy=True)
    spacing, origin, direction = node_geometry(node)
    metadata = {"source": f"MRML node {node.GetName()} ({node.GetID()})", "format": "mrml",
                SOURCE_PIXEL_TYPE: stored.dtype.name}  # an integer node gives an int16 result (core.pixel_types)
    if is_synthetic_node(node):
        metadata["synthetic"] = True  # the mark travels into every result computed from it
    return Volume(array, spacing, origin, direction, metadata)


def node_geometry(node) -> Tuple[Tuple[float, ...], Tuple[float, ...], np.ndarray]:
    """``(spacing, origin, direction)`` of a volume node's grid in LPS, as :class:`Volume` holds them (its own
    frame: a parent transform is not applied). No voxel is read."""
    import slicer.util
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_lps = LPS_TO_RAS @ slicer.util.arrayFromVTKMatrix(matrix)
    linear = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return tuple(float(v) for v in spacing), tuple(float(v) for v in ijk_to_lps[:3, 3]), linear / spacing


def node_from_volume(volume: Volume, scene, name: str, reference_node=None,
                     attributes: Optional[Dict[str, Any]] = None,
                     window: Tuple[float, float] = CT_WINDOW):
    """Add ``volume`` to ``scene`` as a new scalar volume node and return it.

    With ``reference_node``, the new node goes under its parent transform and
    beside it (its study) in the subject hierarchy. The node's scalar type follows the rule of
    :mod:`QHQGANLib.core.pixel_types`: int16 (whole HU) when the volume's source stored integers
    and the values fit, float32 otherwise. A node is one regular grid: a volume whose slices keep
    uneven positions (:mod:`QHQGANLib.core.slice_positions`) is refused with what helps.
    """
    import slicer.util

    from ..core.slice_positions import require_regular_grid

    require_regular_grid(volume, "a Slicer volume node")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras_matrix()))
    integer = choose_pixel_type(volume)[0] == "int16"
    slicer.util.updateVolumeFromArray(node, np.rint(volume.array).astype(np.int16) if integer else volume.array)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(*window)
    attributes = dict(attributes or {})
    if volume.metadata.get("synthetic"):
        attributes.update(synthetic_attributes())  # a result of a synthetic input is synthetic
    for key, value in attributes.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    node.SetAttribute(ATTRIBUTE_PREFIX + "version", __version__)
    if reference_node is not None:
        transform = reference_node.GetParentTransformNode()
        if transform is not None:
            node.SetAndObserveTransformNodeID(transform.GetID())
        _place_beside(node, reference_node)
    return node


def labelmap_node_from_volume(volume: Volume, scene, name: str, attributes: Optional[Dict[str, Any]] = None):
    """Add ``volume`` (whole label values) to ``scene`` as a new ``vtkMRMLLabelMapVolumeNode`` (int16), with the
    QHQGAN attributes; a synthetic volume's label map is marked synthetic too. Placed nowhere in particular
    (see :func:`place_at_top`)."""
    import slicer.util

    from ..core.slice_positions import require_regular_grid

    require_regular_grid(volume, "a Slicer label map node")
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras_matrix()))
    slicer.util.updateVolumeFromArray(node, np.rint(volume.array).astype(np.int16))
    node.CreateDefaultDisplayNodes()
    attributes = dict(attributes or {})
    if volume.metadata.get("synthetic"):
        attributes.update(synthetic_attributes())
    for key, value in attributes.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    node.SetAttribute(ATTRIBUTE_PREFIX + "version", __version__)
    return node


def place_at_top(node) -> None:
    """File ``node`` directly under the scene in the subject hierarchy: under no patient and no study (where
    synthetic results go: none is any real patient's data)."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if sh is None:
        return
    item = sh.GetItemByDataNode(node)
    if not item:
        sh.CreateItem(sh.GetSceneItemID(), node)
    elif sh.GetItemParent(item) != sh.GetSceneItemID():
        sh.SetItemParent(item, sh.GetSceneItemID())


def _place_beside(node, reference_node) -> None:
    """Put ``node`` under the subject-hierarchy parent (study) of ``reference_node``."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if sh is None:
        return
    ref_item = sh.GetItemByDataNode(reference_node)
    if not ref_item:
        return
    parent = sh.GetItemParent(ref_item)
    if not parent or parent == sh.GetSceneItemID():
        return
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent)
    else:
        sh.CreateItem(parent, node)


#: Subject-hierarchy levels and the UID name Slicer's DICOM module uses
#: (``vtkMRMLSubjectHierarchyConstants``: GetDICOMLevelPatient, GetDICOMLevelStudy, GetDICOMUIDName).
PATIENT_LEVEL, STUDY_LEVEL, DICOM_UID = "Patient", "Study", "DICOM"


def subject_placement(node) -> Dict[str, Tuple[int, str, str]]:
    """Where ``node`` is filed in the subject hierarchy: ``{"Patient": (item, name, DICOM UID), "Study": ...}``.

    Only the levels it sits under are given (empty when the node is not filed under a patient or
    study, or the scene has no subject hierarchy). For DICOM-loaded data the UID is the PatientID
    of the patient item and the StudyInstanceUID of the study item (Slicer's DICOM plugins set
    them); otherwise "".
    """
    import slicer

    scene = node.GetScene() if node is not None else None
    if scene is None:
        return {}
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    if not item:
        return {}
    placement = {}
    for level in (PATIENT_LEVEL, STUDY_LEVEL):
        ancestor = sh.GetItemAncestorAtLevel(item, level)
        if ancestor:
            placement[level] = (int(ancestor), sh.GetItemName(ancestor) or "", sh.GetItemUID(ancestor, DICOM_UID) or "")
    return placement


def dicom_series_uid(node) -> str:
    """The DICOM SeriesInstanceUID of a DICOM-loaded volume ("" when unknown)."""
    import slicer

    scene = node.GetScene() if node is not None else None
    if scene is None:
        return ""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node) if sh is not None else 0
    return (sh.GetItemUID(item, DICOM_UID) or "") if item else ""


def placement_mismatch(target_node, input_node) -> Optional[str]:
    """Why ``target_node`` is filed under another patient or study than ``input_node`` (None: it is not).

    A level counts when the target sits under it: the input must sit under the same item, or
    under one with the same DICOM UID (the same patient or study loaded twice).
    """
    target = subject_placement(target_node)
    source = subject_placement(input_node) if input_node is not None else {}
    for level in (PATIENT_LEVEL, STUDY_LEVEL):
        if level not in target:
            continue
        item, name, uid = target[level]
        other = source.get(level)
        same = other is not None and (other[0] == item or (uid and other[2] == uid))
        if not same:
            where = f"'{other[1]}'" if other is not None else "none"
            return (f"{target_node.GetName()} is filed under {level.lower()} '{name}', "
                    f"the input under {where}")
    return None


def _output_name(input_node, task: str, **kwargs) -> str:
    return output_name(task, input_node.GetName(), **kwargs)


def simulate_low_dose_node(input_node, dose_fraction: float = 0.25, seed: Optional[int] = 0,
                           name: Optional[str] = None, progress=None, cancel=None, **options):
    """A new node holding a simulated lower-dose acquisition of ``input_node``.

    ``options`` go to :func:`QHQGANLib.physics.lowdose.simulate_low_dose`.
    """
    from ..physics.lowdose import simulate_low_dose

    volume = volume_from_node(input_node)
    low = simulate_low_dose(volume, dose_fraction, seed=seed, progress=progress, cancel=cancel, **options)
    attributes = {"task": "simulate-low-dose", "dose_fraction": dose_fraction, "seed": seed,
                  "source_node": input_node.GetID(), **{k: v for k, v in options.items()}}
    return node_from_volume(low, input_node.GetScene(),
                            name or _output_name(input_node, "simulate-low-dose", dose=dose_fraction),
                            reference_node=input_node, attributes=attributes)


def degrade_resolution_node(input_node, scale: int = 2, name: Optional[str] = None, **options):
    """A new node holding ``input_node`` blurred and downsampled in-plane by ``scale``."""
    from ..physics.resolution import degrade_resolution

    volume = volume_from_node(input_node)
    low = degrade_resolution(volume, scale, **options)
    attributes = {"task": "degrade-resolution", "scale": scale, "source_node": input_node.GetID()}
    return node_from_volume(low, input_node.GetScene(),
                            name or _output_name(input_node, "degrade-resolution", scale=scale),
                            reference_node=input_node, attributes=attributes)


def _model_label(model) -> str:
    if isinstance(model, str):
        return model
    card = getattr(model, "card", None)
    return card.get("name", type(model).__name__) if isinstance(card, dict) else type(model).__name__


def enhance_node(input_node, model=default_model("enhance"), name: Optional[str] = None, progress=None, cancel=None,
                 **options):
    """A new node: ``input_node`` enhanced by ``model`` (same grid). ``options`` go to
    :func:`QHQGANLib.tasks.enhance.enhance` (``device``, ``quantum_backend``, ``tile_size``, ``overlap``, ``tile_batch``)."""
    from ..tasks.enhance import enhance

    volume = volume_from_node(input_node)
    out = enhance(volume, model=model, progress=progress, cancel=cancel, **options)
    attributes = {"task": "enhance", "model": _model_label(model), "source_node": input_node.GetID(),
                  **{k: v for k, v in options.items() if v is not None}}
    return node_from_volume(out, input_node.GetScene(),
                            name or _output_name(input_node, "enhance"),
                            reference_node=input_node, attributes=attributes)


def super_resolve_node(input_node, scale: int = 2, model=None, name: Optional[str] = None, progress=None,
                       cancel=None, **options):
    """A new node: ``input_node`` super-resolved x``scale`` in-plane (spacing / scale, same region), or
    along the slices with ``axis="z"`` (thinner slices, same region; named ``<input>_SRz<scale>``)."""
    from ..tasks.enhance import super_resolve

    axis = options.get("axis", "in-plane")
    volume = volume_from_node(input_node)
    out = super_resolve(volume, scale, model=model, progress=progress, cancel=cancel, **options)
    label = model or default_model("super-resolve", scale, axis=axis)
    attributes = {"task": "super-resolve", "scale": scale, "model": _model_label(label),
                  "source_node": input_node.GetID(), **{k: v for k, v in options.items() if v is not None}}
    return node_from_volume(out, input_node.GetScene(),
                            name or _output_name(input_node, "super-resolve", scale=scale, axis=axis),
                            reference_node=input_node, attributes=attributes)


def synthesize_nodes(scene_or_node, n: int = 8, seed: int = 0, model=default_model("synthesize"),
                     name: Optional[str] = None, progress=None, cancel=None, **options):
    """A new node of ``n`` synthetic slices in a scene, named and marked synthetic (:mod:`QHQGANLib.core.naming`).

    ``scene_or_node`` is the scene, or any node of it: no voxel of a node is used, no identifier
    copied, and the result is placed at the top of the subject hierarchy, never under a real
    patient's study. ``options`` go to :func:`QHQGANLib.tasks.synthesize.synthesize`.
    """
    from ..tasks.synthesize import synthesize

    scene = scene_or_node.GetScene() if hasattr(scene_or_node, "GetScene") else scene_or_node
    volume = synthesize(model, n=n, seed=seed, progress=progress, cancel=cancel, **options)
    label = volume.metadata.get("model", _model_label(model))
    attributes = {"task": "synthesize", **synthetic_attributes(), "model": label, "seed": seed, "n_samples": n}
    return node_from_volume(volume, scene, name or output_name("synthesize", model=label, seed=seed),
                            attributes=attributes)


def show_side_by_side(input_node, output_node, views, orientation: str = "Axial") -> None:
    """Input and output in two linked slice views, same orientation, same window/level.

    ``views`` is ``[(slice node, slice composite node), (slice node, slice composite node)]``
    (in Slicer: those of the Red and Yellow views). Slicer's side-by-side layout names
    ``orientation Axial`` with ``action="default"`` (``Libs/MRML/Logic/vtkMRMLLayoutLogic.cxx``,
    5.8 to main): it applies only to a view created by the layout, so a Yellow view that existed
    before stays sagittal; the orientation is therefore set here. The output's display takes
    the input's window and level, so the two look alike where they agree.
    """
    for (slice_node, composite), node in zip(views, (input_node, output_node)):
        composite.SetBackgroundVolumeID(node.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLinkedControl(True)
        if slice_node is not None and slice_node.GetOrientation() != orientation:
            slice_node.SetOrientation(orientation)
    match_window_level(input_node, output_node)


def match_window_level(reference_node, node) -> None:
    """Give ``node``'s display the window and level of ``reference_node``'s (no-op without display nodes)."""
    reference, display = reference_node.GetDisplayNode(), node.GetDisplayNode()
    if reference is None or display is None or not hasattr(reference, "GetWindow"):
        return
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(reference.GetWindow(), reference.GetLevel())
