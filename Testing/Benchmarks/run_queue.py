"""The resumable job queue shared by the long benchmarks (``evidence_train.py``, ``synth_protocol.py``).

A job is a run folder. Several worker processes (one per free core) walk the same list of jobs;
each takes the next one no live process holds (:func:`claim`: a ``worker.pid`` file made with an
exclusive create), trains it with checkpoints and ``resume=True``, and writes ``model.json`` at the
end. A session may end at any time: the next worker takes over a claim whose process is gone and
continues from the checkpoint. :func:`trained_steps` reads the budget a finished job was trained
for, so a larger budget later extends the finished runs exactly.

    >>> from run_queue import claim, trained_steps
    >>> if trained_steps(run) < 2000 and claim(run):
    ...     train(..., output_dir=run, resume=True)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def claim(run: Path) -> bool:
    """Claim the job ``run`` for this process; False when another live process holds it."""
    run.mkdir(parents=True, exist_ok=True)
    lock = run / "worker.pid"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
                return pid == os.getpid()  # a live worker holds it
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def trained_steps(run: Path) -> int:
    """Updates of the model kept in ``run`` (0 when there is none yet)."""
    card = run / "model.json"
    return int(json.loads(card.read_text())["training"]["steps"]) if card.exists() else 0


def keep_budget(run: Path) -> None:
    """Before a finished run is extended to more updates: copy its model and card to
    ``model-<updates>.safetensors`` / ``.json`` (once; atomically), so the shorter budget can still be scored."""
    done = trained_steps(run)
    if not done:
        return
    for suffix in (".safetensors", ".json"):
        source, kept = run / f"model{suffix}", run / f"model-{done}{suffix}"
        if source.exists() and not kept.exists():
            tmp = kept.with_name(kept.name + ".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(kept)


def weights_of(run: Path, steps: int) -> Path:
    """The weights of ``run`` after ``steps`` updates: its model when it holds that budget, else the shorter
    budget ``keep_budget`` kept beside it (the path may not exist: that budget was never trained or kept)."""
    return run / ("model.safetensors" if trained_steps(run) == steps else f"model-{steps}.safetensors")


def load_json(path: Path) -> dict:
    """The JSON object in ``path``; {} when there is none yet."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
