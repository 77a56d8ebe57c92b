"""Run QHQGAN tasks in a child process, with progress and cancel: what the Slicer panel uses.

The Slicer module never runs a model inside Slicer's own process (the panel would
freeze). It writes the input to a temporary NRRD file, starts the ``qhqgan`` CLI
with Slicer's ``PythonSlicer`` (any Python with QHQGANLib installed works the
same), reads the ``QHQGAN-PROGRESS <fraction> <message>`` lines the CLI prints
with ``--progress lines``, and reads the output file back when the child is done.
Cancel ends the child; the temporary folder is removed in every case.

This module imports neither Qt nor Slicer, so it is tested in plain Python. The
node helpers (:func:`process_node`, :func:`start_node_task`) import the MRML
bridge :mod:`QHQGANLib.scene` only when called.

Console usage (plain Python, or Slicer's Python console)::

    >>> from QHQGANLib.background import TaskRequest, build_command, run_task
    >>> request = TaskRequest("simulate-low-dose", dose=0.25, seed=0)
    >>> argv = build_command(request, "ct.nrrd", "ct_25pct.nrrd")
    >>> run_task(argv, progress=lambda f, m: print(f"{f:4.0%} {m}"))

    >>> from QHQGANLib.background import process_node             # in Slicer
    >>> low = process_node(slicer.util.getNode("CTChest"), TaskRequest("simulate-low-dose"))
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

from ..core.progress import OperationCancelled, ProgressCallback, parse_progress_line

PathLike = Union[str, "os.PathLike[str]"]

#: The tasks, by their CLI command name.
TASKS = ("enhance", "super-resolve", "synthesize", "simulate-low-dose")
#: Tasks that read an input volume (synthesis makes new images from noise).
INPUT_TASKS = ("enhance", "super-resolve", "simulate-low-dose")
#: Tasks that run a trained model.
MODEL_TASKS = ("enhance", "super-resolve", "synthesize")
DEVICES = ("auto", "cpu", "cuda")
#: Seconds between terminate() and kill() when a child does not stop.
TERMINATE_GRACE_S = 2.0


class TaskFailed(RuntimeError):
    """The child process failed; the message is its one-line error."""


@dataclasses.dataclass
class TaskRequest:
    """What to run and with which options; :func:`build_command` turns it into a command line.

    ``model`` is the name of a shipped model (see :func:`QHQGANLib.resources.model_cards`)
    or the path of a weights file; None lets the CLI choose its default model.
    ``quantum_backend`` is ``"torch"`` (the fast built-in simulator) or
    ``"pennylane:DEVICE"`` (e.g. ``"pennylane:lightning.qubit"``).
    """

    task: str = "enhance"
    model: Optional[str] = None
    quantum_backend: str = "torch"
    device: str = "auto"
    tile_size: int = 512
    overlap: float = 0.0
    scale: int = 2
    n_samples: int = 8
    seed: int = 0
    dose: float = 0.25

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown compute device {self.device!r}; expected one of {', '.join(DEVICES)}")
        backend = self.quantum_backend
        if not (backend == "torch" or (backend.startswith("pennylane:") and len(backend) > len("pennylane:"))):
            raise ValueError(f"unknown quantum backend {backend!r}; expected 'torch' or 'pennylane:DEVICE'")
        if not 0.0 < self.dose <= 1.0:
            raise ValueError(f"dose fraction must be in (0, 1], got {self.dose}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tile overlap must be in [0, 1), got {self.overlap}")
        if self.tile_size < 16:
            raise ValueError(f"tile size must be at least 16 pixels, got {self.tile_size}")
        if self.n_samples < 1:
            raise ValueError(f"number of samples must be at least 1, got {self.n_samples}")
        if self.scale != 2:
            raise ValueError(f"only x2 super-resolution is supported, got x{self.scale}")

    @property
    def needs_input(self) -> bool:
        return self.task in INPUT_TASKS

    def output_suffix(self) -> str:
        """The suffix naming the output after the input, e.g. ``CTChest_enhanced``."""
        if self.task == "simulate-low-dose":
            return f"dose{int(round(self.dose * 100))}pct"
        return {"enhance": "enhanced", "super-resolve": f"SRx{self.scale}", "synthesize": "synthetic"}[self.task]

    def attributes(self) -> Dict[str, Any]:
        """The options worth recording on the output node (``QHQGAN.<key>`` attributes)."""
        attributes: Dict[str, Any] = {"task": self.task}
        if self.task == "simulate-low-dose":
            attributes.update(dose_fraction=self.dose, seed=self.seed)
            return attributes
        attributes.update(model=self.model or "default", quantum_backend=self.quantum_backend, device=self.device)
        if self.task == "synthesize":
            attributes.update(n_samples=self.n_samples, seed=self.seed, synthetic="true")
        else:
            attributes.update(tile_size=self.tile_size, overlap=self.overlap)
        if self.task == "super-resolve":
            attributes["scale"] = self.scale
        return attributes


# ---------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------
def python_executable() -> str:
    """The Python that runs the child: Slicer's ``PythonSlicer`` inside Slicer, else this Python."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    folder = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (folder / name).is_file():
            return str(folder / name)
    return sys.executable


def build_command(request: TaskRequest, input_path: Optional[PathLike], output_path: PathLike,
                  python: Optional[str] = None) -> List[str]:
    """The child's argv: ``[python, "-m", "QHQGANLib", COMMAND, ...options, "--progress", "lines"]``."""
    argv = [python or python_executable(), "-m", "QHQGANLib", request.task]
    if request.needs_input:
        if input_path is None:
            raise ValueError(f"the {request.task} task needs an input volume")
        argv += [str(input_path)]
    argv += [str(output_path)]
    if request.task == "simulate-low-dose":
        argv += ["--dose", _number(request.dose), "--seed", str(request.seed)]
    else:
        if request.model:
            argv += ["--model", str(request.model)]
        argv += ["--device", request.device, "--quantum-backend", request.quantum_backend]
        if request.task == "synthesize":
            argv += ["--n", str(request.n_samples), "--seed", str(request.seed)]
        else:
            if request.task == "super-resolve":
                argv += ["--scale", str(request.scale)]
            argv += ["--tile-size", str(request.tile_size), "--overlap", _number(request.overlap)]
    argv += ["--progress", "lines"]
    return argv


def _number(value: float) -> str:
    return repr(float(value))


def child_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The child's environment: unbuffered output and this QHQGANLib first on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_parent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


# ---------------------------------------------------------------------------
# the child process
# ---------------------------------------------------------------------------
class BackgroundTask:
    """A running child process whose progress is polled, e.g. from a Qt timer.

    Reader threads collect stdout and stderr so the child never blocks on a full
    pipe; :meth:`poll` hands the progress reported since the last call to the
    caller's thread. ``cancel()`` ends the child (terminate, then kill).
    """

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[PathLike] = None):
        self.argv = [str(a) for a in argv]
        self._events: Deque = collections.deque()
        self._stderr: Deque[str] = collections.deque(maxlen=50)
        self._stdout_tail: Deque[str] = collections.deque(maxlen=20)
        self.cancelled = False
        self.fraction = 0.0
        self.message = ""
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":  # no console window popping up from Slicer
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_environment(env), cwd=str(cwd) if cwd else None,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            parsed = parse_progress_line(line)
            if parsed is not None:
                self._events.append(parsed)
            elif line.strip():
                self._stdout_tail.append(line.rstrip())

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def poll(self) -> List[tuple]:
        """The ``(fraction, message)`` pairs reported since the last call (fractions never go down)."""
        updates = []
        while self._events:
            fraction, message = self._events.popleft()
            self.fraction = max(self.fraction, min(max(fraction, 0.0), 1.0))
            self.message = message or self.message
            updates.append((self.fraction, self.message))
        return updates

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def cancel(self, grace: float = TERMINATE_GRACE_S) -> None:
        """End the child now: terminate, then kill after ``grace`` seconds."""
        self.cancelled = True
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def error_line(self) -> str:
        """The child's one-line error: its last ``qhqgan:`` line on stderr, else its last line."""
        lines = list(self._stderr)
        for line in reversed(lines):
            if line.startswith("qhqgan:"):
                return line
        if lines:
            return lines[-1]
        return self._stdout_tail[-1] if self._stdout_tail else "no error message"

    def finish(self, timeout: Optional[float] = None) -> int:
        """Wait for the end; raise :class:`OperationCancelled` or :class:`TaskFailed` unless it succeeded."""
        returncode = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5.0)
        self.poll()
        if self.cancelled:
            raise OperationCancelled("cancelled by the user; no output was written")
        if returncode != 0:
            raise TaskFailed(f"{self.error_line()} (exit status {returncode})")
        return returncode

    @property
    def stdout_lines(self) -> List[str]:
        """The last non-progress lines the child printed (e.g. its summary)."""
        return list(self._stdout_tail)


def run_task(argv: Sequence[str], progress: Optional[ProgressCallback] = None, cancel=None,
             poll_interval: float = 0.1, env: Optional[Dict[str, str]] = None,
             output_path: Optional[PathLike] = None) -> BackgroundTask:
    """Run ``argv`` to its end, reporting progress; the blocking form of :class:`BackgroundTask`.

    ``cancel`` is any object with ``is_set()``: when set, the child is ended and
    :class:`OperationCancelled` raised. A failing child raises :class:`TaskFailed`
    (a ``RuntimeError``) with its one-line error. With ``output_path``, a file
    left there by a failed or cancelled run is removed.
    """
    task = BackgroundTask(argv, env=env)
    try:
        wait(task, progress, cancel, poll_interval)  # ends the child on cancel or on an exception here
        task.finish()
    except BaseException:
        if output_path is not None:
            Path(output_path).unlink(missing_ok=True)
        raise
    return task


def _forward(task: BackgroundTask, progress: Optional[ProgressCallback]) -> None:
    for fraction, message in task.poll():
        if progress is not None:
            progress(fraction, message)


# ---------------------------------------------------------------------------
# temporary files
# ---------------------------------------------------------------------------
class TemporaryWorkspace:
    """A temporary folder holding ``input.nrrd`` and ``output.nrrd``, removed on exit in all cases.

    ``with TemporaryWorkspace(node) as ws:`` writes the node's volume (or a
    :class:`~QHQGANLib.volume.Volume`) to ``ws.input_path``.
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
        """Write a volume node or a Volume to :attr:`input_path`."""
        from ..core.io import write_volume
        from ..core.volume import Volume

        volume = source if isinstance(source, Volume) else _volume_of_node(source)
        return Path(write_volume(volume, self.input_path, overwrite=True))

    def read_output(self):
        """The child's output as a :class:`~QHQGANLib.volume.Volume`."""
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


# ---------------------------------------------------------------------------
# MRML nodes (Slicer, or plain Python with the slicer-core wheels)
# ---------------------------------------------------------------------------
class NodeTask:
    """A task running in the background on a volume node; :meth:`finish` adds the output node.

    The scene is not touched until :meth:`finish` succeeds: a cancelled or failed
    task leaves it unchanged. The temporary folder is removed in all cases.
    """

    def __init__(self, request: TaskRequest, input_node=None, scene=None, name: Optional[str] = None,
                 python: Optional[str] = None):
        if request.needs_input and input_node is None:
            raise ValueError(f"the {request.task} task needs an input volume")
        self.request = request
        self.input_node = input_node
        self.scene = scene if scene is not None else (input_node.GetScene() if input_node is not None else None)
        if self.scene is None:
            raise ValueError("no MRML scene: give an input node or a scene")
        self.name = name or default_output_name(request, input_node)
        # synthetic images are marked synthetic in their names, files included
        self.workspace = TemporaryWorkspace(input_node if request.needs_input else None,
                                            output_name="output_synthetic.nrrd" if request.task == "synthesize"
                                            else "output.nrrd")
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

    def cancel(self) -> None:
        try:
            self.task.cancel()
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


def default_output_name(request: TaskRequest, input_node=None) -> str:
    """``<input name>_<suffix>``, e.g. ``CTChest_enhanced``; ``QHQGAN_synthetic`` without an input."""
    base = input_node.GetName() if input_node is not None else "QHQGAN"
    return f"{base}_{request.output_suffix()}"


def start_node_task(request: TaskRequest, input_node=None, **kwargs) -> NodeTask:
    """Start ``request`` on ``input_node`` in a child process and return at once (see :class:`NodeTask`)."""
    return NodeTask(request, input_node, **kwargs)


def wait(job, progress: Optional[ProgressCallback] = None, cancel=None, poll_interval: float = 0.1) -> None:
    """Wait for a :class:`NodeTask` or :class:`BackgroundTask` to end, forwarding progress; cancel on request."""
    task = job.task if isinstance(job, NodeTask) else job
    try:
        while job.running:
            if cancel is not None and cancel.is_set():
                job.cancel()
                break
            _forward(task, progress)
            time.sleep(poll_interval)
        _forward(task, progress)
    except BaseException:
        job.cancel()
        raise


def process_node(input_node, request: TaskRequest, progress: Optional[ProgressCallback] = None,
                 cancel=None, poll_interval: float = 0.1, **kwargs):
    """Run ``request`` on ``input_node`` to the end and return the new output node (blocking)."""
    job = NodeTask(request, input_node, **kwargs)
    wait(job, progress, cancel, poll_interval)
    return job.finish()


def move_volume_into(source_node, target_node):
    """Move the voxels, geometry and QHQGAN attributes of ``source_node`` into ``target_node``.

    ``source_node`` (a fresh output) is removed from the scene; ``target_node`` (the
    output volume the user picked) is returned.
    """
    import slicer.util
    import vtk

    from .scene import ATTRIBUTE_PREFIX

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
    source_node.GetScene().RemoveNode(source_node)
    return target_node


# ---------------------------------------------------------------------------
# dependencies (Slicer older than 5.11 has no slicer.pydeps)
# ---------------------------------------------------------------------------
def read_requirements(path: PathLike) -> List[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def missing_requirements(path: PathLike) -> List[str]:
    """The requirements of ``path`` not satisfied by the installed distributions."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for line in read_requirements(path):
        requirement = Requirement(line)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def ensure_requirements(requirements: PathLike, confirm: Callable[[str], bool],
                        pip_install: Callable[[List[str]], Any], pydeps=None,
                        keep: Sequence[str] = ("SimpleITK", "vtk", "numpy", "torch"),
                        constraints_path: Optional[PathLike] = None) -> bool:
    """Install what ``requirements`` lists and is missing, after ``confirm(text)``; False if declined.

    With Slicer >= 5.11 ``pydeps`` is ``slicer.pydeps`` (``pip_ensure`` skipping
    ``keep``); on older Slicer ``pip_install`` (``slicer.util.pip_install``) gets the
    missing requirements with a constraints file holding ``keep`` at their
    installed versions, so Slicer's own SimpleITK, vtk, numpy and torch stay.
    """
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        reqs = pydeps.load_requirements(str(requirements))
        if pydeps.pip_check(reqs):
            return True
        if not confirm("QHQGAN will now download and install the Python packages it needs "
                       "(PennyLane, pydicom, scikit-image, ...). This takes a few minutes."):
            return False
        pydeps.pip_ensure(reqs, skip_packages=list(keep), requester="QHQGAN")
        return True
    missing = missing_requirements(requirements)
    if not missing:
        return True
    if not confirm("QHQGAN will now download and install: " + ", ".join(missing) + ". This takes a few minutes."):
        return False
    constraints = slicer_constraints(keep, constraints_path or Path(tempfile.mkdtemp(prefix="qhqgan-pip-")) / "constraints.txt")
    pip_install(["-c", constraints] + missing)
    return True


def slicer_constraints(packages: Sequence[str], path: PathLike) -> str:
    """Write a pip constraints file holding ``packages`` at their installed versions (so pip keeps them)."""
    from importlib import metadata

    lines = []
    for name in packages:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


# ---------------------------------------------------------------------------
# what is available
# ---------------------------------------------------------------------------
def cli_commands() -> List[str]:
    """The commands this version of the ``qhqgan`` CLI offers (read from its parser, no child)."""
    import argparse

    from .cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def task_unavailable_reason(task: str) -> Optional[str]:
    """None when ``task`` can run here, else why not (missing CLI command or model)."""
    if task not in TASKS:
        return f"unknown task {task!r}"
    if task not in cli_commands():
        return f"this QHQGANLib has no '{task}' command yet"
    if task in MODEL_TASKS and not models_for_task(task):
        return f"no trained model for '{task}' is installed yet"
    return None


#: The model each task uses when none is named (the library's defaults); listed first in the panel.
DEFAULT_MODELS = {"enhance": "hqgan-enhance", "super-resolve": "hqgan-sr2", "synthesize": "hqgan-synth"}


def models_for_task(task: str) -> List[Dict]:
    """Shipped model cards usable for ``task`` (a card without a ``task``/``tasks`` field fits all),
    the task's default model (:data:`DEFAULT_MODELS`) first, then by name."""
    from ..core.resources import model_cards

    fitting = []
    for card in model_cards():
        tasks = card.get("tasks", card.get("task"))
        if tasks is None or task == tasks or (isinstance(tasks, list) and task in tasks):
            fitting.append(card)
    return sorted(fitting, key=lambda card: (card["name"] != DEFAULT_MODELS.get(task), card["name"]))

