"""The compute device: CUDA when there is one and it is not refused, else the CPU.

Console usage::

    >>> from QHQGANLib.core.devices import pick_device
    >>> pick_device("auto")        # "cuda" on a GPU machine, else "cpu"
"""
from __future__ import annotations

from typing import Optional

DEVICES = ("auto", "cpu", "cuda")


def pick_device(device: Optional[str] = None) -> str:
    """``"cuda"`` when available and not refused, else ``"cpu"`` (``"auto"`` = None)."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu")
    return device
