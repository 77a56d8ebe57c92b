"""Cancel ends the real worker behind a launcher, and no call blocks the caller (issue #11, item 1);
a failed or cancelled ``run_task`` never deletes a file it did not create (issue #12).

Slicer's ``PythonSlicer`` is a CTK launcher: it starts ``python-real`` and forwards no signal.
``launcher.py`` below behaves the same: it ignores SIGTERM, starts the real child and waits
for it, so terminating the launcher alone would leave the worker computing.
"""
from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib import Volume
from QHQGANLib.apps.background import (BackgroundTask, CancelledAfterCommit, TaskFailed, TaskRequest, TemporaryWorkspace,
                                       build_command, run_task)
from QHQGANLib.core.progress import OperationCancelled

PY = sys.executable
pytestmark = pytest.mark.skipif(os.name == "nt", reason="the POSIX process-group path; Windows uses taskkill /T")

LAUNCHER = textwrap.dedent("""
    # a stand-in for PythonSlicer (ctkAppLauncher): ignores SIGTERM, starts the real program, waits
    import signal, subprocess, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid_file, argv = sys.argv[1], sys.argv[2:]
    child = subprocess.Popen(argv)
    open(pid_file, "w").write(str(child.pid))
    sys.exit(child.wait())
""")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): the kill(0) answer stands


def slow_phantom(n_slices: int = 60, size: int = 256) -> Volume:
    _, y, x = np.mgrid[0:n_slices, 0:size, 0:size]
    c = (size - 1) / 2
    array = np.where((y - c) ** 2 + (x - c) ** 2 < (0.4 * size) ** 2, 40.0, -1000.0).astype(np.float32)
    return Volume(array, (0.7, 0.7, 2.5), (-90.0, -90.0, 0.0), np.eye(3))


@pytest.fixture
def launcher(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    return script


def _wait_for(condition, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_cancel_ends_the_real_worker_behind_a_launcher_that_ignores_sigterm(launcher, tmp_path):
    pid_file = tmp_path / "worker.pid"
    with TemporaryWorkspace(slow_phantom()) as ws:
        child_argv = build_command(TaskRequest("simulate-low-dose", photons=1e5), ws.input_path, ws.output_path, PY)
        task = BackgroundTask([PY, str(launcher), str(pid_file)] + child_argv)
        started = _wait_for(lambda: any("slice" in m for _, m in task.poll()) or task.fraction > 0, 60)
        assert started and task.running, "the worker never reported progress"
        worker = int(pid_file.read_text())
        assert alive(worker)

        t0 = time.monotonic()
        task.cancel()
        assert time.monotonic() - t0 < 0.2, "cancel() blocked its caller (the GUI thread)"
        assert _wait_for(lambda: not alive(worker), 2.0), "the real worker still runs 2 s after Cancel"
        assert _wait_for(lambda: not task.running, 2.5), "the task still reports running"
        t1 = time.monotonic()
        with pytest.raises(OperationCancelled):
            task.finish()
        assert time.monotonic() - t1 < 1.0, "finish() blocked after the end"
        assert not ws.output_path.exists()


def test_sigterm_alone_to_the_launcher_would_leave_the_worker_running(launcher, tmp_path):
    """The trap this fixes: terminate() reaches only the launcher."""
    pid_file = tmp_path / "worker.pid"
    sleeper = [PY, "-c", "import time; time.sleep(30)"]
    task = BackgroundTask([PY, str(launcher), str(pid_file)] + sleeper)
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text(), 10)
        worker = int(pid_file.read_text())
        task.process.terminate()  # what the old cancel() did first
        time.sleep(0.5)
        assert task.process.poll() is None and alive(worker), "the launcher was expected to ignore SIGTERM"
    finally:
        task.cancel(grace=0)
    assert _wait_for(lambda: not alive(worker), 2.0)
    with pytest.raises(OperationCancelled):
        task.finish()


def test_finish_does_not_wait_for_an_orphan_holding_the_pipes(tmp_path, monkeypatch):
    """A launcher that dies while its worker still holds stdout: ``running`` turns False after
    ORPHAN_GRACE_S, and finish() returns within ~1 s and ends the worker."""
    from QHQGANLib.apps import runner

    monkeypatch.setattr(runner, "ORPHAN_GRACE_S", 0.5)
    pid_file = tmp_path / "worker.pid"
    script = tmp_path / "dying_launcher.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys
        child = subprocess.Popen([{PY!r}, "-c", "import time; time.sleep(30)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        sys.exit(3)
    """))
    task = BackgroundTask([PY, str(script)])
    assert _wait_for(lambda: task.process.poll() is not None, 10)
    worker = int(pid_file.read_text())
    assert task.running, "the worker still holds the pipes: the task is not over yet"
    assert _wait_for(lambda: not task.running, 1.5), "running never turned False (the panel would wait forever)"
    t0 = time.monotonic()
    with pytest.raises(TaskFailed, match="exit status 3"):
        task.finish()
    assert time.monotonic() - t0 < 2.0, "finish() waited for the orphaned worker"
    assert _wait_for(lambda: not alive(worker), 2.0), "the orphaned worker was left running"


# ---------------------------------------------------------------------------
# run_task(output_path=P) removes only what the run made (issue #12)
# ---------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "write-then-fail":
        open(path, "w").write("partial")
        sys.exit("qhqgan: error: failed after writing")
    if mode == "fail":
        sys.exit("qhqgan: error: failed before writing")
    if mode == "commit-then-sleep":  # as qhqgan writes: a temporary file moved into place
        import os
        open(path + ".tmp", "w").write("the new result")
        os.replace(path + ".tmp", path)
    print("QHQGAN-PROGRESS 0.1 working", flush=True)
    time.sleep(30)
""")


@pytest.fixture
def writer(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return script


def test_a_file_that_was_there_is_kept_when_the_run_fails(writer, tmp_path):
    earlier = tmp_path / "result.nrrd"
    earlier.write_text("an earlier result")
    with pytest.raises(TaskFailed):
        run_task([PY, str(writer), str(earlier), "fail"], output_path=earlier)
    assert earlier.read_text() == "an earlier result"


def test_a_file_that_was_there_is_kept_when_the_run_is_cancelled(writer, tmp_path):
    earlier = tmp_path / "result.nrrd"
    earlier.write_text("an earlier result")
    stop = threading.Event()
    with pytest.raises(OperationCancelled):
        run_task([PY, str(writer), str(earlier), "sleep"], progress=lambda f, m: stop.set(), cancel=stop,
                 poll_interval=0.02, output_path=earlier)
    assert earlier.read_text() == "an earlier result"


def test_a_cancel_after_the_result_was_written_keeps_it_and_says_so(writer, tmp_path):
    """Issue #28 item 8: with --overwrite the earlier result is gone once the new one is moved into place; a
    Cancel arriving after that (before the child exits) must not delete the new one too."""
    earlier = tmp_path / "result.nrrd"
    earlier.write_text("an earlier result")
    os.utime(earlier, (1, 1))
    stop = threading.Event()
    with pytest.raises(CancelledAfterCommit, match="the output file holds the new result and is kept") as caught:
        run_task([PY, str(writer), str(earlier), "commit-then-sleep"], progress=lambda f, m: stop.set(),
                 cancel=stop, poll_interval=0.02, output_path=earlier)
    assert isinstance(caught.value, OperationCancelled) and caught.value.output == earlier
    assert earlier.read_text() == "the new result"
    assert "result.nrrd" not in str(caught.value) and str(tmp_path) not in str(caught.value)  # no name, no path


def test_a_file_the_failed_run_wrote_is_removed(writer, tmp_path):
    new = tmp_path / "new.nrrd"
    with pytest.raises(TaskFailed, match="failed after writing"):
        run_task([PY, str(writer), str(new), "write-then-fail"], output_path=new)
    assert not new.exists()


def test_a_file_the_failed_run_replaced_is_removed_but_never_a_folder(writer, tmp_path):
    replaced = tmp_path / "old.nrrd"
    replaced.write_text("old")
    os.utime(replaced, (1, 1))  # the run's write gives it another mtime and size
    with pytest.raises(TaskFailed):
        run_task([PY, str(writer), str(replaced), "write-then-fail"], output_path=replaced)
    assert not replaced.exists()
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(TaskFailed):
        run_task([PY, str(writer), str(folder / "x"), "fail"], output_path=folder)
    assert folder.is_dir()

