"""Tasks on MRML volume nodes: the input written to a temporary file, the output read back as a new node.

A :class:`NodeTask` runs its :class:`~QHQGANLib.apps.request.TaskRequest` in a child
process (:mod:`QHQGANLib.apps.runner`); the scene is not touched until it succeeds,
and the temporary folder is removed in every case. Works in Slicer and in plain
Python with the slicer-core wheels; the MRML bridge :mod:`QHQGANLib.apps.scene` is
imported only when a node is read or made.

The output goes into a NEW node, unless an existing output node is given; that one is checked
before the child starts (:func:`output_refusal`: only an earlier QHQGAN result of the same input,
filed under the same patient and study, may be replaced; :class:`OutputRefused` otherwise) and
captured then: :meth:`NodeTask.finish` writes into that very node, or, if it was deleted or changed
while the task ran, into a new node, with :attr:`NodeTask.note` saying why.

Console usage (Slicer's Python console)::

    >>> from QHQGANLib.apps.node_task import process_node
    >>> from QHQGANLib.apps.request import TaskRequest
    >>> low = process_node(slicer.util.getNode("CTChest"), TaskRequest("simulate-low-dose", dose=0.25))
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

from ..core.kinds import SEGMENT_TASKS
from ..core.naming import ATTRIBUTE_PREFIX, is_synthetic_node, output_file_name
from ..core.progress import ProgressCallback
from .request import TaskRequest, build_command, default_output_name, output_voxels
from .runner import TERMINATE_GRACE_S, BackgroundTask, TaskFailed, wait

PathLike = Union[str, "os.PathLike[str]"]


class TemporaryWorkspace:
    """A temporary folder holding ``input.nrrd`` and ``output.nrrd``, removed on exit in all cases.

    ``with TemporaryWorkspace(node) as ws:`` writes the node's volume (or a
    :class:`~QHQGANLib.core.volume.Volume`) to ``ws.input_path``.
    """

    def __init__(self, source=None, prefix: str = "qhqgan-", parent: Optional[PathLike] = None,
                 output_name: str = "output.nrrd"):
        self.source = source
        self.output_name = output_name
        self.prefix = prefix
        self.parent = parent
        self.folder: Optional[Path] = None

    def __enter__(self) -> "TemporaryWorkspace":
        self.folder = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self.parent))
        try:
            if self.source is not None:
                self.write_input(self.source)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    @property
    def input_path(self) -> Path:
        return self._path("input.nrrd")

    @property
    def output_path(self) -> Path:
        return self._path(self.output_name)

    def _path(self, name: str) -> Path:
        if self.folder is None:
            raise RuntimeError("the workspace is not open: use it in a with statement")
        return self.folder / name

    def write_input(self, source) -> Path:
        """Write a volume node or a Volume to :attr:`input_path`, uncompressed.

        The panel calls this on Slicer's GUI thread: gzip would cost seconds on a large CT
        for a file that lives a few minutes in a private temporary folder. An integer node is
        written as int16 when its values fit (:mod:`QHQGANLib.core.pixel_types`), so the worker
        knows its input stored integers and writes an int16 result (issue #29 item 8).
        """
        from ..core.io import write_volume
        from ..core.pixel_types import for_writing
        from ..core.volume import Volume

        volume = source if isinstance(source, Volume) else _volume_of_node(source)
        volume, pixel_type = for_writing(volume, "auto", note=False)
        return Path(write_volume(volume, self.input_path, overwrite=True, compress=False, pixel_type=pixel_type))

    def read_output(self):
        """The child's output as a :class:`~QHQGANLib.core.volume.Volume`."""
        from ..core.io import read_volume

        if not self.output_path.is_file():
            raise TaskFailed("the task finished without writing its output")
        return read_volume(self.output_path, force=True)

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _volume_of_node(node):
    from .scene import volume_from_node

    return volume_from_node(node)


def slicer_temporary_folder() -> Optional[str]:
    """Slicer's own temporary folder (``slicer.app.temporaryPath``, set in Slicer's Application settings)
    when running inside Slicer, so the patient data a task writes for its worker stays where the user put
    Slicer's temporary files (issue #29 item 8); None elsewhere (the system's temporary folder)."""
    import sys

    app = getattr(sys.modules.get("slicer"), "app", None)
    path = getattr(app, "temporaryPath", None) if app is not None else None
    return str(path) if path and os.path.isdir(str(path)) else None


class OutputRefused(ValueError):
    """The chosen output volume may not receive the result (raised before anything runs)."""


def check_output_size(request: TaskRequest, input_node) -> None:
    """Refuse, before anything runs, a result larger than the reader's voxel limit (it would be computed
    for minutes and then fail to load; issue #29 item 6), with what to change in the panel."""
    from ..core.io import DEFAULT_MAX_VOXELS

    image = input_node.GetImageData() if input_node is not None else None
    if image is None:
        raise ValueError("the input volume holds no image")
    n = output_voxels(request, image.GetDimensions())
    if n is not None and n > DEFAULT_MAX_VOXELS:
        advice = "a smaller scale or " if request.task == "super-resolve" else ""
        raise ValueError(f"the {request.task} result would have {n:,} voxels ({n * 4 / 2**30:.1f} GiB), above "
                         f"the limit of {DEFAULT_MAX_VOXELS:,}: choose {advice}a smaller region of the input "
                         "(Crop Volume module) first")


class ChildProcess:
    """What a panel task that runs one worker (``self.task``, a BackgroundTask) in a temporary folder
    (``self.workspace``) answers about its child: :class:`NodeTask` and ``segment_task.SegmentNodeTask``."""

    def poll(self):
        return self.task.poll()

    @property
    def running(self) -> bool:
        return self.task.running

    def cancel(self, grace: float = TERMINATE_GRACE_S) -> None:
        """End the child and its workers (returns at once; ``grace=0`` kills at once) and remove the folder."""
        try:
            self.task.cancel(grace)
        finally:
            self.workspace.cleanup()


class NodeTask(ChildProcess):
    """A task running in the background on a volume node; :meth:`finish` adds the output node.

    The scene is not touched until :meth:`finish` succeeds: a cancelled or failed
    task leaves it unchanged. The temporary folder is removed in all cases.

    ``output_node`` (optional) is the existing volume to replace: checked here, before the
    child starts (:class:`OutputRefused` with the reason), and remembered with its state, so
    that :meth:`finish` writes into this node and no other (never a selector's later value).
    """

    def __init__(self, request: TaskRequest, input_node=None, scene=None, name: Optional[str] = None,
                 python: Optional[str] = None, output_node=None):
        if request.task in SEGMENT_TASKS:
            raise ValueError(f"{request.task} reads a segment: run it with apps.segment_task.SegmentNodeTask "
                             "(apps.background.start_task)")
        refusal = output_refusal(output_node, input_node if request.needs_input else None, request.task)
        if refusal:
            raise OutputRefused(refusal)
        # synthesis uses no voxel of an input: it only names the scene, and the result is
        # neither named after it, placed under its patient, nor linked to it
        if not request.needs_input and input_node is not None:
            scene = scene if scene is not None else input_node.GetScene()
            input_node = None
        if request.needs_input and input_node is None:
            raise ValueError(f"the {request.task} task needs an input volume")
        if request.needs_input:
            check_output_size(request, input_node)
        self.request = request
        self.input_node = input_node
        self.scene = scene if scene is not None else (input_node.GetScene() if input_node is not None else None)
        if self.scene is None:
            raise ValueError("no MRML scene: give an input node or a scene")
        self.name = name or default_output_name(request, input_node)
        self.output_node = output_node
        self._output_state = target_state(output_node) if output_node is not None else None
        #: why the result went to a new node instead of :attr:`output_node` ("" when it did not)
        self.note = ""
        # synthetic images are marked synthetic in their names, files included (core.naming)
        self.workspace = TemporaryWorkspace(input_node if request.needs_input else None,
                                            output_name=output_file_name(request.task),
                                            parent=slicer_temporary_folder())
        self.workspace.__enter__()
        try:
            argv = build_command(request, self.workspace.input_path, self.workspace.output_path, python)
            self.task = BackgroundTask(argv)
        except BaseException:
            self.workspace.cleanup()
            raise

    def finish(self):
        """The output node (raises OperationCancelled / TaskFailed; cleans up either way).

        A new node, or the output node given at the start when it is still as it was then
        (otherwise a new node, and :attr:`note` says why).
        """
        from .scene import dicom_series_uid, node_from_volume

        try:
            self.task.finish()
            volume = self.workspace.read_output()
        finally:
            self.workspace.cleanup()
        attributes = dict(self.request.attributes())
        if self.input_node is not None:
            attributes["source_node"] = self.input_node.GetID()
            uid = dicom_series_uid(self.input_node)
            if uid:
                attributes["source_uid"] = uid
        node = node_from_volume(volume, self.scene, self.name, reference_node=self.input_node,
                                attributes=attributes)
        target = self.output_node
        if target is None:
            return node
        changed = target_change(target, self._output_state)
        if changed is None:  # still the node that was checked: the checks still hold
            changed = output_refusal(target, self.input_node, self.request.task)
        if changed:
            self.note = (f"{changed}: the result was not written into it; it is the new volume "
                         f"{node.GetName()}")
            return node
        return move_volume_into(node, target)


def start_node_task(request: TaskRequest, input_node=None, **kwargs) -> NodeTask:
    """Start ``request`` on ``input_node`` in a child process and return at once (see :class:`NodeTask`)."""
    return NodeTask(request, input_node, **kwargs)


def process_node(input_node, request: TaskRequest, progress: Optional[ProgressCallback] = None,
                 cancel=None, poll_interval: float = 0.1, idle=None, **kwargs):
    """Run ``request`` on ``input_node`` to the end and return the output node (blocking).

    ``idle`` runs between polls (in Slicer: ``slicer.app.processEvents``); ``output_node``
    (in ``kwargs``) is an existing volume to replace, checked before anything runs.
    """
    job = NodeTask(request, input_node, **kwargs)
    wait(job, progress, cancel, poll_interval, idle=idle)
    return job.finish()


def output_refusal(target_node, input_node=None, task: Optional[str] = None) -> Optional[str]:
    """Why the result of ``task`` on ``input_node`` must not replace ``target_node`` (None: it may).

    Checked before a task starts. None for no target (a new node). An existing volume may be
    replaced only when it is a result QHQGAN derived from the same input: its ``QHQGAN.task``
    attribute is set, its ``QHQGAN.source_node`` is the input's node ID (and its recorded
    DICOM series, where there is one, the input's), and it is filed under no other patient or
    study in the subject hierarchy. The tasks on segments (``insert-lesion``, ``synthesize-from-labels``)
    replace no volume at all: they always make new ones. A synthetic result (no input) replaces only an earlier
    synthetic result; a result of real CT never a synthetic one. An empty volume (no voxels),
    filed under no other patient or study, counts as a new node.
    """
    from .scene import dicom_series_uid, placement_mismatch

    if target_node is None:
        return None
    name = target_node.GetName()
    if task in SEGMENT_TASKS:  # synthetic results of a real scan or a painted map: never into an existing volume
        return (f"the {task} task always makes new synthetic volumes, outside any patient's study; it does not "
                f"write into {name}: choose 'Create new volume'")
    if target_node.GetScene() is None:
        return f"the output volume {name} is no longer in the scene"
    if input_node is not None and (target_node is input_node or target_node.GetID() == input_node.GetID()):
        return f"the output volume {name} is the input volume: choose 'Create new volume'"
    synthetic_result = task == "synthesize"
    mismatch = placement_mismatch(target_node, input_node if not synthetic_result else None)
    if mismatch:
        return f"{mismatch}: choose 'Create new volume'"
    made_by = target_node.GetAttribute(ATTRIBUTE_PREFIX + "task")
    if made_by is None:
        if target_node.GetImageData() is None:
            return None  # an empty volume: nothing of anybody's is replaced
        return (f"{name} is not a QHQGAN result: a result replaces only an earlier QHQGAN result of the "
                f"same input. Choose 'Create new volume'")
    if synthetic_result:
        if not is_synthetic_node(target_node):
            return f"the result is synthetic and {name} is not: choose 'Create new volume'"
        return None  # an earlier synthetic result (of no patient)
    if is_synthetic_node(target_node):
        return f"{name} is synthetic and the result is computed from real CT: choose 'Create new volume'"
    source = target_node.GetAttribute(ATTRIBUTE_PREFIX + "source_node")
    if input_node is None or not source or source != input_node.GetID():
        origin = None
        if source and target_node.GetScene() is not None:
            origin = target_node.GetScene().GetNodeByID(source)
        made_from = f"from {origin.GetName()}" if origin is not None else "from another volume"
        return (f"{name} was made {made_from}, not from "
                f"{input_node.GetName() if input_node is not None else 'this input'}: choose 'Create new volume'")
    recorded_uid = target_node.GetAttribute(ATTRIBUTE_PREFIX + "source_uid")
    if recorded_uid and recorded_uid != dicom_series_uid(input_node):
        return f"{name} was made from another DICOM series than {input_node.GetName()}: choose 'Create new volume'"
    return None


def target_state(node) -> tuple:
    """What must not change between the start and the end of a task for ``node`` to be written."""
    import vtk

    from .scene import subject_placement

    if node is None or node.GetScene() is None:
        return ("gone",)
    image = node.GetImageData()
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    attributes = tuple(sorted((n, node.GetAttribute(n)) for n in (node.GetAttributeNames() or ())
                              if n.startswith(ATTRIBUTE_PREFIX)))
    return (node.GetID(), node.GetName(), attributes,
            None if image is None else (image.__this__, image.GetMTime()),
            tuple(matrix.GetElement(i, j) for i in range(4) for j in range(4)),
            tuple(sorted(subject_placement(node).items())))


def target_change(node, before: tuple) -> Optional[str]:
    """Why ``node`` is not as :func:`target_state` recorded it (None: unchanged)."""
    if node is None or node.GetScene() is None:
        return "the chosen output volume was deleted while the task ran"
    if target_state(node) != before:
        return f"the chosen output volume {node.GetName()} was changed while the task ran"
    return None


def move_refusal(source_node, target_node, input_node=None) -> Optional[str]:
    """Why the new output ``source_node`` must not be moved into ``target_node`` (None: it may).

    Never into the input; never a synthetic result into a node that is not synthetic (it may
    sit under a real patient's study), nor a result computed from real CT into a synthetic one.
    """
    if target_node is None or target_node is source_node:
        return "no other output volume was chosen"
    if input_node is not None and target_node is input_node:
        return "the output volume is the input volume"
    if is_synthetic_node(source_node) != is_synthetic_node(target_node):
        kind = "synthetic" if is_synthetic_node(source_node) else "computed from real CT"
        return f"the result is {kind} and {target_node.GetName()} is not: kept as a new volume"
    return None


def move_volume_into(source_node, target_node):
    """Move the voxels, geometry and QHQGAN attributes of ``source_node`` into ``target_node``.

    ``source_node`` (a fresh output) is removed from the scene; ``target_node`` (the
    output volume the user picked) is returned.
    """
    import slicer.util
    import vtk

    earlier_output = target_node.GetAttribute(ATTRIBUTE_PREFIX + "task") is not None
    matrix = vtk.vtkMatrix4x4()
    source_node.GetIJKToRASMatrix(matrix)
    target_node.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(target_node, slicer.util.arrayFromVolume(source_node).copy())
    for name in target_node.GetAttributeNames() or ():
        if name.startswith(ATTRIBUTE_PREFIX):
            target_node.RemoveAttribute(name)
    for name in source_node.GetAttributeNames() or ():
        if name.startswith(ATTRIBUTE_PREFIX):
            target_node.SetAttribute(name, source_node.GetAttribute(name))
    if target_node.GetDisplayNode() is None:
        target_node.CreateDefaultDisplayNodes()
    if earlier_output or not target_node.GetName():
        target_node.SetName(source_node.GetName())  # an earlier QHQGAN output: its old name would mislead
    source_node.GetScene().RemoveNode(source_node)
    return target_node
