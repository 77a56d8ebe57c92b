"""Distributed training under ``torchrun``: the process group (NCCL on GPUs, Gloo on CPU).

Console usage::

    torchrun --nproc_per_node 2 -m QHQGANLib train-enhance --input ct/ --steps 2000
"""
from __future__ import annotations

import os
from typing import Tuple

import torch


def _distributed() -> Tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world
