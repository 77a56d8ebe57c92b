"""Training checkpoints: written atomically, read back without unpickling objects, checked before resuming.

Console usage::

    >>> from QHQGANLib.training.checkpoints import load_checkpoint
    >>> state = load_checkpoint(Path("runs/hqgan/checkpoint.pt"))     # tensors, numbers, strings
    >>> state["step"]
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch
from torch import nn


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


def save_checkpoint(path: Path, step: int, model, critic, opt_g, opt_c, rng: np.random.Generator,
                    cfg) -> None:
    state = {
        "step": step,
        "model": _unwrap(model).state_dict(),
        "critic": _unwrap(critic).state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_c": opt_c.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "config": json.dumps(cfg.to_dict()),
    }
    write_checkpoint(path, state)


def write_checkpoint(path: Path, state: Dict) -> None:
    """``torch.save`` of a dict of tensors, numbers and strings, atomically (a crash leaves the
    previous checkpoint); :func:`load_checkpoint` reads it back without unpickling objects."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
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
