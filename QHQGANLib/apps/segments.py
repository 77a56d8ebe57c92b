"""Segments and label maps of a Slicer scene as arrays on a grid: what the panel's "Insert lesion" and
"Synthesize from segmentation" read (issue #30 item 4).

* **A segmentation node** (e.g. painted in the Segment Editor): each segment is exported with Slicer's own
  ``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentationNode, segmentIDs,
  labelmapNode, referenceVolumeNode, extentComputationMode)`` onto a reference grid: the CT for a lesion (a
  segment painted on another grid, or under another transform, lands on the CT's voxels); the
  segmentation's own reference geometry for synthesis (its reference volume, or, when it has none, the grid
  of all its segments exported together). One segment at a time, so nothing depends on the label values
  Slicer gives merged segments.
* **A labelmap node**: its voxels, on its own grid. For a lesion on another grid than the CT's (or under
  another transform) it goes through a temporary segmentation
  (``ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode)``) and the export above.

The temporary nodes are removed in every case; no input node is modified. Works in Slicer and in plain
Python with the slicer-core wheels (the converter rules of a segmentation are registered by Slicer's
Segmentations module; the tests register them).

Segment names become tissue classes (:data:`QHQGANLib.physics.tissue_classes.TISSUE_CLASSES`) by name: the
class's own name, whatever the case and with ``_`` or ``-`` for spaces (``lung``, ``Soft_tissue``, ``bone``,
``fat``, ``air inside the body``, ...), or one of :data:`CLASS_ALIASES`; any other name is refused, listed.
Voxels in no segment are class 0, outside the body: paint the whole body. Where segments overlap, the later
segment (lower in the Segment Editor's list) wins.

Console usage (Slicer's Python console)::

    >>> from QHQGANLib.apps.segments import segment_choices, tissue_label_map
    >>> segment_choices(slicer.util.getNode("Segmentation"))        # [(segment ID, name), ...]
    >>> labels, frame = tissue_label_map(slicer.util.getNode("Segmentation"))
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..core.volume import Volume
from ..physics.tissue_classes import AIR, BONE, ENHANCED, LUNG, OUTSIDE, TISSUE_CLASSES, class_codes

SEGMENTATION_CLASS = "vtkMRMLSegmentationNode"
LABELMAP_CLASS = "vtkMRMLLabelMapVolumeNode"
#: Segment names taken for a class besides the class names themselves (normalised: lower case, single spaces).
CLASS_ALIASES: Dict[str, int] = {"outside": OUTSIDE, "background": OUTSIDE, "air": AIR, "lungs": LUNG,
                                 "bones": BONE, "vessels": ENHANCED, "enhanced": ENHANCED}
#: Grids that differ by less than this (mm, in the IJK-to-RAS matrix) are the same grid.
GRID_TOLERANCE_MM = 1e-4


# ---------------------------------------------------------------------------
# segment names -> tissue classes (no Slicer needed)
# ---------------------------------------------------------------------------
def _normalized(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def tissue_class_of(name: str) -> Optional[int]:
    """The tissue class a segment called ``name`` stands for (None: no class has that name)."""
    key = _normalized(name)
    for code, class_name in TISSUE_CLASSES.items():
        if key == class_name:
            return code
    return CLASS_ALIASES.get(key)


def accepted_names() -> str:
    """The segment names the mapping takes, for messages."""
    return ", ".join(f"'{name}'" for name in TISSUE_CLASSES.values()) + " (or " + ", ".join(
        f"'{alias}'" for alias in CLASS_ALIASES) + ")"


def segment_classes(names: Dict[str, str]) -> Dict[str, int]:
    """{segment ID: tissue class} for {segment ID: name}; a ValueError listing every name that is no class."""
    unmapped = [name for name in names.values() if tissue_class_of(name) is None]
    if unmapped:
        raise ValueError(f"segment name(s) {', '.join(repr(n) for n in unmapped)} match no tissue class: name each "
                         f"segment after its class in the Segment Editor: {accepted_names()}")
    return {segment_id: tissue_class_of(name) for segment_id, name in names.items()}


# ---------------------------------------------------------------------------
# nodes
# ---------------------------------------------------------------------------
def is_segmentation(node) -> bool:
    return node is not None and node.IsA(SEGMENTATION_CLASS)


def is_labelmap(node) -> bool:
    return node is not None and node.IsA(LABELMAP_CLASS)


def segment_ids(node) -> List[str]:
    """The segment IDs of a segmentation node, in its order."""
    import vtk

    ids = vtk.vtkStringArray()
    node.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(i) for i in range(ids.GetNumberOfValues())]


def segment_choices(node) -> List[Tuple[str, str]]:
    """``(segment ID, name)`` of each segment of a segmentation node, in its order ([] for any other node)."""
    if not is_segmentation(node):
        return []
    segmentation = node.GetSegmentation()
    return [(segment_id, segmentation.GetSegment(segment_id).GetName()) for segment_id in segment_ids(node)]


def _logic():
    """Slicer's segmentations logic: its export and import functions are static methods of the class."""
    import slicer

    modules = getattr(slicer, "modules", None)
    segmentations = getattr(modules, "segmentations", None) if modules is not None else None
    return segmentations.logic() if segmentations is not None else slicer.vtkSlicerSegmentationsModuleLogic


def _remove(node) -> None:
    """Remove a temporary node and its display nodes from its scene."""
    scene = node.GetScene() if node is not None else None
    if scene is None:
        return
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
        if hasattr(node, "GetNumberOfDisplayNodes") else []
    scene.RemoveNode(node)
    for display in displays:
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)


def same_grid(node, other) -> bool:
    """Whether two volume nodes have the same voxel grid (dimensions and IJK-to-RAS) and the same parent transform."""
    import slicer.util
    import vtk

    if node.GetImageData() is None or other.GetImageData() is None:
        return False
    if node.GetImageData().GetDimensions() != other.GetImageData().GetDimensions():
        return False
    if node.GetTransformNodeID() != other.GetTransformNodeID():
        return False
    matrices = []
    for one in (node, other):
        matrix = vtk.vtkMatrix4x4()
        one.GetIJKToRASMatrix(matrix)
        matrices.append(slicer.util.arrayFromVTKMatrix(matrix))
    return bool(np.allclose(matrices[0], matrices[1], atol=GRID_TOLERANCE_MM))


def _export(segmentation_node, ids: Iterable[str], reference, keep: bool = False):
    """The segments ``ids`` exported onto ``reference``'s grid (its whole extent): the label values as an array
    (z, y, x). ``reference=None``: onto the segmentation's reference geometry (or its segments' extent), and
    with ``keep=True`` the temporary labelmap node is returned instead (the caller removes it)."""
    import slicer
    import slicer.util
    import vtk

    scene = segmentation_node.GetScene()
    target = scene.AddNewNodeByClass(LABELMAP_CLASS, scene.GenerateUniqueName("QHQGAN_temporary_export"))
    try:
        names = vtk.vtkStringArray()
        for segment_id in ids:
            names.InsertNextValue(segment_id)
        done = _logic().ExportSegmentsToLabelmapNode(segmentation_node, names, target, reference,
                                                      slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not done or target.GetImageData() is None:
            where = f"onto the grid of {reference.GetName()}" if reference is not None else ""
            raise ValueError(f"Slicer could not export the segments of {segmentation_node.GetName()} {where}".strip())
        if reference is not None and target.GetImageData().GetDimensions() != reference.GetImageData().GetDimensions():
            raise ValueError(f"the segments of {segmentation_node.GetName()} were exported on another grid than "
                             f"{reference.GetName()}'s")
        if keep:
            return target
        return np.array(slicer.util.arrayFromVolume(target), copy=True)
    finally:
        if not keep:
            _remove(target)


def _labelmap_on_grid(labelmap, reference) -> np.ndarray:
    """A labelmap node's values on ``reference``'s grid (nearest neighbour, through a temporary segmentation)."""
    import slicer.util

    if same_grid(labelmap, reference):
        return np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
    scene = labelmap.GetScene()
    temporary = scene.AddNewNodeByClass(SEGMENTATION_CLASS, scene.GenerateUniqueName("QHQGAN_temporary_segments"))
    try:
        if not _logic().ImportLabelmapToSegmentationNode(labelmap, temporary):
            raise ValueError(f"Slicer could not read the label map {labelmap.GetName()} as segments")
        ids = segment_ids(temporary)
        if not ids:
            return np.zeros(tuple(reversed(reference.GetImageData().GetDimensions())), np.int16)
        return _export(temporary, ids, reference)
    finally:
        _remove(temporary)


def lesion_mask(ct_node, source, segment_id: Optional[str] = None) -> np.ndarray:
    """Where the lesion goes, as booleans (z, y, x) on ``ct_node``'s grid: the segment ``segment_id`` of a
    segmentation node (its only segment when it has one and none is named), or every non-zero voxel of a
    labelmap node. An empty result is refused with what to do."""
    if ct_node is None or ct_node.GetImageData() is None:
        raise ValueError("Insert lesion needs the CT volume the lesion goes into")
    if is_segmentation(source):
        choices = dict(segment_choices(source))
        if not choices:
            raise ValueError(f"{source.GetName()} has no segment: paint where the lesion goes in the Segment Editor")
        if segment_id is None and len(choices) == 1:
            segment_id = next(iter(choices))
        if not segment_id:
            raise ValueError(f"choose the segment of {source.GetName()} where the lesion goes")
        if segment_id not in choices:
            raise ValueError(f"{source.GetName()} has no segment {segment_id!r} (any more): choose another")
        what = f"the segment '{choices[segment_id]}' of {source.GetName()}"
        values = _export(source, [segment_id], ct_node)
    elif is_labelmap(source):
        what = f"the label map {source.GetName()}"
        values = _labelmap_on_grid(source, ct_node)
    else:
        raise ValueError("Insert lesion needs a segmentation (and one of its segments) or a label map where the "
                         "lesion goes")
    mask = values != 0
    if not mask.any():
        raise ValueError(f"{what} is empty on the grid of {ct_node.GetName()}: paint the region where the lesion goes "
                         "on the CT")
    return mask


def _grid_volume(node, array: np.ndarray, what: str) -> Volume:
    from .scene import node_geometry

    spacing, origin, direction = node_geometry(node)
    return Volume(np.asarray(array, np.float32), spacing, origin, direction, {"source": what, "format": "mrml"})


def tissue_label_map(source) -> Tuple[Volume, object]:
    """``(tissue classes as a Volume, the node whose grid and parent transform it has)`` of a labelmap node (its
    values are the class codes 0-6, as ``tissue_labels`` writes them) or a segmentation node (its segments by
    name, module doc; on its reference geometry). A name or value that is no class is refused, listed."""
    import slicer.util

    if is_labelmap(source):
        if source.GetImageData() is None:
            raise ValueError(f"the label map {source.GetName()} holds no image")
        values = slicer.util.arrayFromVolume(source)
        codes = class_codes(values, what=f"the label map {source.GetName()}")
        return _grid_volume(source, codes, f"label map {source.GetName()}"), source
    if not is_segmentation(source):
        raise ValueError("Synthesize from segmentation needs a segmentation or a label map of tissue classes")
    names = dict(segment_choices(source))
    if not names:
        raise ValueError(f"{source.GetName()} has no segment: paint the body's tissues (e.g. 'soft tissue', 'fat', "
                         "'lung', 'bone') in the Segment Editor")
    classes = segment_classes(names)
    reference = source.GetNodeReference(source.GetReferenceImageGeometryReferenceRole())
    temporary = None
    try:
        if reference is None or reference.GetImageData() is None:  # no reference volume: all segments' own grid
            reference = temporary = _export(source, list(names), None, keep=True)
        codes = np.zeros(tuple(reversed(reference.GetImageData().GetDimensions())), np.int16)
        for segment_id in names:  # in the segmentation's order: a later segment wins where they overlap
            codes[_export(source, [segment_id], reference) != 0] = classes[segment_id]
        volume = _grid_volume(reference, codes, f"segmentation {source.GetName()}")
        frame = reference if temporary is None else _TransformOf(temporary.GetTransformNodeID())
        return volume, frame
    finally:
        if temporary is not None:
            _remove(temporary)


class _TransformOf:
    """Stands for a removed temporary node: only the parent transform it had (what the results go under)."""

    def __init__(self, transform_id: Optional[str]):
        self._id = transform_id

    def GetTransformNodeID(self) -> Optional[str]:
        return self._id
