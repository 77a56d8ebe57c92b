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

Orientation: the networks work on axial planes; a volume stored coronally or sagittally is
processed on its axial planes and stored back in its own order (:mod:`QHQGANLib.core.orientation`).

Padding: the voxels outside the reconstruction circle (DICOM PixelPaddingValue, ``metadata["padding_hu"]``,
:mod:`QHQGANLib.core.padding`) get their padding value back in every output (for a finer grid, the mask
resampled by nearest neighbour), whatever the network made of them.

Geometry: ``enhance`` keeps the grid. ``super_resolve`` divides the in-plane spacing
by the scale and moves the origin so the physical region covered by the voxels is
unchanged: with ``origin`` the centre of the first voxel, the new first centre sits
``(s - 1) / (2 s)`` of an old pixel before the old one along each in-plane axis.

Console usage::

    >>> import QHQGANLib as q
    >>> low = q.read_volume("low_dose_series/")
    >>> better = q.enhance(low, model="hqgan-enhance")           # same grid, HU
    >>> sharper = q.super_resolve(low, scale=2)                   # 2x finer in-plane
    >>> thin = q.super_resolve(thick, scale=3, axis="z")          # 3x thinner slices (through-plane)
"""
from __future__ import annotations

import warnings
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from ..core.constants import HU_MAX, HU_MIN
from ..core.kinds import default_model
from ..core.orientation import to_axial
from ..core.padding import carry_padding
from ..core.progress import sub_progress
from ..core.volume import Volume
from .geometry import super_resolved_geometry
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE, DEFAULT_TILE_BATCH, run_model


def enhance(volume: Volume, model: Union[str, object] = default_model("enhance"), device: Optional[str] = None,
            progress: Optional[Callable[[float, str], None]] = None, cancel=None,
            tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP, tile_batch: int = DEFAULT_TILE_BATCH,
            quantum_backend: Optional[str] = None, strength: float = 1.0,
            target_noise_hu: Optional[float] = None, adapt_steps: int = 0,
            adapt_time_limit: float = 600.0) -> Volume:
    """Denoise a (low-dose) CT with an enhancement model; a new Volume on the same grid.

    ``strength`` (0-1) sets how much of the model's change is applied: the output is
    ``input + strength x (model output - input)``. 0 returns the input, 1 the model's output;
    in between the noise falls steadily and the image keeps the input's own noise texture
    (the remaining noise is the input's, scaled), which readers find less "waxy" than a fully
    denoised image; vendors' low / medium / high levels blend the same way. ``target_noise_hu``
    ("auto") picks the strength whose output has that noise (HU, std in uniform soft tissue,
    :func:`QHQGANLib.physics.calibration.estimate_noise`); the strength used and the noise before
    and after are in ``metadata["enhancement"]``.

    ``adapt_steps`` > 0 first adapts a copy of the model to this scan (:mod:`QHQGANLib.tasks.adapt`:
    self-supervised fine-tuning on the scan recorrupted with noise of its own measured texture and
    level) for that many updates or ``adapt_time_limit`` seconds, whichever comes first; what it did
    is in ``metadata["enhancement"]["adaptation"]``. Progress runs over both parts; cancel stops either.

    Example::

        >>> medium = enhance(low, strength=0.5)
        >>> auto = enhance(low, target_noise_hu=15.0)
        >>> auto.metadata["enhancement"]["strength"]
        >>> adapted = enhance(low, adapt_steps=300)       # fitted to this scan's noise first
    """
    axial, undo = to_axial(volume)
    if axial is not volume:  # coronal or sagittal storage: the model works on axial planes (issue #28)
        return undo(enhance(axial, model, device, progress, cancel, tile_size, overlap, tile_batch, quantum_backend,
                            strength, target_noise_hu, adapt_steps, adapt_time_limit))
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if target_noise_hu is not None and not 0.5 <= float(target_noise_hu) <= 200.0:
        raise ValueError(f"target_noise_hu must be in [0.5, 200] HU, got {target_noise_hu}")
    adapt_steps = int(adapt_steps)
    if not 0 <= adapt_steps <= 5000:
        raise ValueError(f"adapt_steps must be in [0, 5000], got {adapt_steps}")
    net_name = model if isinstance(model, str) else type(model).__name__
    if strength == 0.0 and target_noise_hu is None:  # the input unchanged: no model run needed
        return volume.with_array(volume.array.copy(), note=f"enhancement strength 0 ({net_name} not applied)")
    before = enhancement_notes(volume, model)  # said before the work (the CLI prints them first)
    for note in before:
        warnings.warn(note, UserWarning, stacklevel=2)
    adaptation, run_progress = None, progress
    if adapt_steps:
        from .adapt import adapt_model

        model, adaptation = adapt_model(volume, model, adapt_steps, max_seconds=float(adapt_time_limit),
                                        device=device, quantum_backend=quantum_backend,
                                        progress=sub_progress(progress, 0.0, 0.7), cancel=cancel)
        run_progress = sub_progress(progress, 0.7, 1.0)
        net_name += f" adapted to this scan ({adaptation['steps']} updates)"
    array = run_model(volume, model, device=device, quantum_backend=quantum_backend, tile_size=tile_size,
                      overlap=overlap, tile_batch=tile_batch, progress=run_progress, cancel=cancel)
    if array.shape != volume.shape:
        raise ValueError(f"model {net_name} changes the grid (a super-resolution model?): use super_resolve")
    info = {"strength": strength, "target_noise_hu": target_noise_hu}
    if adaptation is not None:
        info["adaptation"] = adaptation
    notes = list(before)
    if target_noise_hu is not None:
        info.update(strength_for_noise(volume, array, float(target_noise_hu)))
        strength = info["strength"]
        if float(target_noise_hu) >= info["noise_hu_input"]:
            notes.append(f"the target noise {target_noise_hu:g} HU is not below the input's "
                         f"{info['noise_hu_input']:.1f} HU: the input is returned unchanged (strength 0)")
        elif info["noise_hu_full_strength"] > float(target_noise_hu):
            notes.append(f"the target noise {target_noise_hu:g} HU cannot be reached: {net_name} leaves "
                         f"{info['noise_hu_full_strength']:.1f} HU at full strength (strength 1 used)")
    if strength < 1.0:
        array = blend(volume.array, array, strength)
    result = carry_padding(volume, volume.with_array(array, note=f"enhanced by {net_name}"
                                                     + (f" at strength {strength:.2f}" if strength < 1.0 else "")))
    result.metadata["enhancement"] = info
    if adaptation is not None and "stopped" in adaptation:
        notes.append(f"adaptation stopped early: {adaptation['stopped']}")
    if adaptation is not None and adaptation.get("warning"):  # the model card's advice (tasks.adapt.card_advice)
        notes.append(adaptation["warning"])
    if notes:
        result.metadata["warnings"] = list(result.metadata.get("warnings", [])) + notes
    return result


def blend(original: np.ndarray, enhanced: np.ndarray, strength: float) -> np.ndarray:
    """``original + strength x (enhanced - original)`` in float32, the original clipped to the CT range."""
    base = np.clip(original, HU_MIN, HU_MAX).astype(np.float32)
    return base + np.float32(strength) * (enhanced.astype(np.float32) - base)


def strength_for_noise(volume: Volume, enhanced: np.ndarray, target_hu: float, steps: int = 12) -> dict:
    """The strength whose blend has ``target_hu`` of noise (bisection on the measured noise, which falls
    as the strength grows). A target above the input's noise gives 0; below the model's, 1."""
    from ..physics.calibration import estimate_noise, sample_slices

    pixel = 0.5 * (volume.spacing[0] + volume.spacing[1])
    nz, ny, nx = volume.shape
    chosen = sample_slices(nz, ny * nx)  # the same slices for every measurement

    def noise(s: float) -> float:
        return estimate_noise(blend(volume.array, enhanced, s), pixel_mm=pixel, slices=chosen).noise_hu

    before, after = noise(0.0), noise(1.0)
    if not (np.isfinite(before) and np.isfinite(after)):
        raise ValueError("the image's noise cannot be measured (no uniform soft tissue found): "
                         "give strength instead of target_noise_hu")
    if target_hu >= before:
        s = 0.0
    elif target_hu <= after:
        s = 1.0
    else:
        low, high = 0.0, 1.0
        for _ in range(steps):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if noise(mid) > target_hu else (low, mid)
        s = 0.5 * (low + high)
    return {"strength": round(s, 4), "target_noise_hu": target_hu, "noise_hu_input": before,
            "noise_hu_full_strength": after, "noise_hu_output": noise(s)}


def super_resolve(volume: Volume, scale: int = 2, model: Union[str, object, None] = None,
                  device: Optional[str] = None, progress: Optional[Callable[[float, str], None]] = None,
                  cancel=None, tile_size: int = DEFAULT_TILE, overlap: float = DEFAULT_OVERLAP,
                  tile_batch: int = DEFAULT_TILE_BATCH, quantum_backend: Optional[str] = None,
                  axis: str = "in-plane", fine_tune_steps: int = 0) -> Volume:
    """Super-resolution by ``scale``; a new Volume covering the same physical region.

    ``axis="in-plane"`` (default): x2 in-plane. A model sees inputs at the pixel size it was trained
    on (its card's ``input_spacing_mm``; the shipped x2 models: about 1.4-2.0 mm, normal CT degraded
    by 2). Far from it the output overshoots (bright rims, lifted table): a ``UserWarning`` says so,
    the output's metadata keeps the warning, and values stay within the CT range.

    ``axis="z"``: through-plane, thick slices to ``scale`` (2, 3, 4) times thinner ones, optionally
    after ``fine_tune_steps`` updates on the volume itself (:mod:`QHQGANLib.tasks.through_plane`).
    """
    if axis == "z":
        from .through_plane import super_resolve_z

        return super_resolve_z(volume, scale, model=model, device=device, progress=progress, cancel=cancel,
                               tile_size=tile_size, overlap=overlap, tile_batch=tile_batch,
                               quantum_backend=quantum_backend, fine_tune_steps=fine_tune_steps)
    if axis != "in-plane":
        raise ValueError(f"axis must be 'in-plane' or 'z', got {axis!r}")
    axial, undo = to_axial(volume)
    if axial is not volume:  # "in-plane" means the axial plane, whatever the storage order (issue #28)
        return undo(super_resolve(axial, scale, model, device, progress, cancel, tile_size, overlap, tile_batch,
                                  quantum_backend, axis, fine_tune_steps))
    if fine_tune_steps:
        raise ValueError("fine_tune_steps is for through-plane super-resolution (axis='z') only")
    if model is None:
        model = default_model("super-resolve", scale=scale)
    net_name = model if isinstance(model, str) else type(model).__name__
    if _model_card(model).get("axis") == "z":
        raise ValueError(f"{net_name} is a through-plane (thick -> thin slice) model: use axis='z' "
                         "(qhqgan super-resolve --axis z)")
    note = spacing_warning(volume, _input_spacing_range(model, scale))
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    array = run_model(volume, model, device=device, quantum_backend=quantum_backend, tile_size=tile_size,
                      overlap=overlap, tile_batch=tile_batch, progress=progress, cancel=cancel)
    nz, ny, nx = volume.shape
    if array.shape != (nz, ny * scale, nx * scale):
        raise ValueError(f"model {net_name} does not upscale by {scale} (output {array.shape[1:]} "
                         f"for input {(ny, nx)})")
    spacing, origin = super_resolved_geometry(volume, scale)
    result = carry_padding(volume, volume.with_geometry(array, spacing, origin,
                                                        note=f"super-resolved x{scale} by {net_name}"))
    if note:
        result.metadata["warnings"] = list(result.metadata.get("warnings", [])) + [note]
    return result


#: In-plane pixel size (mm) of the inputs the shipped x``scale`` models were trained on: normal-dose
#: CT of 0.70-0.98 mm degraded by ``scale`` (used when a model card does not say).
TRAINING_PIXEL_MM = (0.70, 0.98)
#: How far outside the training range an input may lie before the warning (a factor either side).
SPACING_TOLERANCE_FACTOR = 1.35


def _model_card(model) -> dict:
    """The card of a loaded model or of a shipped model's name ({} when there is none)."""
    card = getattr(model, "card", None)
    if card is None and isinstance(model, str):
        from ..core.resources import model_cards

        card = next((c for c in model_cards() if c.get("name") == model), None)
    return card or {}


def _input_spacing_range(model, scale: int) -> Tuple[float, float]:
    given = _model_card(model).get("input_spacing_mm")
    if given and len(given) == 2:
        return float(given[0]), float(given[1])
    return TRAINING_PIXEL_MM[0] * scale, TRAINING_PIXEL_MM[1] * scale


def enhancement_notes(volume: Volume, model) -> List[str]:
    """Before an enhancement (issue #31): a sentence each when the input's in-plane pixel size, or its noise
    in uniform soft tissue, lies far (beyond :data:`SPACING_TOLERANCE_FACTOR`) outside what the model was
    trained on (its card's ``input_spacing_mm`` and ``input_noise_hu``); nothing for a card that does not say."""
    card, notes = _model_card(model), []
    given = card.get("input_spacing_mm")
    if given and len(given) == 2:
        note = spacing_warning(volume, (float(given[0]), float(given[1])), task="enhancement")
        notes += [note] if note else []
    noise = card.get("input_noise_hu")
    if noise and len(noise) == 2:
        from ..physics.calibration import estimate_noise

        measured = estimate_noise(volume).noise_hu
        low, high = float(noise[0]) / SPACING_TOLERANCE_FACTOR, float(noise[1]) * SPACING_TOLERANCE_FACTOR
        if measured is not None and np.isfinite(measured) and not low <= measured <= high:
            side = "below the least noisy" if measured < low else "above the noisiest"
            notes.append(f"the input's noise in uniform soft tissue, {measured:.1f} HU, is {side} training input "
                         f"({float(noise[0]):.0f}-{float(noise[1]):.0f} HU): "
                         + ("the model may smooth away real detail; compare with the input or lower the strength"
                            if measured < low else "noise may be left in; compare with the input"))
    return notes


def spacing_warning(volume: Volume, trained: Tuple[float, float], task: str = "super-resolution") -> Optional[str]:
    """A sentence when the input's in-plane pixel size lies far outside the model's training range, else None."""
    pixel = max(volume.spacing[0], volume.spacing[1])
    low, high = trained[0] / SPACING_TOLERANCE_FACTOR, trained[1] * SPACING_TOLERANCE_FACTOR
    if low <= pixel <= high:
        return None
    if task == "enhancement":
        return (f"the input's pixel size {pixel:.2f} mm is far from the {trained[0]:.2f}-{trained[1]:.2f} mm of the "
                "scans the enhancement model was trained on: expect a pixel-level pattern or noise left in; compare "
                "the result with the input, or resample the input nearer that range first")
    return (f"the input's pixel size {pixel:.2f} mm is far from the {trained[0]:.2f}-{trained[1]:.2f} mm the "
            f"super-resolution model was trained on: expect overshoot (bright rims, shifted background). "
            f"{'Resample the input to about ' + format(sum(trained) / 2, '.1f') + ' mm first' if pixel < low else 'Use an input nearer the training resolution'}, "
            "or treat the result with care")
