"""Tasks on MRML volume nodes: the input written to a temporary file, the output read back as a new node.

A :class:`NodeTask` runs its :class:`~QHQGANLib.apps.request.TaskRequest` in a child
process (:mod:`QHQGANLib.apps.runner`); the scene is not touched until it succeeds,
and the temporary folder is removed in every case. Works in Slicer and in plain
Python with the slicer-core wheels; the MRML bridge :mod:`QHQGANLib.apps.scene` is
imported only when a node is read or made.

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

from ..core.naming import ATTRIBUTE_PREFIX, is_synthetic_node, output_file_name
from ..core.progress import ProgressCallback
from .request import TaskRequest, build_command, default_output_name
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
        for a file that lives a few minutes in a private temporary folder.
        """
        from ..core.io import write_volume
        from ..core.volume import Volume

        volume = source if isinstance(source, Volume) else _volume_of_node(source)
        return Path(write_volume(volume, self.input_path, overwrite=True, compress=False))

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


class NodeTask:
    """A task running in the background on a volume node; :meth:`finish` adds the output node.

    The scene is not touched until :meth:`finish` succeeds: a cancelled or failed
    task leaves it unchanged. The temporary folder is removed in all cases.
    """

    def __init__(self, request: TaskRequest, input_node=None, scene=None, name: Optional[str] = None,
                 python: Optional[str] = None):
        # synthesis uses no voxel of an input: it only names the scene, and the result is
        # neither named after it, placed under its patient, nor linked to it
        if not request.needs_input and input_node is not None:
            scene = scene if scene is not None else input_node.GetScene()
            input_node = None
        if request.needs_input and input_node is None:
            raise ValueError(f"the {request.task} task needs an input volume")
        self.request = request
        self.input_node = input_node
        self.scene = scene if scene is not None else (input_node.GetScene() if input_node is not None else None)
        if self.scene is None:
            raise ValueError("no MRML scene: give an input node or a scene")
        self.name = name or default_output_name(request, input_node)
        # synthetic images are marked synthetic in their names, files included (core.naming)
        self.workspace = TemporaryWorkspace(input_node if request.needs_input else None,
                                            output_name=output_file_name(request.task))
        self.workspace.__enter__()
        try:
            argv = build_command(request, self.workspace.input_path, self.workspace.output_path, python)
            self.task = BackgroundTask(argv)
        except BaseException:
            self.workspace.cleanup()
            raise

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

    def finish(self):
        """The new output node (raises OperationCancelled / TaskFailed; cleans up either way)."""
        from .scene import node_from_volume

        try:
            self.task.finish()
            volume = self.workspace.read_output()
        finally:
            self.workspace.cleanup()
        attributes = dict(self.request.attributes())
        if self.input_node is not None:
            attributes["source_node"] = self.input_node.GetID()
        node = node_from_volume(volume, self.scene, self.name, reference_node=self.input_node,
                                attributes=attributes)
        return node


def start_node_task(request: TaskRequest, input_node=None, **kwargs) -> NodeTask:
    """Start ``request`` on ``input_node`` in a child process and return at once (see :class:`NodeTask`)."""
    return NodeTask(request, input_node, **kwargs)


def process_node(input_node, request: TaskRequest, progress: Optional[ProgressCallback] = None,
                 cancel=None, poll_interval: float = 0.1, idle=None, **kwargs):
    """Run ``request`` on ``input_node`` to the end and return the new output node (blocking).

    ``idle`` runs between polls (in Slicer: ``slicer.app.processEvents``).
    """
    job = NodeTask(request, input_node, **kwargs)
    wait(job, progress, cancel, poll_interval, idle=idle)
    return job.finish()


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
