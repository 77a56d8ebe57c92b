"""What a training run records of its data and speed (model cards, the run folder's ``training_data.json``).

File paths are never recorded: they often hold patient names or record numbers. Each volume is
identified by the sha256 of its voxels and grid (``voxel_sha256``: the full digest, and its first 16
characters, the form older cards hold), so a card can be checked against the data it names.

Console usage::

    >>> from QHQGANLib.training.provenance import training_data
    >>> training_data([ct])["voxel_sha256"]          # one digest per training volume
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Sequence


def voxel_sha256(volume) -> str:
    """sha256 of a volume's grid (shape, spacing) and its float32 voxels."""
    digest = hashlib.sha256(repr((volume.shape, tuple(round(s, 6) for s in volume.spacing))).encode())
    digest.update(volume.array.tobytes())
    return digest.hexdigest()


def training_data(volumes: Sequence) -> dict:
    """How many volumes and slices, and the voxel sha256 of each (see the module docstring)."""
    hashes = [voxel_sha256(v) for v in volumes]
    return {"n_volumes": len(volumes), "n_slices": int(sum(v.shape[0] for v in volumes)),
            "voxel_sha256": hashes, "voxel_sha256_16": [h[:16] for h in hashes]}


def write_training_data(output_dir, volumes: Sequence) -> Path:
    """``output_dir/training_data.json`` (written beside, then moved into place): what this run trained on."""
    path = Path(output_dir) / "training_data.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(training_data(volumes), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def speed(model) -> dict:
    """Updates per second of this training run (this process's updates: a resumed run counts its own)."""
    seconds, updates = getattr(model, "training_seconds", None), getattr(model, "training_updates", None)
    if not seconds or updates is None:
        return {}
    return {"speed": {"updates": int(updates), "seconds": round(float(seconds), 1),
                      "updates_per_second": round(updates / seconds, 4), "machine": platform.processor() or
                      platform.machine()}}
