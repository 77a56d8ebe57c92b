"""Training checkpoints: written atomically, read back without unpickling objects, checked before resuming.

Console usage::

    >>> from QHQGANLib.training.checkpoints import load_checkpoint
    >>> state = load_checkpoint(Path("runs/hqgan/checkpoint.pt"))     # tensors, numbers, strings
    >>> state["step"]
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Sequence

import torch


def write_checkpoint(path: Path, state: Dict) -> None:
    """``torch.save`` of a dict of tensors, numbers and strings, atomically (a crash leaves the
    previous checkpoint); :func:`load_checkpoint` reads it back without unpickling objects. A failed
    write (a full disk) is one line with the reason, and leaves no ``checkpoint.tmp``."""
    from ..core.outputs import raise_if_disk_full

    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as fh:  # a file object: the system's error (ENOSPC) stays in the exception chain
            torch.save(state, fh)
    except BaseException as exc:  # torch words a full disk "enforce fail at inline_container.cc ... unexpected pos"
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(path, exc, "The previous checkpoint is kept.")
        raise
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> Dict:
    """A checkpoint written by :func:`write_checkpoint`, loaded without unpickling objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def check_resumable(saved_config: Dict, cfg, keys: Sequence[str]) -> None:
    """Refuse to resume when the checkpoint's config differs from ``cfg`` in any of ``keys``."""
    for key in keys:
        if saved_config.get(key) != getattr(cfg, key):
            raise ValueError(f"cannot resume: the checkpoint has {key}={saved_config.get(key)!r}, "
                             f"the config {getattr(cfg, key)!r}")
