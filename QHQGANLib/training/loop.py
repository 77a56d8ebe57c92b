"""The one training loop of QHQGANLib, shared by enhancement and synthesis, and mixed precision.

A trainer (:mod:`~QHQGANLib.training.enhancement`, :mod:`~QHQGANLib.training.synthesis`) builds
its networks on the training device and hands :func:`run_loop` a :class:`TrainStep`: an object
with ``train_step(step) -> {name: float}`` (one update, its losses) and
``state_dict()`` / ``load_state_dict(state)`` (weights, optimisers, random streams, EMA...).
The loop owns everything else:

* steps ``start`` .. ``steps - 1``; ``cancel`` checked before every step and before every
  checkpoint (once it is set nothing more is written; :class:`OperationCancelled` is raised);
* ``progress(fraction, message)`` over ``progress_range``, an optional tqdm bar;
* ``output_dir`` must be new or empty unless the run resumes (``resume`` or ``start`` > 0) or
  ``overwrite`` is set (:func:`check_output_dir`: an earlier run's checkpoint and log are never
  replaced silently); rank 0 claims it for the whole run (:func:`claim_output_dir`: a second
  run into the same folder is refused at once);
* in ``output_dir`` (rank 0 only): ``config.json``, ``losses.jsonl`` (one line per step; on
  resume the lines after the checkpoint are dropped and the log continues), and
  ``checkpoint.pt`` every ``checkpoint_every`` steps and after the last one (never twice),
  written atomically with CPU tensors, so :func:`resume_state` + ``load_state_dict`` continue
  exactly where a run stopped.

``state_dict()`` is called on every rank at a checkpoint (so it may gather per-rank state with
:func:`~QHQGANLib.training.distributed.gather_from_ranks`); only rank 0 writes.

:class:`Precision` is the mixed precision (``amp=True``) of a trainer: float16 autocast with a
GradScaler per optimiser on CUDA; bfloat16 autocast on the CPU (no scaler needed; slower than
float32 on most CPUs, mainly there so the AMP path runs everywhere). Losses, the gradient
penalty and the quantum circuit (:class:`~QHQGANLib.quantum.layer.QuantumLayer` turns autocast
off for itself) run in float32.

Console usage::

    >>> from QHQGANLib.training.loop import run_loop
    >>> class Fit:                                       # any object with these three methods
    ...     def train_step(self, step): ...; return {"loss": loss}
    ...     def state_dict(self): return {"model": model.state_dict()}
    ...     def load_state_dict(self, state): model.load_state_dict(state["model"])
    >>> seconds = run_loop(Fit(), steps=100, output_dir=Path("runs/x"), checkpoint_every=25)
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple

import torch

from ..core.progress import check_cancel, report
from .checkpoints import check_resumable, load_checkpoint, write_checkpoint
from .distributed import barrier

CHECKPOINT = "checkpoint.pt"
LOSS_LOG = "losses.jsonl"
#: Files a run leaves in its output folder that an ``overwrite`` run removes first (its own kind only:
#: a stale checkpoint must not be resumed with another run's log).
RUN_FILES = (CHECKPOINT, "checkpoint.tmp", LOSS_LOG, "config.json", "summary.json")
#: Memory layout of the networks and batches while training: NHWC ("channels last"), the native
#: layout of oneDNN's convolutions. The same arithmetic as NCHW, 15-30 % faster updates on the CPU
#: (issue #16; ``Testing/Benchmarks/bench_profile.py`` sets ``torch.contiguous_format`` for "previous").
TRAINING_LAYOUT = torch.channels_last


def in_training_layout(value):
    """A 4-D tensor or a module in ``TRAINING_LAYOUT`` (other tensors unchanged)."""
    if isinstance(value, torch.nn.Module):
        return value.to(memory_format=TRAINING_LAYOUT)
    return value.contiguous(memory_format=TRAINING_LAYOUT) if value.dim() == 4 else value


class TrainStep(Protocol):
    """What a trainer gives :func:`run_loop`."""

    def train_step(self, step: int) -> Dict[str, float]: ...

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor (in nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def check_output_dir(output_dir: Optional[str], resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``output_dir`` that is a file, or a non-empty folder when the run
    neither resumes nor overwrites: a new run would replace the earlier run's checkpoint, config and
    loss log, or mix its files with them."""
    if not output_dir:
        return
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; give a folder for the training run's files")
    if resume or overwrite or not out.is_dir():
        return
    if any(out.iterdir()):
        raise ValueError(f"{out}: the output folder is not empty (an earlier run's files are there); use --resume "
                         "(resume=True) to continue that run, --overwrite (overwrite=True) to replace it, or "
                         "another folder")


@contextlib.contextmanager
def claim_output_dir(output_dir: Optional[str], rank: int = 0):
    """Hold ``output_dir`` for this run (rank 0 only: the one that writes): a second run, in another
    process, into the same folder gets a ``FileExistsError`` at once (:func:`QHQGANLib.core.outputs.claim_output`;
    the claim is a hidden file beside the folder, removed on exit)."""
    if not output_dir or rank != 0:
        yield
        return
    from ..core.outputs import claim_output

    out = Path(output_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with claim_output(out):
        yield


def resume_state(output_dir: Optional[str], cfg, keys: Sequence[str], steps: int, world: int = 1,
                 missing_ok: bool = False) -> Optional[Dict[str, Any]]:
    """The checkpoint of ``output_dir`` to resume from (CPU tensors), checked against ``cfg``.

    Raises FileNotFoundError when there is none (None with ``missing_ok``), ValueError when its
    config differs in ``keys``, it is beyond ``steps``, or it was written by another number of processes.
    """
    path = Path(output_dir) / CHECKPOINT if output_dir else None
    if path is None or not path.exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT} in {output_dir!r}")
    state = load_checkpoint(path)
    check_resumable(json.loads(state["config"]), cfg, keys)
    if int(state["step"]) > steps:
        raise ValueError(f"cannot resume: the checkpoint is at step {int(state['step'])}, beyond steps={steps}")
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise ValueError(f"cannot resume: the checkpoint was written by {saved_world} process(es), "
                         f"this run has {world}")
    return state


def _open_log(path: Path, start: int):
    """``losses.jsonl`` for writing: new at step 0; on resume, kept up to ``start`` and appended to."""
    kept = []
    if start > 0 and path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= start:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line cut by a crash
                continue
    log = open(path, "w")
    log.writelines(line + "\n" for line in kept)
    return log


def run_loop(task: TrainStep, steps: int, *, start: int = 0, output_dir: Optional[str] = None,
             checkpoint_every: int = 0, config: Optional[Dict[str, Any]] = None, rank: int = 0, world: int = 1,
             progress: Optional[Callable[[float, str], None]] = None, cancel=None,
             progress_range: Tuple[float, float] = (0.0, 1.0), show_progress: bool = False,
             description: str = "training", resume: bool = False, overwrite: bool = False) -> float:
    """Run ``task.train_step`` for steps ``start`` .. ``steps - 1``; returns the seconds it took.

    See the module docstring for what the loop writes, when, and how cancel acts.
    ``config`` (a JSON-able dict) goes into ``config.json`` and every checkpoint.
    A non-empty ``output_dir`` is refused unless ``resume`` (or ``start`` > 0) or ``overwrite``.
    """
    check_cancel(cancel)
    out_dir = Path(output_dir).expanduser() if (output_dir and rank == 0) else None
    if out_dir is not None:
        check_output_dir(str(out_dir), resume=resume or start > 0, overwrite=overwrite)
    with claim_output_dir(str(out_dir) if out_dir is not None else None):
        return _run_claimed(task, steps, start, output_dir, out_dir, checkpoint_every, config, rank, world,
                            progress, cancel, progress_range, show_progress, description, overwrite)


def _run_claimed(task, steps, start, output_dir, out_dir, checkpoint_every, config, rank, world, progress, cancel,
                 progress_range, show_progress, description, overwrite) -> float:
    """:func:`run_loop` once its folder is checked and claimed."""
    config_text = json.dumps(config or {})
    log = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite and start == 0:  # the earlier run's files go: none of them is resumed or mixed in
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config or {}, indent=2))
        log = _open_log(out_dir / LOSS_LOG, start)
    bar = None
    if show_progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=description)
    lo, hi = progress_range
    t0 = time.time()
    try:
        for step in range(start, steps):
            check_cancel(cancel)
            stats = task.train_step(step)
            done = step + 1
            if log is not None:
                log.write(json.dumps({"step": done, **stats}) + "\n")
            rate = (done - start) / max(time.time() - t0, 1e-9)  # updates per second of this run
            if bar is not None:
                bar.update(1)
                bar.set_postfix({**{k: f"{v:.4g}" for k, v in stats.items()}, "upd/s": f"{rate:.3g}"}, refresh=False)
            report(progress, lo + (hi - lo) * done / steps, f"step {done}/{steps}")
            if output_dir and (done == steps or (checkpoint_every > 0 and done % checkpoint_every == 0)):
                check_cancel(cancel)
                state = to_cpu(task.state_dict())  # every rank: the state may gather per-rank values
                if out_dir is not None:
                    log.flush()
                    write_checkpoint(out_dir / CHECKPOINT, {"step": done, "world_size": world,
                                                            "config": config_text, **state})
                barrier(world)  # no rank runs ahead (e.g. into a resume) before the checkpoint is there
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return time.time() - t0


class Precision:
    """Automatic mixed precision of one run (see the module docstring); a no-op when disabled."""

    def __init__(self, device: torch.device, enabled: bool = False):
        if enabled and device.type not in ("cuda", "cpu"):
            raise ValueError(f"amp runs on CUDA (float16) or the CPU (bfloat16), not on {device.type!r}")
        self.device_type, self.enabled = device.type, bool(enabled)
        self.dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def autocast(self):
        """Context for the networks' forward passes."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scaler(self):
        """A GradScaler for one optimiser (float16 on CUDA), or None."""
        if not (self.enabled and self.device_type == "cuda"):
            return None
        if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
            return torch.amp.GradScaler("cuda")
        return torch.cuda.amp.GradScaler()

    @staticmethod
    def step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
        """zero_grad, backward (scaled with ``scaler``), optimiser step."""
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
            return
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
