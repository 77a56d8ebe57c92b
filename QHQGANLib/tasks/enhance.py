"""Enhancement and super-resolution of whole volumes (tiled by :mod:`QHQGANLib.tasks.inference`).

Each output slice is computed from its 2.5D stack (the slice and its neighbours),
tile by tile with the overlap-tile scheme (each tile sees a margin of context at
least as wide as the network's receptive field, and only its centre is kept), so
any slice size runs in bounded memory and the tiled result equals the whole-slice
result: no seams, no blending. Only the input volume, the output volume and one
``tile_batch`` tiles' activations are held (``tile_batch`` tiles, of one slice or
consecutive ones, go through the network in one forward pass; the result does not
depend on it). ``progress`` is called after every batch of tiles, and ``cancel`` is
checked before every batch.

Geometry: ``enhance`` keeps the grid. ``super_resolve`` divides the in-plane spacing
by the scale and moves the origin so the physical region covered by the voxels is
unchanged: with ``origin`` the centre of the first voxel, the new first centre sits
``(s - 1) / (2 s)`` of an old pixel before the old one along each in-plane axis.

Console usage::

    >>> import QHQGANLib as q
    >>> low = q.read_volume("low_dose_series/")
    >>> better = q.enhance(low, model="hqgan-enhance")           # same grid, HU
    >>> sharper = q.super_resolve(low, scale=2)                   # 2x finer in-plane
"""
from __future__ import annotations

from typing import Callable, Optional, Union

from ..core.kinds import default_model
from ..core.volume import Volume
from .geometry import super_resolved_geometry
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE, DEFAULT_TILE_BATCH, run_model


def enhance(volume: Volume, model: Union[str, object] = default_model("enhance"), device: Optional[str] = None,
            progress: Optional[Callable[[float, str], None]] = None, cancel=None,
            tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP, tile_batch: int = DEFAULT_TILE_BATCH,
            quantum_backend: Optional[str] = None) -> Volume:
    """Denoise a (low-dose) CT with an enhancement model; a new Volume on the same grid."""
    net_name = model if isinstance(model, str) else type(model).__name__
    array = run_model(volume, model, device=device, quantum_backend=quantum_backend, tile_size=tile_size,
                      overlap=overlap, tile_batch=tile_batch, progress=progress, cancel=cancel)
    if array.shape != volume.shape:
        raise ValueError(f"model {net_name} changes the grid (a super-resolution model?): use super_resolve")
    return volume.with_array(array, note=f"enhanced by {net_name}")


def super_resolve(volume: Volume, scale: int = 2, model: Union[str, object, None] = None,
                  device: Optional[str] = None, progress: Optional[Callable[[float, str], None]] = None,
                  cancel=None, tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP,
                  tile_batch: int = DEFAULT_TILE_BATCH, quantum_backend: Optional[str] = None) -> Volume:
    """In-plane super-resolution by ``scale``; a new Volume covering the same physical region."""
    if model is None:
        model = default_model("super-resolve", scale=scale)
    net_name = model if isinstance(model, str) else type(model).__name__
    array = run_model(volume, model, device=device, quantum_backend=quantum_backend, tile_size=tile_size,
                      overlap=overlap, tile_batch=tile_batch, progress=progress, cancel=cancel)
    nz, ny, nx = volume.shape
    if array.shape != (nz, ny * scale, nx * scale):
        raise ValueError(f"model {net_name} does not upscale by {scale} (output {array.shape[1:]} "
                         f"for input {(ny, nx)})")
    spacing, origin = super_resolved_geometry(volume, scale)
    return volume.with_geometry(array, spacing, origin, note=f"super-resolved x{scale} by {net_name}")
