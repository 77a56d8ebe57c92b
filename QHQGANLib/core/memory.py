"""How much memory reading a volume needs, against what the machine has: refused before any allocation.

A voxel limit alone is not enough: a gzip NRRD of a few MB (zeros compress a thousandfold) passes it
and can then need over 10 GB (the voxels as stored, plus the float32 copy every reader returns). The
readers call ``file_checks.check_memory`` (:func:`memory_shortfall`) with the header's size and pixel
type before ITK or pydicom allocate anything.

In a container with a memory limit (cgroup v2 ``memory.max``, or v1) the room left under that limit
counts when it is smaller. Otherwise the memory available is read from ``/proc/meminfo`` (``MemAvailable``: free memory plus what the
system can reclaim at once), from psutil where it is already installed (macOS, Windows), from
``os.sysconf`` (free physical pages) otherwise, and when the system says nothing it is taken as
``FALLBACK_AVAILABLE_BYTES``.

Console usage::

    >>> from QHQGANLib.core.memory import available_memory, memory_shortfall
    >>> available_memory()                          # (21474836480, 'MemAvailable')
    >>> memory_shortfall(512 * 512 * 300, 2, (512, 512, 300), "ct.nrrd")   # '' (it fits), or the refusal
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

#: Where Linux says how much memory is available.
MEMINFO = Path("/proc/meminfo")
#: A container's memory limit and use (cgroup v2, then v1): MemAvailable is the host's, not the container's.
CGROUP_FILES = ((Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
                (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")))
#: The memory taken as available where the system does not say (no /proc/meminfo, no psutil, no sysconf).
FALLBACK_AVAILABLE_BYTES = 8 * 2**30
#: Bytes per voxel of the float32 array every reader returns.
FLOAT32_BYTES = 4


def _cgroup_room():
    """Bytes left under this process's cgroup memory limit, or None without one (unlimited, or not Linux)."""
    for limit_file, used_file in CGROUP_FILES:
        try:
            limit = limit_file.read_text().strip()
            if limit == "max" or int(limit) >= 2**60:  # v2 "max", v1's huge number: no limit
                return None
            return max(0, int(limit) - int(used_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> Tuple[int, str]:
    """``(bytes, where from)``: the memory this process can allocate now without swapping (the smaller of
    the system's and, in a container with a memory limit, what is left under that limit)."""
    found = _system_available()
    room = _cgroup_room()
    if room is not None and room < found[0]:
        return room, "the container's memory limit"
    return found


def _system_available() -> Tuple[int, str]:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # only where it is already installed: QHQGAN does not depend on it

        return int(psutil.virtual_memory().available), "psutil"
    except Exception:  # not installed, or it cannot tell
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE")), "free physical memory"
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf, macOS no SC_AVPHYS_PAGES
        pass
    return FALLBACK_AVAILABLE_BYTES, "the system does not say; a fixed limit"


def memory_shortfall(n_voxels: int, stored_bytes: int, size, source) -> str:
    """The one-line refusal of a read whose voxels (``stored_bytes`` each as stored, plus the float32 copy)
    need more memory than is available; ``""`` when they fit. Raised by ``file_checks.check_memory``."""
    need = int(n_voxels) * (int(stored_bytes) + FLOAT32_BYTES)
    available, where = available_memory()
    if need <= available:
        return ""
    per_voxel = (f"{stored_bytes} bytes per voxel as stored plus {FLOAT32_BYTES} as float32" if stored_bytes
                 else f"{FLOAT32_BYTES} bytes per voxel as float32")
    return (f"{source}: reading it needs {need / 2**30:.1f} GiB of memory (size {tuple(size)}, {per_voxel}) but "
            f"{available / 2**30:.1f} GiB is available ({where}); crop or downsample it, or free memory")
