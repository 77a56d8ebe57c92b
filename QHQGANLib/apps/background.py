"""Run QHQGAN tasks in a child process, with progress and cancel: what the Slicer panel uses.

The Slicer module never runs a model inside Slicer's own process (the panel would
freeze). It writes the input to a temporary NRRD file, starts the ``qhqgan`` CLI
with Slicer's ``PythonSlicer`` (any Python with QHQGANLib installed works the
same), reads the ``QHQGAN-PROGRESS <fraction> <message>`` lines the CLI prints
with ``--progress lines``, and reads the output file back when the child is done.
Cancel ends the child and everything it started (its process group: the worker behind
Slicer's ``PythonSlicer`` launcher too) without blocking; the temporary folder is removed
in every case.

This module gathers the public names of its parts, each a small module:

* :mod:`.request` -- :class:`TaskRequest` (options checked against
  :mod:`QHQGANLib.core.options`) and :func:`build_command`;
* :mod:`.runner` -- the child process: :class:`BackgroundTask`, :func:`run_task`, :func:`wait`;
* :mod:`.node_task` -- MRML nodes: :func:`process_node`, :class:`NodeTask`, :func:`move_volume_into`;
* :mod:`.segment_task` -- the tasks on segments (Insert lesion, Synthesize from segmentation):
  :class:`SegmentNodeTask`, reading segments with :mod:`.segments`; :func:`start_task` starts either kind;
* :mod:`.dependencies` -- the Python packages QHQGAN needs inside Slicer.

None of them imports Qt or Slicer at import time, so all are tested in plain Python.

Console usage (plain Python, or Slicer's Python console)::

    >>> from QHQGANLib.apps.background import TaskRequest, build_command, run_task
    >>> request = TaskRequest("simulate-low-dose", dose=0.25, seed=0)
    >>> argv = build_command(request, "ct.nrrd", "ct_25pct.nrrd")
    >>> run_task(argv, progress=lambda f, m: print(f"{f:4.0%} {m}"))

    >>> from QHQGANLib.apps.background import process_node             # in Slicer
    >>> low = process_node(slicer.util.getNode("CTChest"), TaskRequest("simulate-low-dose"))
"""
from __future__ import annotations

from ..core.devices import DEVICES
from ..core.kinds import INPUT_TASKS, MODEL_TASKS, SEGMENT_TASKS, TASKS, default_model, models_for_task
from .dependencies import (ensure_requirements, missing_requirements, read_requirements, requirement_files,
                           slicer_constraints, task_needs_torch)
from .node_task import (NodeTask, TemporaryWorkspace, move_refusal, move_volume_into, process_node,
                        start_node_task)
from .request import (TaskRequest, build_command, default_output_name, python_executable,
                      task_unavailable_reason)
from .runner import (TERMINATE_GRACE_S, BackgroundTask, CancelledAfterCommit, TaskFailed, child_environment,
                     end_process_tree, remove_if_created, run_task, wait)
from .segment_task import SegmentNodeTask, start_segment_task

__all__ = [
    "BackgroundTask", "CancelledAfterCommit", "DEVICES", "INPUT_TASKS", "MODEL_TASKS", "NodeTask", "TASKS", "TERMINATE_GRACE_S",
    "TaskFailed", "TaskRequest", "TemporaryWorkspace", "build_command", "child_environment",
    "default_model", "default_output_name", "end_process_tree", "ensure_requirements", "missing_requirements",
    "models_for_task", "move_refusal", "move_volume_into", "process_node", "python_executable",
    "read_requirements", "remove_if_created", "requirement_files", "run_task", "slicer_constraints",
    "start_node_task", "task_needs_torch", "task_unavailable_reason", "wait", "SegmentNodeTask", "start_segment_task",
    "start_task", "SEGMENT_TASKS",
]


def start_task(request: TaskRequest, input_node=None, segmentation=None, segment_id=None, **kwargs):
    """Start ``request`` in a child process and return the running job at once: a :class:`NodeTask` on a volume
    node, or for the tasks on segments (``insert-lesion``, ``synthesize-from-labels``) a
    :class:`SegmentNodeTask` reading ``segmentation`` (a segmentation node, with ``segment_id``, or a labelmap
    node). What the Slicer panel's Apply calls."""
    if request.task in SEGMENT_TASKS:
        return start_segment_task(request, input_node, segmentation=segmentation, segment_id=segment_id, **kwargs)
    if segmentation is not None or segment_id is not None:
        raise ValueError(f"the {request.task} task reads no segment")
    return start_node_task(request, input_node, **kwargs)
