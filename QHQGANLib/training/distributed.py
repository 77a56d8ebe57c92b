"""Where training runs: the device of this process and, under ``torchrun``, the process group.

* ``device="auto"`` is CUDA when there is a GPU, else the CPU; ``"cuda"`` or ``"cuda:N"`` without
  a GPU is a clear error before any work is done.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) the backend follows the training device, not the
  machine: NCCL when training on CUDA, Gloo on the CPU. On CUDA each rank takes
  ``cuda:LOCAL_RANK`` (an explicit ``cuda:N`` is honoured only in a single process).

Console usage::

    torchrun --nproc_per_node 2 -m QHQGANLib train-enhance --input ct/ --steps 2000 --device cpu

    >>> from QHQGANLib.training.distributed import setup_distributed
    >>> rank, world, device = setup_distributed("auto")     # (0, 1, device('cuda')) on a GPU machine
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, List, Optional, Tuple

import torch
from torch import nn

from ..core.devices import pick_device


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a ``torch.device``; ValueError when CUDA is asked for and absent."""
    resolved = torch.device(pick_device(device))  # pick_device refuses CUDA where there is none
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(resolved)!r} was asked for but there are {torch.cuda.device_count()} CUDA GPU(s)")
    return resolved


def world_size() -> int:
    """Number of processes of this run (``WORLD_SIZE`` set by torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: Optional[str] = "auto") -> Tuple[int, int, torch.device]:
    """(rank, world size, training device of this process); initialises the process group under torchrun.

    The device is resolved first, so a missing GPU is reported before the process group waits for peers.
    """
    import torch.distributed as dist

    resolved = resolve_device(device)
    world = world_size()
    if world <= 1:
        return 0, 1, resolved
    if resolved.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"rank with LOCAL_RANK={local} has no GPU ({torch.cuda.device_count()} on this node); "
                             "start at most one process per GPU")
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return dist.get_rank(), world, resolved


def wrap_ddp(module: nn.Module, device: torch.device, world: int) -> nn.Module:
    """``module`` in DistributedDataParallel when ``world`` > 1 (on its GPU with CUDA), else itself."""
    if world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") else module


def barrier(world: int) -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others may read next)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast_buffers(module: nn.Module, world: int) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every rank.

    DDP broadcasts them before each forward pass, so rank 0's are the ones that count; after the
    last update each rank still holds its own batch's statistics. Every rank must call it.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    for buffer in unwrap(module).buffers():
        dist.broadcast(buffer.data, src=0)


def gather_from_ranks(value: Any, world: int) -> List[Any]:
    """``[value of rank 0, value of rank 1, ...]`` (picklable values); ``[value]`` in a single process.

    Every rank must call it (it is a collective): checkpoints use it to store each rank's random streams.
    """
    if world <= 1:
        return [value]
    import torch.distributed as dist

    out: List[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Inside: ``module`` (unwrapped from DDP) with no parameter requiring a gradient, yielded for the
    forward passes of a generator update. The critic's weight gradients of that update were computed
    and then thrown away (the critic's optimiser zeroes them first): frozen, its convolutions' backward
    computes only the input gradient the generator needs; the generator's update is unchanged (issue
    #16). The unwrapped module keeps DDP out of a forward whose backward reduces nothing."""
    inner = unwrap(module)
    params = [p for p in inner.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield inner
    finally:
        for p in params:
            p.requires_grad_(True)
