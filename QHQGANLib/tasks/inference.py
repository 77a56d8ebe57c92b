"""Running an image-to-image network over whole volumes: slice by slice, in seamless tiles.

Each output slice is computed from its 2.5D stack (the slice and its neighbours),
tile by tile with the overlap-tile scheme (each tile sees a margin of context at
least as wide as the network's receptive field, and only its centre is kept), so
any slice size runs in bounded memory and the tiled result equals the whole-slice
result: no seams, no blending. Several tiles (``tile_batch``, from one slice or
consecutive ones) go through the network in one forward pass. ``progress`` is called
after every batch of tiles, and ``cancel`` is checked before every batch. Each source slice
is padded once and the windows are copied straight into one reused batch buffer; on a CPU the
batch (and the weights of a network loaded here by name) go channels-last, which oneDNN's
convolutions run faster. The circuit spreads its chunks over torch's threads itself
(:mod:`QHQGANLib.quantum.fused`), so torch's default thread count suits 2 cores and many.

Console usage::

    >>> from QHQGANLib.tasks.inference import run_model
    >>> array = run_model(low_dose_volume, "hqgan-enhance", tile_size=256, tile_batch=4)   # (z, y, x) HU
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.devices import pick_device
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.build import set_quantum_backend
from ..nn.weights import load_model

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 0.0
DEFAULT_TILE_BATCH = 4  # tiles per forward pass


def _resolve_model(model, device: str, quantum_backend: Optional[str]):
    if isinstance(model, str):
        net = load_model(model, device=device, quantum_backend=quantum_backend)
        if _channels_last(device):  # a network loaded here: its convolution weights too (see run_batch)
            import torch

            net = net.to(memory_format=torch.channels_last)
        return net
    if quantum_backend:
        set_quantum_backend(model, quantum_backend)
    return model.to(device).eval()


def _channels_last(device) -> bool:
    """Inputs (and the weights of networks loaded by name) in channels-last order on a CPU: oneDNN's
    convolutions ran 1.4-1.5x faster so here (same results to float rounding)."""
    return str(device).startswith("cpu")


def receptive_radius(net, probe: int = 128) -> int:
    """How far (pixels) an output pixel sees into its input: measured once by back-propagation."""
    import torch

    cached = getattr(net, "_qhqgan_receptive_radius", None)
    if cached is not None:
        return cached
    import copy

    # a copy with every weight positive: no path is switched off by zero-initialised layers
    probe_net = copy.deepcopy(net).float().cpu()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe_net.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) * 0.1 + 0.01)
    x = torch.zeros(1, getattr(net, "in_slices", 1), probe, probe, requires_grad=True)
    with torch.enable_grad():
        y = probe_net(x + 100.0)
        c = y.shape[-1] // 2
        y[0, 0, c, c].backward()
    reach = (x.grad[0].abs().sum(0) > 0).nonzero()
    scale = int(getattr(net, "scale", 1))
    centre = c / scale
    radius = int(np.ceil((reach.float() - centre).abs().max().item())) + 1 if len(reach) else 0
    net._qhqgan_receptive_radius = radius
    return radius


def run_model(volume: Volume, model, *, device: Optional[str] = None, quantum_backend: Optional[str] = None,
              tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP, tile_batch: int = DEFAULT_TILE_BATCH,
              progress: Optional[Callable[[float, str], None]] = None, cancel=None) -> np.ndarray:
    """The model's output for every slice of ``volume`` (float32 array, HU).

    Overlap-tile scheme: each slice is cut into cores of at most ``tile_size`` pixels;
    every core is computed from a window that adds a margin of context on each side,
    and only the core is kept. The margin is at least the network's receptive radius
    (or ``overlap`` x ``tile_size`` / 2 if larger), so the tiled result equals the
    whole-slice result: there are no seams. Slice borders are extended by edge values.

    ``tile_batch`` tiles go through the network in one forward pass (like MONAI's
    ``sw_batch_size``); all windows have the same size (the padded slice is an exact grid
    of cores), so tiles of consecutive slices share batches too. The result does not
    depend on ``tile_batch`` (up to float rounding of the batched kernels); a larger
    batch is faster on a GPU and holds ``tile_batch`` tiles' activations at once.
    ``cancel`` is checked before every batch and ``progress`` called after every batch.
    """
    import torch

    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if tile_size < 16:
        raise ValueError(f"tile_size must be at least 16, got {tile_size}")
    if isinstance(tile_batch, bool) or not isinstance(tile_batch, numbers.Integral) or tile_batch < 1:
        raise ValueError(f"tile_batch (tiles per forward pass) must be an integer >= 1, got {tile_batch!r}")
    tile_batch = int(tile_batch)
    device = pick_device(device)
    net = _resolve_model(model, device, quantum_backend)
    context = (getattr(net, "in_slices", 1) - 1) // 2
    scale = int(getattr(net, "scale", 1))
    multiple = int(getattr(net, "multiple", 1))
    nz, ny, nx = volume.shape

    def round_up(n: int) -> int:
        return -(-int(n) // multiple) * multiple

    margin = round_up(max(receptive_radius(net), overlap * tile_size / 2))
    core = max(multiple, int(tile_size) // multiple * multiple)
    core_y, core_x = min(core, round_up(ny)), min(core, round_up(nx))
    n_ty, n_tx = -(-ny // core_y), -(-nx // core_x)
    py, px = n_ty * core_y, n_tx * core_x  # the padded slice is an exact grid of cores
    out = np.empty((nz, ny * scale, nx * scale), dtype=np.float32)
    source = np.clip(volume.array, HU_MIN, HU_MAX)
    total = nz * n_ty * n_tx
    n_batch = min(tile_batch, total)
    report(progress, 0.0, f"{nz} slice(s), {n_ty * n_tx} tile(s) each, {n_batch} per pass")
    win_y, win_x = core_y + 2 * margin, core_x + 2 * margin
    # one input buffer for every pass: the windows are copied straight into it (no stacking copy)
    buffer = np.empty((n_batch, 2 * context + 1, win_y, win_x), dtype=np.float32)
    padded: dict = {}  # source slice -> its padded copy (each slice is padded once, not once per neighbour)

    def padded_slice(j: int) -> np.ndarray:
        if j not in padded:
            padded[j] = np.pad(source[j], ((margin, margin + py - ny), (margin, margin + px - nx)), mode="edge")
        return padded[j]

    def tiles():
        """``(k, y0, x0)`` of every tile, slice by slice."""
        for k in range(nz):
            for ty in range(n_ty):
                for tx in range(n_tx):
                    yield k, ty * core_y, tx * core_x

    def fill(slot: int, k: int, y0: int, x0: int) -> None:
        idx = np.clip(np.arange(k - context, k + context + 1), 0, nz - 1)  # edge slices repeated (core.volume.slab)
        for c, j in enumerate(idx):
            buffer[slot, c] = padded_slice(int(j))[y0:y0 + win_y, x0:x0 + win_x]
        for j in [j for j in padded if j < idx[0]]:  # slices behind the stack are not needed again
            del padded[j]

    def run_batch(batch) -> None:
        with torch.profiler.record_function("qhqgan.tiles"):
            x = torch.from_numpy(buffer[:len(batch)]).to(device)
            if _channels_last(device):
                x = x.contiguous(memory_format=torch.channels_last)
        with torch.profiler.record_function("qhqgan.network"):
            y = net(x)[:, 0, margin * scale:(margin + core_y) * scale, margin * scale:(margin + core_x) * scale]
        with torch.profiler.record_function("qhqgan.output"):
            y = y.float().cpu().numpy()
            for (k, y0, x0), tile in zip(batch, y):
                # cores on the high-index edge reach into the padding: keep only what lies on the slice
                h, w = min(core_y, ny - y0) * scale, min(core_x, nx - x0) * scale
                out[k, y0 * scale:y0 * scale + h, x0 * scale:x0 * scale + w] = tile[:h, :w]

    done = 0
    batch = []
    with torch.inference_mode():
        for item in tiles():
            with torch.profiler.record_function("qhqgan.tiles"):
                fill(len(batch), *item)
            batch.append(item)
            if len(batch) < n_batch and done + len(batch) < total:
                continue
            check_cancel(cancel)
            run_batch(batch)
            done += len(batch)
            batch = []
            report(progress, done / total, f"slice {item[0] + 1}/{nz}")
    # a network may overshoot (e.g. on inputs unlike its training data): never beyond the CT range
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out
