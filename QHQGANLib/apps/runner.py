"""The child process: run a ``qhqgan`` command line in the background, with progress and cancel.

The Slicer panel never runs a model inside Slicer's own process (the panel would
freeze): it starts the ``qhqgan`` CLI with ``--progress lines`` in a child process
and reads the ``QHQGAN-PROGRESS <fraction> <message>`` lines it prints. No Qt, no
Slicer: tested in plain Python.

Console usage::

    >>> from QHQGANLib.apps.runner import run_task
    >>> from QHQGANLib.apps.request import TaskRequest, build_command
    >>> argv = build_command(TaskRequest("simulate-low-dose", dose=0.25), "ct.nrrd", "ct_25pct.nrrd")
    >>> run_task(argv, progress=lambda f, m: print(f"{f:4.0%} {m}"))
"""
from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Union

from ..core.progress import OperationCancelled, ProgressCallback, parse_progress_line

PathLike = Union[str, "os.PathLike[str]"]
#: Seconds between terminate() and kill() when a child does not stop.
TERMINATE_GRACE_S = 2.0


class TaskFailed(RuntimeError):
    """The child process failed; the message is its one-line error."""


def child_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The child's environment: unbuffered output and this QHQGANLib first on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_parent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env



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


def wait(job, progress: Optional[ProgressCallback] = None, cancel=None, poll_interval: float = 0.1) -> None:
    """Wait for a :class:`BackgroundTask` (or a job holding one as ``job.task``, e.g. a
    :class:`~QHQGANLib.apps.node_task.NodeTask`) to end, forwarding progress; cancel on request."""
    task = getattr(job, "task", job)
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
