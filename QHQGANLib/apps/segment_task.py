"""The panel's tasks on segments (issue #30 item 4): "Insert lesion" and "Synthesize from segmentation".

Like :class:`~QHQGANLib.apps.node_task.NodeTask`, a :class:`SegmentNodeTask` reads its inputs from the
scene when it starts (on the caller's thread: :mod:`QHQGANLib.apps.segments` exports the segment or the
segmentation onto its grid), writes them to a temporary folder, and runs the ``qhqgan`` command in a child
process (``insert-lesion CT MASK OUT --label-out LABEL``, ``synthesize-from-labels LABELS OUT --samples N``)
with progress and cancel; the scene is not touched until :meth:`SegmentNodeTask.finish` succeeds, and the
folder is removed in every case.

Every result is a NEW node, marked synthetic (name ``SYNTHETIC_...``, attribute ``QHQGAN.synthetic``, as
:mod:`QHQGANLib.core.naming` says) and filed directly under the scene in the subject hierarchy, under no
patient and no study: a real scan with a lesion its patient does not have is no image of that patient. An
existing output volume is refused before anything runs (:func:`~QHQGANLib.apps.node_task.output_refusal`).
The CT, the segmentation and the label map are never modified.

* **Insert lesion**: the CT node and the segment (a segmentation node and a segment ID, or a labelmap
  node); the results are the image (on the CT's grid, under the CT's parent transform, so it overlays the
  CT) and the lesion's label map beside it (a labelmap node, ``..._label``).
* **Synthesize from segmentation**: a segmentation node (segments named after tissue classes) or a
  labelmap node of class codes; ``n_samples`` new volumes on its grid. Refused before anything runs when
  no label-synthesis model is installed and none is given
  (:data:`~QHQGANLib.apps.request.NO_LABEL_MODEL`).

Console usage (Slicer's Python console)::

    >>> from QHQGANLib.apps.background import TaskRequest, wait
    >>> from QHQGANLib.apps.segment_task import SegmentNodeTask
    >>> seg = slicer.util.getNode("Segmentation")
    >>> job = SegmentNodeTask(TaskRequest("insert-lesion", lesion_kind="cyst"), slicer.util.getNode("CT"),
    ...                       segmentation=seg, segment_id=seg.GetSegmentation().GetNthSegmentID(0))
    >>> wait(job); image = job.finish(); job.nodes          # [image, its label map]
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..core.kinds import LABEL_SYNTH_TASK, LESION_TASK, SEGMENT_TASKS, models_for_task
from ..core.naming import SYNTHETIC_WORD, output_file_name
from .node_task import (ChildProcess, OutputRefused, TemporaryWorkspace, check_output_size, output_refusal,
                        slicer_temporary_folder)
from .request import NO_LABEL_MODEL, TaskRequest, build_command, default_output_name
from .runner import BackgroundTask, TaskFailed

#: The temporary files of the worker (synthetic outputs say so in their names: the command requires it).
MASK_FILE = "mask.nrrd"
LABEL_FILE = f"output_{SYNTHETIC_WORD}_label.nrrd"


def check_label_model(request: TaskRequest) -> None:
    """Refuse synthesis from labels without a model: none named and none installed (:data:`NO_LABEL_MODEL`)."""
    if request.task == LABEL_SYNTH_TASK and not request.model and not models_for_task(LABEL_SYNTH_TASK):
        raise ValueError(NO_LABEL_MODEL)


class SegmentNodeTask(ChildProcess):
    """A segment task running in the background; :meth:`finish` adds the new synthetic nodes (module doc).

    ``input_node``: the CT (Insert lesion; ignored by synthesis); ``segmentation``: a segmentation node or
    a labelmap node; ``segment_id``: the segment of a segmentation node where the lesion goes.
    """

    def __init__(self, request: TaskRequest, input_node=None, segmentation=None, segment_id: Optional[str] = None,
                 scene=None, python: Optional[str] = None, output_node=None):
        if request.task not in SEGMENT_TASKS:
            raise ValueError(f"{request.task} is not a task on segments ({', '.join(SEGMENT_TASKS)})")
        refusal = output_refusal(output_node, input_node, request.task)
        if refusal:
            raise OutputRefused(refusal)
        if segmentation is None:
            raise ValueError(f"the {request.task} task needs a segmentation or a label map")
        check_label_model(request)
        self.request = request
        self.input_node = input_node if request.task == LESION_TASK else None
        self.segmentation = segmentation
        self.segment_id = segment_id
        self.scene = scene if scene is not None else segmentation.GetScene()
        if self.scene is None:
            raise ValueError("no MRML scene: the segmentation is in none")
        self.output_node = None  # always new nodes
        #: the new nodes after :meth:`finish`: [image, label map] or the samples
        self.nodes: List = []
        self.note = ""
        self.workspace = TemporaryWorkspace(output_name=output_file_name(request.task),
                                            parent=slicer_temporary_folder())
        inputs = self._read_inputs()  # before the folder exists: a refusal leaves nothing behind
        self.workspace.__enter__()
        try:
            argv = self._write_inputs(inputs, python)
            self.task = BackgroundTask(argv)
        except BaseException:
            self.workspace.cleanup()
            raise

    # --- the inputs, read on the caller's thread --------------------------------------------------
    def _read_inputs(self) -> dict:
        from ..core.io import DEFAULT_MAX_VOXELS
        from ..core.volume import Volume
        from .scene import volume_from_node
        from .segments import lesion_mask, segment_choices, tissue_label_map

        if self.request.task == LESION_TASK:
            names = dict(segment_choices(self.segmentation))
            if self.segment_id is None and len(names) == 1:
                self.segment_id = next(iter(names))
            mask = lesion_mask(self.input_node, self.segmentation, self.segment_id)
            check_output_size(self.request, self.input_node)
            ct = volume_from_node(self.input_node)
            self.segment_name = names.get(self.segment_id or "", "") if names else "non-zero voxels"
            self.frame = self.input_node
            return {"ct": ct, "mask": Volume(mask.astype("float32"), ct.spacing, ct.origin, ct.direction)}
        labels, self.frame = tissue_label_map(self.segmentation)
        if labels.array.size > DEFAULT_MAX_VOXELS:
            raise ValueError(f"the label map has {labels.array.size:,} voxels, above the limit of "
                             f"{DEFAULT_MAX_VOXELS:,}: crop it first")
        self.segment_name = ""
        return {"labels": labels}

    def _write_inputs(self, inputs: dict, python: Optional[str]) -> List[str]:
        from ..core.io import write_volume

        ws = self.workspace
        if self.request.task == LESION_TASK:
            ws.write_input(inputs["ct"])
            mask_path = write_volume(inputs["mask"], ws.folder / MASK_FILE, overwrite=True, compress=False,
                                     pixel_type="int16")
            return build_command(self.request, ws.input_path, ws.output_path, python, mask_path=mask_path,
                                 label_path=self.label_path)
        write_volume(inputs["labels"], ws.input_path, overwrite=True, compress=False, pixel_type="int16")
        return build_command(self.request, ws.input_path, ws.output_path, python)

    @property
    def label_path(self) -> Path:
        return self.workspace.folder / LABEL_FILE

    def _output_paths(self) -> List[Path]:
        if self.request.task == LESION_TASK:
            return [self.workspace.output_path, self.label_path]
        from .label_commands import sample_paths

        return sample_paths(self.workspace.output_path, self.request.n_samples)

    # --- the child (poll, running, cancel: node_task.ChildProcess) ------------------------------------
    def finish(self):
        """The first new node (the image; the first sample); all of them in :attr:`nodes`.

        Raises OperationCancelled / TaskFailed like :meth:`NodeTask.finish`; cleans up either way. The
        nodes are added together or not at all.
        """
        from ..core.io import read_volume

        try:
            self.task.finish()
            paths = self._output_paths()
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise TaskFailed(f"the task finished without writing {', '.join(missing)}")
            volumes = [read_volume(p, force=True) for p in paths]
        finally:
            self.workspace.cleanup()
        made: List = []
        try:
            self._add_nodes(volumes, made)
        except BaseException:
            for node in made:
                if node.GetScene() is not None:
                    node.GetScene().RemoveNode(node)
            raise
        self.nodes = made
        return made[0]

    def _add_nodes(self, volumes, made: List) -> None:
        from .scene import labelmap_node_from_volume, node_from_volume, place_at_top

        request, scene = self.request, self.scene
        attributes = dict(request.attributes())
        name = default_output_name(request)
        if request.task == LESION_TASK:
            image, label = volumes
            attributes.update(source_node=self.input_node.GetID(), mask_node=self.segmentation.GetID())
            if self.segment_name:
                attributes["segment"] = self.segment_name
            made.append(node_from_volume(image, scene, name, attributes=attributes))
            label.metadata["synthetic"] = True  # the label of a synthetic image
            made.append(labelmap_node_from_volume(label, scene, f"{made[0].GetName()}_label",
                                                  attributes={**attributes, "label_of": made[0].GetID()}))
        else:
            attributes["labels_node"] = self.segmentation.GetID()
            for i, volume in enumerate(volumes):
                made.append(node_from_volume(volume, scene, f"{name}_sample{i}",
                                             attributes={**attributes, "sample": i}))
        transform = self.frame.GetTransformNodeID() if self.frame is not None else None
        for node in made:
            if transform:  # in the frame of the grid it was computed on (the CT's, the label map's)
                node.SetAndObserveTransformNodeID(transform)
            place_at_top(node)


def start_segment_task(request: TaskRequest, input_node=None, **kwargs) -> SegmentNodeTask:
    """Start a segment task (module doc) in a child process and return at once."""
    return SegmentNodeTask(request, input_node, **kwargs)
