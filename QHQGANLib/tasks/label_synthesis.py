"""Synthetic CT from a label map: several samples of one anatomy, always marked synthetic (issue #30, item 1).

:func:`synthesize_from_labels` renders a label map with a label-conditioned generator
(:mod:`QHQGANLib.nn.label_synthesis`; trained by :func:`QHQGANLib.training.label_synthesis.train_from_labels`).

* **Input**: a label Volume of tissue classes 0-6 (:data:`QHQGANLib.physics.tissue_classes.TISSUE_CLASSES`,
  e.g. ``tissue_labels`` of a CT), or a user's own label map / a Slicer segmentation exported as a labelmap
  with ``mapping={value: class}`` recoding its values. Values that are not whole numbers, or not classes
  after the mapping, are refused with one line naming them (:func:`~QHQGANLib.physics.tissue_classes.class_codes`).
  A map without any body tissue (no voxel of classes 2-6) is refused.
* **Orientation**: a map stored coronally or sagittally is rendered on its axial planes
  (:func:`QHQGANLib.core.orientation.to_axial`, an exact permutation) and every sample is returned in the
  map's own storage order and grid.
* **Geometry**: like training (:func:`QHQGANLib.training.slices.crop_boxes`), each axial slice is cropped
  to its own square around the body (:func:`~QHQGANLib.core.crops.square_box`:
  :data:`~QHQGANLib.core.crops.CROP_MARGIN` x the larger extent, aspect kept), resampled in-plane
  to the model size, rendered, and resampled back (linear) onto the map's grid. Training boxes the voxels
  above -500 HU; here the classes that hold them, :data:`BOX_CLASSES` (lung, fat, soft tissue, enhanced
  tissue, bone: class 0 is outside, 1 gas inside the body; lung and gas lie inside the body and set no
  extent). The couch, above -500 HU in training but class 0 in a map, is the one difference: on the chest
  slice of the tests the map's box is 357 mm, training's 437 mm. Training skips slices with less than 5 %
  body (:data:`MIN_BODY_FRACTION`); such a slice here (an end of the body) takes the box of the nearest
  slice that has more, so it is drawn at the scale of its neighbours, not magnified. Every slice is
  rendered (z as given; the 2.5D context of a ``context`` > 0 model is the neighbouring slices in the
  centre slice's box, the end slices repeated, as in training). Outside its box each slice holds the
  median of what the model drew for class 0 in it. The result has the label map's shape, spacing, origin
  and direction, and none of its other metadata (it is no real patient's image).
* **Scale check**: a slice's box side / the model size is the pixel size the model draws it at; when any
  slice's is more than 2x from the model card's ``pixel_spacing_mm`` (the training crops') the map is
  refused with a message naming it, unless ``force=True`` (the anatomy would be drawn at a scale the model
  never saw). A model whose card records no pixel size is not checked (the history says so).
* **Samples**: a **list** of ``n`` Volumes, one per sample, each on the label map's grid (one sample is one
  synthetic scan: the same style, i.e. contrast and texture character, in all its slices). Sample ``i``'s
  style latent is drawn from ``seed`` and ``i``, and the noise images of its slice ``k`` from ``seed``,
  ``i`` and ``k`` (on the CPU), so a sample does not depend on ``n``, the batch size or the device (up to
  float rounding): the same seed gives the same samples, another seed others. Seeds are whole numbers from
  0 to 2**32 - 1 (others are refused, not folded onto these).
* **Mark**: ``metadata["synthetic"] = True`` (every file written carries it, :mod:`QHQGANLib.core.io`), a
  ``SYNTHETIC_...`` name and a history note (model, seed, sample, pixel sizes, boxes).
* **Model**: a model object given is used as it is and left so: its device, mode (train / eval) and
  quantum backend are not changed (a copy is moved or switched when needed); a name or weights file
  (``str`` or ``pathlib.Path``) is loaded.

Console usage::

    >>> import QHQGANLib as q
    >>> labels = q.tissue_labels(q.read_volume("abdomen.nrrd"))             # or a painted label map
    >>> samples = q.synthesize_from_labels(labels, model="runs/hqgan-labels.safetensors", n=4, seed=0)
    >>> q.write_volume(samples[0], "abdomen_synthetic.nrrd")               # marked synthetic in the header
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..core.constants import HU_MIN, __version__
from ..core.devices import pick_device
from ..core.kinds import LABEL_SYNTH_DEFAULT_MODEL
from ..core.naming import output_name
from ..core.orientation import to_axial
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..core.crops import square_box, take_crop
from ..nn.label_synthesis import LabelGenerator, encode_labels, label_channels
from ..nn.synthesis import unit_to_hu
from ..physics.tissue_classes import BONE, ENHANCED, FAT, LUNG, OUTSIDE, SOFT, class_codes

#: A slice's pixel size at the model size may differ from the model card's by at most this factor.
MAX_SCALE_RATIO = 2.0
#: The classes whose voxels lie above -500 HU, where training's body boxes come from (module doc).
BOX_CLASSES = (LUNG, FAT, SOFT, ENHANCED, BONE)
#: Training skips slices with less body than this (label_training_pairs' default); here they borrow a box.
MIN_BODY_FRACTION = 0.05
#: Seeds are whole numbers in [0, SEED_LIMIT).
SEED_LIMIT = 2 ** 32

Box = Tuple[np.ndarray, np.ndarray, float]


def synthesize_from_labels(labels: Volume, model: Union[str, "os.PathLike[str]", LabelGenerator, None] = None,
                           n: int = 1, seed: int = 0, *, mapping: Optional[Mapping[float, int]] = None,
                           force: bool = False, progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                           batch_size: int = 16, quantum_backend: Optional[str] = None,
                           device: Optional[str] = None) -> List[Volume]:
    """``n`` synthetic CT Volumes rendered from the label map ``labels`` (module doc); ``labels`` is not modified.

    ``model``: a label-conditioned generator (not modified), or the name / weights file of one (default
    ``hqgan-labels``, none shipped yet); ``mapping``: {label value: class 0-6}; ``force``: render a map
    with slices whose scale is more than 2x from the model's; ``device``: ``cpu``, ``cuda`` or None/``auto``.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_seed(seed)
    if not isinstance(labels, Volume):
        raise TypeError(f"labels must be a Volume (a label map with its grid), got {type(labels).__name__}")
    axial, undo = to_axial(labels)
    codes = class_codes(axial, mapping)
    device = pick_device(device)
    model, owned = _load(model, device, quantum_backend)
    boxes, borrowed = slice_boxes(codes, axial.spacing)
    pixel_mm = np.array([side for _, _, side in boxes]) / model.size
    scale_note = _check_scale(model, pixel_mm, force)
    encoded = _encode(codes, boxes, model.size, model.context)
    name, n = _model_name(model), int(n)
    geometry = _geometry_note(pixel_mm, boxes, borrowed, scale_note)
    out = []
    with _inference(model, device, owned) as net:
        for i in range(n):
            images = _render(net, encoded, seed, i, n, int(batch_size), device, progress, cancel)
            out.append(_volume(_paste(images, codes, boxes), axial, name, seed, i, n, pixel_mm, geometry))
    return [undo(volume) for volume in out]


def check_seed(seed) -> int:
    """``seed`` as an int: a whole number from 0 to 2**32 - 1 (others would collide with these: refused)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a whole number from 0 to {SEED_LIMIT - 1}, got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed must be from 0 to {SEED_LIMIT - 1} (2**32 - 1), got {int(seed)}")
    return int(seed)


def _load(model, device: str, quantum_backend: Optional[str]) -> Tuple[LabelGenerator, bool]:
    """(the model, whether it is this call's own: loaded here or copied) ; a caller's model is never changed."""
    owned = model is None or isinstance(model, (str, os.PathLike))
    if owned:
        from ..nn.weights import load_model

        name = model or LABEL_SYNTH_DEFAULT_MODEL
        try:
            model = load_model(name, device=device, quantum_backend=quantum_backend)
        except ValueError as exc:
            if model is None and str(exc).startswith("no model named"):
                raise ValueError(f"no label-conditioned model is shipped yet ({LABEL_SYNTH_DEFAULT_MODEL!r}): train "
                                 "one (qhqgan train-from-labels --input CT --save-model PATH) and give it as model= "
                                 "(--model PATH.safetensors)") from None
            raise
    if not isinstance(model, LabelGenerator):
        raise TypeError(f"{type(model).__name__} is not a label-conditioned model (train one with "
                        "qhqgan train-from-labels)")
    if quantum_backend and not owned:
        from ..nn.build import set_quantum_backend

        model, owned = copy.deepcopy(model), True  # the caller's keeps its backend
        set_quantum_backend(model, quantum_backend)
    return model, owned


@contextlib.contextmanager
def _inference(model: LabelGenerator, device: str, owned: bool):
    """The model in eval mode on ``device``; a caller's model comes back as it was (a copy moves when it
    lives elsewhere; the train / eval flag of each of its modules is restored)."""
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.device.type != target.type or (target.index is not None and t.device.index != target.index)
           for t in tensors):
        model = (model if owned else copy.deepcopy(model)).to(target)
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _model_name(model: LabelGenerator) -> str:
    card = getattr(model, "card", None) or {}
    return str(card.get("name", model.config["arch"]))


def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([check_seed(seed), *keys]).generate_state(1)[0])


def _noise(model: LabelGenerator, seed: int, sample: int, ks) -> Optional[List[torch.Tensor]]:
    """The noise images of slices ``ks`` of ``sample``: each slice's from its own seeded stream (CPU)."""
    if not model.config["pixel_noise"]:
        return None
    per_slice = [model.draw_noise(1, torch.Generator().manual_seed(_seed(seed, sample, k))) for k in ks]
    return [torch.cat(layer) for layer in zip(*per_slice)]


def _render(model: LabelGenerator, encoded: np.ndarray, seed: int, i: int, n: int, batch_size: int, device: str,
            progress, cancel) -> np.ndarray:
    """Sample ``i``: every slice's box (z, size, size) in HU."""
    nz = encoded.shape[0]
    latent = model.sample_latent(1, torch.Generator().manual_seed(_seed(seed, i)))
    images = []
    with torch.inference_mode():
        for start in range(0, nz, batch_size):
            check_cancel(cancel)
            ks = range(start, min(start + batch_size, nz))
            noise = _noise(model, seed, i, ks)
            batch = torch.from_numpy(encoded[start:ks.stop]).to(device).float() / 255.0
            result = model(batch, latent.expand(len(ks), -1).to(device),
                           noise=None if noise is None else [x.to(device) for x in noise])
            images.append(unit_to_hu(result[:, 0].float().cpu().numpy()))
            report(progress, (i * nz + ks.stop) / (n * nz), f"sample {i + 1}/{n}, slice {ks.stop}/{nz}")
    return np.concatenate(images)


def slice_boxes(codes: np.ndarray, spacing, min_body_fraction: float = MIN_BODY_FRACTION) -> Tuple[List[Box], int]:
    """(every axial slice's square crop ``(rows, columns, side mm)``, how many slices borrowed a neighbour's).

    A slice with at least ``min_body_fraction`` of :data:`BOX_CLASSES` gets :func:`square_box` around them
    (training's box, module doc); the others take the nearest such slice's (the lower on a tie). When no
    slice has that much, every slice with any body counts. A map without any is refused.
    """
    body = np.isin(codes, BOX_CLASSES)
    fractions = body.mean(axis=(1, 2))
    usable = np.flatnonzero(fractions >= min_body_fraction)
    if not usable.size:
        usable = np.flatnonzero(fractions > 0)
    if not usable.size:
        raise ValueError("the label map holds no body (no voxel of lung, fat, soft tissue, enhanced tissue or "
                         "bone): nothing to render")
    own = {int(k): square_box(body[k], spacing) for k in usable}
    nearest = [int(usable[np.argmin(np.abs(usable - k))]) for k in range(codes.shape[0])]
    return [own[j] for j in nearest], sum(j != k for k, j in enumerate(nearest))


def _check_scale(model: LabelGenerator, pixel_mm: np.ndarray, force: bool) -> str:
    card = getattr(model, "card", None) or getattr(model, "training_pixel_spacing", None) or {}
    trained = card.get("pixel_spacing_mm")
    if trained is None:
        return "not checked: the model's card records no pixel size"
    trained = float(trained)
    ratio = pixel_mm / trained
    outside = np.flatnonzero((ratio < 1.0 / MAX_SCALE_RATIO) | (ratio > MAX_SCALE_RATIO))
    if outside.size and not force:
        k = int(outside[np.argmax(np.abs(np.log(ratio[outside])))])
        raise ValueError(f"{outside.size} of the label map's {ratio.size} axial slice(s) would be drawn more than "
                         f"{MAX_SCALE_RATIO:g}x from the model's training pixel size {trained:.2f} mm (axial slice "
                         f"{k}: its body box at {pixel_mm[k]:.2f} mm per pixel, {ratio[k]:.2f}x): the anatomy would be "
                         "drawn at a scale the model never saw; check the map's spacing, or pass force=True (--force) "
                         "to render it anyway")
    return (f"{ratio.min():.2f}x to {ratio.max():.2f}x the model's training pixel size {trained:g} mm"
            + (f", forced for {outside.size} slice(s)" if outside.size else ""))


def _encode(codes: np.ndarray, boxes: Sequence[Box], size: int, context: int) -> np.ndarray:
    """(z, 7 * (2 * context + 1), size, size) uint8: every slice's box, its neighbours' in it (training's order)."""
    nz = codes.shape[0]
    out = np.empty((nz, label_channels(context), size, size), np.uint8)
    for k, (ys_idx, xs_idx, _) in enumerate(boxes):
        order = [k] + [min(max(k + d, 0), nz - 1) for d in range(-context, context + 1) if d != 0]
        out[k] = encode_labels(np.stack([take_crop(codes[j], ys_idx, xs_idx, OUTSIDE) for j in order]), size)
    return out


def _paste(images: np.ndarray, codes: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The rendered boxes (z, size, size) HU resampled back onto the label map's grid; outside its box each
    slice holds the median of its class-0 pixels (-1024 HU where it drew none)."""
    from skimage.transform import resize

    nz, ny, nx = codes.shape
    out = np.empty(codes.shape, np.float32)
    for k, (ys_idx, xs_idx, _) in enumerate(boxes):
        shape = (len(ys_idx), len(xs_idx))
        back = resize(images[k].astype(np.float64), shape, order=1, preserve_range=True,
                      anti_aliasing=shape[0] < images.shape[1])
        vy, vx = (ys_idx >= 0) & (ys_idx < ny), (xs_idx >= 0) & (xs_idx < nx)
        inside = back[np.ix_(vy, vx)]
        outside = inside[codes[k][np.ix_(ys_idx[vy], xs_idx[vx])] == OUTSIDE]
        out[k] = float(np.median(outside)) if outside.size else HU_MIN
        out[k][np.ix_(ys_idx[vy], xs_idx[vx])] = inside
    return out


def _geometry_note(pixel_mm: np.ndarray, boxes: Sequence[Box], borrowed: int, scale_note: str) -> str:
    sides = np.array([side for _, _, side in boxes])
    lent = f", {borrowed} slice(s) with under {MIN_BODY_FRACTION:.0%} body in a neighbour's box" if borrowed else ""
    return (f"body boxes per axial slice {sides.min():.0f}-{sides.max():.0f} mm drawn at {pixel_mm.min():.2f}-"
            f"{pixel_mm.max():.2f} mm per pixel{lent} (scale: {scale_note})")


def _volume(array, labels: Volume, name: str, seed: int, sample: int, n: int, pixel_mm: np.ndarray,
            geometry: str) -> Volume:
    base = output_name("synthesize", model=f"{name}", seed=seed)
    note = (f"synthesized from a label map ({labels.shape[0]} axial slice(s)) by {name} (QHQGANLib {__version__}), "
            f"seed {seed}, sample {sample} of {n}; {geometry}")
    metadata = {"synthetic": True, "name": base + (f"_sample{sample}" if n > 1 else ""), "history": [note],
                "model": name, "seed": int(seed), "sample": int(sample), "conditioned_on": "label map",
                "model_pixel_spacing_mm": round(float(np.median(pixel_mm)), 4),
                "slice_pixel_spacing_mm": [round(float(p), 4) for p in pixel_mm]}
    return Volume(array, labels.spacing, labels.origin, labels.direction.copy(), metadata)
