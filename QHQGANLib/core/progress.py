"""Progress and cancellation for long operations, the same for the CLI, the console and Slicer.

Long functions take two optional arguments:

* ``progress(fraction, message)``: called with ``fraction`` rising from 0 to 1;
* ``cancel``: any object with ``is_set()`` (e.g. ``threading.Event``); when it
  is set the function stops at the next slice or tile and raises
  :class:`OperationCancelled`, leaving no output behind.

Console usage::

    >>> import threading
    >>> from QHQGANLib.core.progress import tqdm_progress
    >>> stop = threading.Event()
    >>> with tqdm_progress("low dose") as report:
    ...     low = simulate_low_dose(ct, 0.25, progress=report, cancel=stop)
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Protocol

ProgressCallback = Callable[[float, str], None]


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


class OperationCancelled(RuntimeError):
    """The user cancelled a long operation; nothing was written."""


def check_cancel(cancel: Optional[CancelToken]) -> None:
    """Raise :class:`OperationCancelled` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise OperationCancelled("cancelled by the user")


def report(progress: Optional[ProgressCallback], fraction: float, message: str = "") -> None:
    """Call ``progress`` (if any) with ``fraction`` clipped to [0, 1]."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def sub_progress(progress: Optional[ProgressCallback], low: float, high: float) -> Optional[ProgressCallback]:
    """``progress`` for one part of a task: its fractions 0-1 mapped onto ``[low, high]`` (None stays None)."""
    if progress is None:
        return None
    return lambda f, m="": report(progress, low + (high - low) * f, m)


#: Prefix of the machine-readable progress lines that ``qhqgan --progress lines`` prints on
#: stdout, e.g. ``QHQGAN-PROGRESS 0.4200 slice 42/100``; the Slicer module parses them.
PROGRESS_LINE_PREFIX = "QHQGAN-PROGRESS"


def parse_progress_line(line: str):
    """``(fraction, message)`` of a progress line, or None for any other line."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != PROGRESS_LINE_PREFIX:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    return fraction, (parts[2] if len(parts) > 2 else "")


@contextlib.contextmanager
def line_progress(stream=None, min_step: float = 0.005) -> Iterator[ProgressCallback]:
    """A callback printing :data:`PROGRESS_LINE_PREFIX` lines (flushed) for a parent process."""
    import sys

    out = stream or sys.stdout
    last = {"fraction": -1.0}

    def update(fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction - last["fraction"] >= min_step or fraction >= 1.0:
            last["fraction"] = fraction
            print(f"{PROGRESS_LINE_PREFIX} {fraction:.4f} {message}".rstrip(), file=out, flush=True)

    yield update


def progress_reporter(description: str, mode: str = "bar"):
    """The progress context for a CLI ``--progress`` mode: ``bar``, ``lines`` or ``none``."""
    if mode == "lines":
        return line_progress()
    return tqdm_progress(description, enabled=(mode == "bar"))


@contextlib.contextmanager
def tqdm_progress(description: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A ``progress(fraction, message)`` callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=description, disable=not enabled, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
    state = {"done": 0}

    def update(fraction: float, message: str = "") -> None:
        target = int(round(min(max(fraction, 0.0), 1.0) * 1000))
        if target > state["done"]:
            bar.update(target - state["done"])
            state["done"] = target
        if message:
            bar.set_postfix_str(message, refresh=False)

    try:
        yield update
    finally:
        bar.close()
