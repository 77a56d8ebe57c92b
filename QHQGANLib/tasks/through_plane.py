"""Through-plane super-resolution: thick slices in, ``scale`` times thinner slices out (SMORE-like).

``super_resolve(volume, scale, axis="z")`` lands here (:func:`super_resolve_z`):

1. the slice profile of the input (:func:`QHQGANLib.physics.slice_profile.slice_profile`: a box of
   the DICOM SliceThickness when the header gives it, else of the spacing);
2. optionally, ``fine_tune_steps`` updates of the model on the input's own in-plane data with that
   profile (:func:`fine_tune`: the pairs of :class:`~QHQGANLib.physics.slice_profile.PatchSampler`
   as in :mod:`QHQGANLib.training.through_plane`, L1 loss, Adam; minutes on a CPU; progress and
   cancel); with no shipped model for the scale this trains a fresh network on the volume alone;
3. the thick slices are interpolated onto the thin grid along z (linear, as in training);
4. the network (HQGAN generator with its quantum block, or its classical control; one input
   channel) restores every coronal and every sagittal plane (z is their first axis, the axis it
   was trained to restore), tiled by :func:`QHQGANLib.tasks.inference.run_model`, and the two
   results are averaged (SMORE's recipe).

Geometry (:func:`QHQGANLib.tasks.geometry.super_resolved_geometry` with ``axis="z"``): z spacing
divided by the scale, in-plane grid unchanged, directions (oblique included) kept; the origin is
the centre of the first voxel, so the first thin slice sits ``(s - 1) / (2 s)`` of a thick slice
before the first thick one along the slice normal: the thin slices fill exactly the slab the
thick ones covered.

Console usage::

    >>> import QHQGANLib as q
    >>> thick = q.read_volume("ct_5mm/")
    >>> thin = q.super_resolve(thick, scale=2, axis="z")                 # shipped hqgan-srz2
    >>> thin = q.super_resolve(thick, scale=3, axis="z", fine_tune_steps=300,
    ...                        progress=lambda f, m: print(f"{f:.0%} {m}"))  # no x3 model: trained on the volume
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.kinds import default_model
from ..core.options import FINE_TUNE_DEFAULT_STEPS
from ..core.padding import carry_padding
from ..core.progress import check_cancel, report, sub_progress
from ..core.slice_positions import has_own_positions
from ..core.volume import Volume, require_finite
from ..physics.slice_profile import (INTERPOLATION_ORDER, PatchSampler, check_scale, patch_size_for, slice_profile,
                                     upsample_along_axis)
from .geometry import super_resolved_geometry
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE, DEFAULT_TILE_BATCH, run_model

#: The planes the network restores, as axis orders of a (z, y, x) array that put z first.
PLANES = {"coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
#: How far (factor) the input's profile width may lie from the model's before a warning.
PROFILE_TOLERANCE = 1.25

ProgressFn = Optional[Callable[[float, str], None]]


class NoThroughPlaneModel(ValueError):
    """No through-plane model is installed for the scale asked for."""


def no_model_message(scale: int) -> str:
    name = default_model("super-resolve", scale=scale, axis="z")
    return (f"no through-plane model for x{scale} is installed ({name}): fine-tune on this volume instead "
            f"(super_resolve(..., axis='z', fine_tune_steps={FINE_TUNE_DEFAULT_STEPS}); CLI --fine-tune-steps "
            f"{FINE_TUNE_DEFAULT_STEPS}; in Slicer tick 'Fine-tune on this volume'), or train one: "
            "QHQGANLib.training.through_plane.train_through_plane (Testing/Benchmarks/bench_through_plane.py train)")


def resolve_z_model(model: Union[str, object, None], scale: int, device: Optional[str] = None,
                    quantum_backend: Optional[str] = None, allow_missing: bool = False):
    """The through-plane network for ``scale``: a loaded model, or None when none is installed and
    ``allow_missing`` (a fresh one is then trained on the volume). Refuses in-plane models and
    models of another scale with a one-line ValueError."""
    if model is None:
        from ..core.resources import model_cards

        name = default_model("super-resolve", scale=scale, axis="z")
        if not any(card.get("name") == name for card in model_cards()):
            if allow_missing:
                return None
            raise NoThroughPlaneModel(no_model_message(scale))
        model = name
    if isinstance(model, str):
        from ..nn.weights import load_model

        model = load_model(model, device=device, quantum_backend=quantum_backend)
    card = getattr(model, "card", None) or {}
    label = card.get("name", type(model).__name__)
    if card.get("axis", "z" if not card else None) != "z" or getattr(model, "scale", 1) != 1 \
            or getattr(model, "in_slices", 1) != 1:
        raise ValueError(f"{label} is not a through-plane (axis z) model: use super_resolve(..., axis='in-plane') "
                         "for it, or a model trained by QHQGANLib.training.through_plane")
    if card.get("scale") not in (None, scale):
        raise ValueError(f"{label} restores x{card['scale']} thick slices, not x{scale}")
    return model


def restore_images(model, images: np.ndarray, device: Optional[str] = None, quantum_backend: Optional[str] = None,
                   tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP,
                   tile_batch: int = DEFAULT_TILE_BATCH, progress: ProgressFn = None, cancel=None) -> np.ndarray:
    """The network's restoration of ``images`` (N, H, W) HU whose first image axis (H) holds
    interpolated thick samples; tiled and batched like every model run. float32 HU."""
    stack = Volume(np.ascontiguousarray(images, dtype=np.float32))
    return run_model(stack, model, device=device, quantum_backend=quantum_backend, tile_size=tile_size,
                     overlap=overlap, tile_batch=tile_batch, progress=progress, cancel=cancel)


def apply_planes(model, fine: np.ndarray, planes: Sequence[str] = ("coronal", "sagittal"),
                 progress: ProgressFn = None, cancel=None, **options) -> np.ndarray:
    """Restore ``fine`` (z, y, x; thick slices already interpolated along z) on each of ``planes``
    and average the results (float32 HU, within the CT range)."""
    unknown = [p for p in planes if p not in PLANES]
    if unknown or not planes:
        raise ValueError(f"planes must be some of {tuple(PLANES)}, got {tuple(planes)}")
    total = np.zeros(fine.shape, np.float64)
    for n, plane in enumerate(planes):
        order = PLANES[plane]
        restored = restore_images(model, np.transpose(fine, order), cancel=cancel,
                                  progress=sub_progress(progress, n / len(planes), (n + 1) / len(planes)), **options)
        total += np.transpose(restored, np.argsort(order))
    return np.clip(total / len(planes), HU_MIN, HU_MAX).astype(np.float32)


def fine_tune(model, volume: Volume, scale: int = 2, steps: int = 200, arch: str = "hqgan",
              lr: Optional[float] = None, batch_size: int = 8, patch_size: int = 64, seed: int = 0,
              device: Optional[str] = None, progress: ProgressFn = None, cancel=None):
    """A copy of ``model`` trained ``steps`` more updates on ``volume``'s own in-plane data with its
    own slice profile (:func:`~QHQGANLib.physics.slice_profile.slice_profile`); ``model=None``
    trains a fresh ``arch`` network (``hqgan`` or ``mlp-control``) on the volume alone, SMORE's
    recipe. L1 loss, Adam (lr 3e-4 from a trained model, 1e-3 from scratch). ``progress`` after
    every update, ``cancel`` before every one (OperationCancelled). The original is not changed."""
    import copy

    import torch
    import torch.nn.functional as F

    from ..core.devices import pick_device
    from ..nn.enhancer import MIXER_OF_ARCH, HQGANGenerator

    profile = slice_profile(volume, scale)
    card = dict(getattr(model, "card", None) or {})
    device = pick_device(device)
    if model is None:
        if arch not in ("hqgan", "mlp-control", "no-circuit"):
            raise ValueError(f"arch must be hqgan, mlp-control or no-circuit, got {arch!r}")
        torch.manual_seed(seed)
        net = HQGANGenerator(task="enhance", context=0, mixer=MIXER_OF_ARCH[arch])
        card = {"name": f"{arch}-srz{profile.scale}-fresh", "axis": "z", "scale": profile.scale}
    else:
        net = copy.deepcopy(model)
    net = net.to(device).train()
    interpolation = card.get("interpolation", "linear")
    sampler = PatchSampler([volume], patch_size_for(profile.scale, patch_size), np.random.default_rng(seed))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr or (3e-4 if model is not None else 1e-3))
    losses = []
    for step in range(int(steps)):
        check_cancel(cancel)
        x, y = (torch.from_numpy(a).to(device) for a in sampler.pairs(batch_size, profile.scale, profile.width_px,
                                                                        interpolation))
        loss = F.l1_loss(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        report(progress, (step + 1) / steps, f"fine-tuning step {step + 1}/{steps}")
    net.eval()
    net.card = {**card, "name": card.get("name", "model") + "+fine-tuned", "interpolation": interpolation,
                "slice_profile_width_px": profile.width_px,
                "fine_tuned": {"steps": int(steps), "slice_profile": profile.to_dict(),
                               "l1_hu_first_last": [losses[0], float(np.mean(losses[-10:]))] if losses else None}}
    return net


def super_resolve_z(volume: Volume, scale: int = 2, model: Union[str, object, None] = None,
                    device: Optional[str] = None, progress: ProgressFn = None, cancel=None,
                    tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP,
                    tile_batch: int = DEFAULT_TILE_BATCH, quantum_backend: Optional[str] = None,
                    fine_tune_steps: int = 0, planes: Sequence[str] = ("coronal", "sagittal"),
                    seed: int = 0) -> Volume:
    """Through-plane super-resolution by ``scale`` (2, 3 or 4); a new Volume over the same region.

    ``model``: a shipped name or weights file, a loaded network, or None for the default
    (``hqgan-srz{scale}``). Without an installed model and without ``fine_tune_steps`` a
    :class:`NoThroughPlaneModel` (ValueError) says what to do. ``fine_tune_steps > 0`` first
    trains the model (a fresh one when none is installed) on this volume's own in-plane data.
    ``metadata["super_resolution"]`` records the axis, scale, model, slice profile and fine-tuning.
    """
    require_finite(volume, "super_resolve")
    scale = check_scale(scale)
    if volume.shape[0] < 2:
        raise ValueError("through-plane super-resolution needs at least 2 slices; this volume has 1")
    if volume.metadata.get("resampled_z"):
        raise ValueError("through-plane super-resolution needs the slices as acquired, one thickness on one regular "
                         "grid (the model restores a known slice profile); this volume was resampled along z: read "
                         "one regular block of the series instead (read_volume(..., series_block=N), --series-block N)")
    if has_own_positions(volume):
        raise ValueError("through-plane super-resolution needs the slices as acquired on one regular grid (the model "
                         "restores a known slice profile); these slices lie at uneven positions: read one regular "
                         "block of the series instead (read_volume(..., series_block=N), --series-block N)")
    fine_tune_steps = int(fine_tune_steps)
    if fine_tune_steps < 0:
        raise ValueError(f"fine_tune_steps must be >= 0, got {fine_tune_steps}")
    from ..core.devices import pick_device

    device = pick_device(device)
    check_cancel(cancel)
    profile = slice_profile(volume, scale)
    net = resolve_z_model(model, scale, device, quantum_backend, allow_missing=fine_tune_steps > 0)
    card = dict(getattr(net, "card", None) or {})
    start = 0.0
    if fine_tune_steps > 0:
        start = 0.7
        report(progress, 0.0, f"fine-tuning on this volume ({fine_tune_steps} steps)")
        net = fine_tune(net, volume, scale, steps=fine_tune_steps, device=device, seed=seed,
                        progress=sub_progress(progress, 0.0, start), cancel=cancel)
        card = dict(net.card)
    else:
        trained_width = float(card.get("slice_profile_width_px", scale))
        if not 1 / PROFILE_TOLERANCE <= profile.width_px / trained_width <= PROFILE_TOLERANCE:
            note = (f"the input's slice profile (box {profile.thickness_mm:g} mm every {profile.spacing_mm:g} mm: "
                    f"{profile.width_px:.2f} thin slices) differs from the model's training ({trained_width:.2f}): "
                    "fine-tune on this volume (fine_tune_steps) for a matching model")
            warnings.warn(note, UserWarning, stacklevel=3)
            card["profile_warning"] = note
    order = INTERPOLATION_ORDER.get(card.get("interpolation", "linear"), 1)
    fine = upsample_along_axis(np.clip(volume.array, HU_MIN, HU_MAX), scale, axis=0, order=order)
    array = apply_planes(net, fine, planes=planes, progress=sub_progress(progress, start, 1.0), cancel=cancel,
                         device=device, quantum_backend=quantum_backend, tile_size=tile_size, overlap=overlap,
                         tile_batch=tile_batch)
    spacing, origin = super_resolved_geometry(volume, scale, axis="z")
    name = card.get("name", type(net).__name__)
    result = carry_padding(volume, volume.with_geometry(array, spacing, origin,
                                                        note=f"super-resolved x{scale} along z by {name}"))
    result.metadata["super_resolution"] = {"axis": "z", "scale": scale, "model": name, "planes": list(planes),
                                           "slice_profile": profile.to_dict(), "fine_tune_steps": fine_tune_steps}
    if "profile_warning" in card:
        result.metadata["warnings"] = list(result.metadata.get("warnings", [])) + [card["profile_warning"]]
    if isinstance(result.metadata.get("dicom"), dict):
        result.metadata["dicom"] = {**result.metadata["dicom"], "SliceThickness": f"{spacing[2]:g}"}
    report(progress, 1.0, "done")
    return result


def interpolate_z(volume: Volume, scale: int = 2, order: int = 1) -> Volume:
    """The classical reference: ``volume`` interpolated along z onto the same thin grid as
    :func:`super_resolve_z` (``order`` 1 linear, 3 cubic B-spline)."""
    require_finite(volume, "interpolate_z")
    scale = check_scale(scale)
    spacing, origin = super_resolved_geometry(volume, scale, axis="z")
    array = upsample_along_axis(volume.array, scale, axis=0, order=order)
    return carry_padding(volume, volume.with_geometry(
        array, spacing, origin, note=f"{'linear' if order == 1 else 'cubic'} interpolation x{scale} along z"))


def thin_grid(volume: Volume, scale: int) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    """(spacing, origin) of the thin grid of ``volume`` (the same as the output of :func:`super_resolve_z`)."""
    return super_resolved_geometry(volume, check_scale(scale), axis="z")
