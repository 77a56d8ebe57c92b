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
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

from ..core.progress import OperationCancelled, ProgressCallback, parse_progress_line

PathLike = Union[str, "os.PathLike[str]"]
#: Seconds between terminate() and kill() when a child does not stop.
TERMINATE_GRACE_S = 2.0
#: Seconds :attr:`BackgroundTask.running` stays True after the child ended while a process it
#: started still holds the output pipes (then :meth:`BackgroundTask.finish` ends that process).
ORPHAN_GRACE_S = 5.0


class TaskFailed(RuntimeError):
    """The child process failed; the message is its one-line error."""


class CancelledAfterCommit(OperationCancelled):
    """Cancel came after the run had written its result (``output``): the new result is kept (issue #28)."""

    def __init__(self, output: Path):
        super().__init__("cancelled after the result was written: the output file holds the new result and "
                         "is kept")  # no file name: names can identify a patient (the path is .output)
        self.output = Path(output)


def child_environment(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The child's environment: unbuffered output and this QHQGANLib first on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_parent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env



def _spawn_options() -> Dict[str, Any]:
    """Popen options that make the child the head of its own process group (a session on POSIX).

    Inside Slicer the child is ``PythonSlicer``, a CTK launcher that starts ``python-real``
    with ``QProcess::start`` and forwards no signal (commontk/AppLauncher,
    ``Base/ctkAppLauncher.cpp``, ``ctkAppLauncherPrivate::runProcess``): terminating the
    launcher alone leaves the worker computing and holding the output pipes. In its own
    group, :meth:`BackgroundTask.cancel` ends launcher and worker together.
    """
    if os.name == "nt":  # no console window popping up from Slicer; a group of its own
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)
                | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


def end_process_tree(process: "subprocess.Popen", force: bool) -> None:
    """Signal ``process`` and every process it started (its process group; on Windows its tree).

    ``force=False`` asks politely (SIGTERM); ``force=True`` kills (SIGKILL, ``taskkill /F /T``).
    Never raises for a process that is already gone.
    """
    if os.name == "nt":
        if process.poll() is None or force:
            subprocess.run(["taskkill", "/T"] + (["/F"] if force else []) + ["/PID", str(process.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        if force and process.poll() is None:
            process.kill()
        return
    import signal

    try:  # the group outlives its leader while a grandchild (python-real) still runs
        os.killpg(process.pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


class BackgroundTask:
    """A running child process whose progress is polled, e.g. from a Qt timer.

    Reader threads collect stdout and stderr so the child never blocks on a full
    pipe; :meth:`poll` hands the progress reported since the last call to the
    caller's thread. The child heads its own process group, so :meth:`cancel` ends
    whatever it started too (the worker behind Slicer's ``PythonSlicer`` launcher);
    neither :meth:`cancel` nor :meth:`finish` after the end blocks the caller.
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
        self._killer: Optional[threading.Timer] = None
        self._ended_at: Optional[float] = None
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_environment(env), cwd=str(cwd) if cwd else None,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **_spawn_options())
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
        """True until the child has ended and its output pipes are closed (all its workers gone)."""
        if self.process.poll() is None:
            return True
        if self.cancelled or not any(reader.is_alive() for reader in self._readers):
            return False
        # the child has ended but something it started still holds its output (a launcher's
        # worker finishing its last lines): wait for it a little, then finish() ends it
        if self._ended_at is None:
            self._ended_at = time.monotonic()
        return time.monotonic() - self._ended_at < ORPHAN_GRACE_S

    def cancel(self, grace: float = TERMINATE_GRACE_S) -> None:
        """End the child and its workers: SIGTERM to its group now, SIGKILL ``grace`` seconds later.

        Returns at once (the kill comes from a timer thread), so a GUI thread never waits;
        ``grace=0`` kills at once. :attr:`running` turns False when the child is gone.
        """
        self.cancelled = True
        if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
            return
        end_process_tree(self.process, force=grace <= 0)
        if grace > 0 and self._killer is None:
            self._killer = threading.Timer(grace, self._kill_now)
            self._killer.daemon = True
            self._killer.start()

    def _kill_now(self) -> None:
        end_process_tree(self.process, force=True)

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
        """Wait for the end; raise :class:`OperationCancelled` or :class:`TaskFailed` unless it succeeded.

        After :attr:`running` turned False this returns at once. A cancelled child is
        waited for at most ``TERMINATE_GRACE_S`` + 1 s (it is killed by then). A worker left
        holding the pipes after the child ended is killed, not waited for.
        """
        if self.cancelled and timeout is None:
            timeout = TERMINATE_GRACE_S + 1.0
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            end_process_tree(self.process, force=True)
            returncode = self.process.wait(1.0)
        for reader in self._readers:
            reader.join(0.5)
        if any(reader.is_alive() for reader in self._readers):  # orphaned workers hold the pipes
            end_process_tree(self.process, force=True)
            for reader in self._readers:
                reader.join(0.5)
        if self._killer is not None:
            self._killer.cancel()
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


def _file_identity(path: Path) -> Optional[tuple]:
    """(device, inode, size, mtime) of a file at ``path``, None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def run_task(argv: Sequence[str], progress: Optional[ProgressCallback] = None, cancel=None,
             poll_interval: float = 0.1, env: Optional[Dict[str, str]] = None,
             output_path: Optional[PathLike] = None, idle: Optional[Callable[[], None]] = None) -> BackgroundTask:
    """Run ``argv`` to its end, reporting progress; the blocking form of :class:`BackgroundTask`.

    ``cancel`` is any object with ``is_set()``: when set, the child is ended and
    :class:`OperationCancelled` raised. A failing child raises :class:`TaskFailed`
    (a ``RuntimeError``) with its one-line error. With ``output_path``, a file that
    this run left there when it failed is removed; a file that was already there before
    the run (and that the run did not replace) is never touched. A cancel that comes after
    the run wrote its result (``qhqgan`` commands write atomically, so a new file at
    ``output_path`` is the whole result, and with ``--overwrite`` the earlier file is gone
    by then) keeps that result and raises :class:`CancelledAfterCommit` (an
    :class:`OperationCancelled`) saying so.
    ``idle`` is called between polls (``slicer.app.processEvents`` keeps Slicer responsive).
    """
    before = _file_identity(Path(output_path)) if output_path is not None else None
    task = BackgroundTask(argv, env=env)
    try:
        wait(task, progress, cancel, poll_interval, idle=idle)  # ends the child on cancel or on an exception here
        task.finish()
    except OperationCancelled:
        if output_path is not None and _replaced(Path(output_path), before):
            raise CancelledAfterCommit(Path(output_path)) from None
        raise
    except BaseException:
        if output_path is not None:
            remove_if_created(output_path, before)
        raise
    return task


def _replaced(path: Path, before: Optional[tuple]) -> bool:
    """A file at ``path`` that was not there, or not this one, before the run."""
    now = _file_identity(path)
    return now is not None and now != before and path.is_file()


def remove_if_created(path: PathLike, before: Optional[tuple]) -> bool:
    """Remove the file at ``path`` if the run made it: none was there (``before`` None) or another replaced it.

    ``before`` is what :func:`_file_identity` said before the run. Returns True if a file was removed.
    """
    path = Path(path)
    if not _replaced(path, before):
        return False
    path.unlink(missing_ok=True)
    return True


def _forward(task: BackgroundTask, progress: Optional[ProgressCallback]) -> None:
    for fraction, message in task.poll():
        if progress is not None:
            progress(fraction, message)


def wait(job, progress: Optional[ProgressCallback] = None, cancel=None, poll_interval: float = 0.1,
         idle: Optional[Callable[[], None]] = None) -> None:
    """Wait for a :class:`BackgroundTask` (or a job holding one as ``job.task``, e.g. a
    :class:`~QHQGANLib.apps.node_task.NodeTask`) to end, forwarding progress; cancel on request.

    ``idle`` (e.g. ``slicer.app.processEvents``) runs between polls instead of a bare sleep
    filling the whole interval, so a GUI stays responsive while a blocking call waits.
    """
    task = getattr(job, "task", job)
    try:
        while job.running:
            if cancel is not None and cancel.is_set():
                job.cancel()
                break
            _forward(task, progress)
            if idle is not None:
                idle()
            time.sleep(poll_interval)
        _forward(task, progress)
    except BaseException:
        job.cancel()
        raise
