"""Synthetic CT from a label map: several samples of one anatomy, always marked synthetic (issue #30, item 1).

:func:`synthesize_from_labels` renders a label map with a label-conditioned generator
(:mod:`QHQGANLib.nn.label_synthesis`; trained by :func:`QHQGANLib.training.label_synthesis.train_from_labels`).

* **Input**: a label Volume of tissue classes 0-6 (:data:`QHQGANLib.physics.tissue_classes.TISSUE_CLASSES`,
  e.g. ``tissue_labels`` of a CT), or a user's own label map / a Slicer segmentation exported as a labelmap
  with ``mapping={value: class}`` recoding its values. Values that are not whole numbers, or not classes
  after the mapping, are refused with one line naming them (:func:`~QHQGANLib.physics.tissue_classes.class_codes`).
  A map without any body (all 0) is refused.
* **Geometry**: like training, the square around the body (the union over all slices of the voxels not
  0, x :data:`~QHQGANLib.nn.label_synthesis.CROP_MARGIN`, one box for the whole volume, so every slice
  has the same scale) is resampled in-plane to the model size, rendered, and resampled back (linear) onto
  the label map's grid; every slice is rendered (z as given; the 2.5D context of a ``context`` > 0 model
  is the neighbouring slices, the end slices repeated). Outside the box (all class 0) each slice holds the
  median of what the model drew for class 0 in it. The result has the label map's shape, spacing, origin
  and direction, and none of its other metadata (it is no real patient's image).
* **Scale check**: the box's side / the model size is the pixel size the model draws at; a label map
  whose pixel size there is more than 2x from the model card's ``pixel_spacing_mm`` (the training crops')
  is refused with a message unless ``force=True`` (the anatomy would be drawn at a scale the model never
  saw). A model whose card records no pixel size is not checked (the history says so).
* **Samples**: a **list** of ``n`` Volumes, one per sample, each on the label map's grid (one sample is one
  synthetic scan: the same style, i.e. contrast and texture character, in all its slices). Sample ``i``'s
  style latent is drawn from ``seed`` and ``i``, and the noise images of its slice ``k`` from ``seed``,
  ``i`` and ``k`` (on the CPU), so a sample does not depend on ``n``, the batch size or the device (up to
  float rounding): the same seed gives the same samples, another seed others.
* **Mark**: ``metadata["synthetic"] = True`` (every file written carries it, :mod:`QHQGANLib.core.io`), a
  ``SYNTHETIC_...`` name and a history note (model, seed, sample, pixel size, box).

Console usage::

    >>> import QHQGANLib as q
    >>> labels = q.tissue_labels(q.read_volume("abdomen.nrrd"))             # or a painted label map
    >>> samples = q.synthesize_from_labels(labels, model="runs/hqgan-labels.safetensors", n=4, seed=0)
    >>> q.write_volume(samples[0], "abdomen_synthetic.nrrd")               # marked synthetic in the header
"""
from __future__ import annotations

from typing import Callable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..core.constants import HU_MIN, __version__
from ..core.devices import pick_device
from ..core.kinds import LABEL_SYNTH_DEFAULT_MODEL
from ..core.naming import output_name
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.label_synthesis import CROP_MARGIN, LabelGenerator, encode_labels
from ..nn.synthesis import unit_to_hu
from ..physics.tissue_classes import OUTSIDE, class_codes

#: A label map's pixel size at the model size may differ from the model card's by at most this factor.
MAX_SCALE_RATIO = 2.0


def synthesize_from_labels(labels: Volume, model: Union[str, LabelGenerator, None] = None, n: int = 1, seed: int = 0,
                           *, mapping: Optional[Mapping[float, int]] = None, force: bool = False,
                           progress: Optional[Callable[[float, str], None]] = None, cancel=None,
                           batch_size: int = 16, quantum_backend: Optional[str] = None,
                           device: Optional[str] = None) -> List[Volume]:
    """``n`` synthetic CT Volumes rendered from the label map ``labels`` (module doc); ``labels`` is not modified.

    ``model``: a label-conditioned generator, or the name / weights file of one (default
    ``hqgan-labels``, none shipped yet); ``mapping``: {label value: class 0-6}; ``force``: render a map
    whose scale is more than 2x from the model's; ``device``: ``cpu``, ``cuda`` or None/``auto``.
    """
    if int(n) < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(labels, Volume):
        raise TypeError(f"labels must be a Volume (a label map with its grid), got {type(labels).__name__}")
    codes = class_codes(labels, mapping)
    device = pick_device(device)
    model = _load(model, device, quantum_backend)
    size = model.size
    ys_idx, xs_idx, side_mm = _body_box(codes, labels.spacing)
    pixel_mm = side_mm / size
    scale_note = _check_scale(model, pixel_mm, force)
    encoded = _encode(codes, ys_idx, xs_idx, size, model.context)
    name = _model_name(model)
    model = model.to(device).eval()
    total, done, out = int(n) * codes.shape[0], 0, []
    for i in range(int(n)):
        latent = model.sample_latent(1, torch.Generator().manual_seed(_seed(seed, i)))
        images = []
        with torch.inference_mode():
            for start in range(0, codes.shape[0], int(batch_size)):
                check_cancel(cancel)
                ks = range(start, min(start + int(batch_size), codes.shape[0]))
                noise = _noise(model, seed, i, ks)
                batch = torch.from_numpy(encoded[start:ks.stop]).to(device).float() / 255.0
                result = model(batch, latent.expand(len(ks), -1).to(device),
                               noise=None if noise is None else [x.to(device) for x in noise])
                images.append(unit_to_hu(result[:, 0].float().cpu().numpy()))
                done += len(ks)
                report(progress, done / total, f"sample {i + 1}/{n}, slice {ks.stop}/{codes.shape[0]}")
        array = _paste(np.concatenate(images), codes, ys_idx, xs_idx)
        out.append(_volume(array, labels, name, seed, i, int(n), pixel_mm, side_mm, scale_note))
    return out


def _load(model, device: str, quantum_backend: Optional[str]) -> LabelGenerator:
    if model is None or isinstance(model, str):
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
    elif quantum_backend:
        from ..nn.build import set_quantum_backend

        set_quantum_backend(model, quantum_backend)
    if not isinstance(model, LabelGenerator):
        raise TypeError(f"{type(model).__name__} is not a label-conditioned model (train one with "
                        "qhqgan train-from-labels)")
    return model


def _model_name(model: LabelGenerator) -> str:
    card = getattr(model, "card", None) or {}
    return str(card.get("name", model.config["arch"]))


def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *keys]).generate_state(1)[0])


def _noise(model: LabelGenerator, seed: int, sample: int, ks) -> Optional[List[torch.Tensor]]:
    """The noise images of slices ``ks`` of ``sample``: each slice's from its own seeded stream (CPU)."""
    if not model.config["pixel_noise"]:
        return None
    per_slice = [model.draw_noise(1, torch.Generator().manual_seed(_seed(seed, sample, k))) for k in ks]
    return [torch.cat(layer) for layer in zip(*per_slice)]


def _body_box(codes: np.ndarray, spacing) -> Tuple[np.ndarray, np.ndarray, float]:
    """Row and column indices (may reach outside the grid) of the square around the body, and its side in mm."""
    body = (codes != OUTSIDE).any(axis=0)
    if not body.any():
        raise ValueError("the label map holds no body (every voxel is class 0, outside the body): nothing to render")
    sx, sy = float(spacing[0]), float(spacing[1])
    ys, xs = np.nonzero(body)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side_mm = max((y1 - y0) * sy, (x1 - x0) * sx) * CROP_MARGIN
    cy, cx, hy, hx = (y0 + y1) / 2, (x0 + x1) / 2, side_mm / sy / 2, side_mm / sx / 2
    ys_idx = np.arange(int(np.floor(cy - hy)), int(np.ceil(cy + hy)))
    xs_idx = np.arange(int(np.floor(cx - hx)), int(np.ceil(cx + hx)))
    return ys_idx, xs_idx, float(side_mm)


def _check_scale(model: LabelGenerator, pixel_mm: float, force: bool) -> str:
    card = getattr(model, "card", None) or getattr(model, "training_pixel_spacing", None) or {}
    trained = card.get("pixel_spacing_mm")
    if trained is None:
        return "not checked: the model's card records no pixel size"
    ratio = pixel_mm / float(trained)
    within = 1.0 / MAX_SCALE_RATIO <= ratio <= MAX_SCALE_RATIO
    if not within and not force:
        raise ValueError(f"the label map's body box is drawn at {pixel_mm:.2f} mm per pixel, the model was trained "
                         f"at {float(trained):.2f} mm ({ratio:.2f}x, more than {MAX_SCALE_RATIO:g}x apart): the "
                         "anatomy would be drawn at a scale the model never saw; check the map's spacing, or pass "
                         "force=True (--force) to render it anyway")
    return f"{ratio:.2f}x the model's training pixel size {float(trained):g} mm" + ("" if within else ", forced")


def _crop(plane: np.ndarray, ys_idx: np.ndarray, xs_idx: np.ndarray, fill: float) -> np.ndarray:
    padded = np.pad(plane, 1, constant_values=fill)
    ys = np.clip(ys_idx, -1, plane.shape[0]) + 1
    xs = np.clip(xs_idx, -1, plane.shape[1]) + 1
    return padded[np.ix_(ys, xs)]


def _encode(codes: np.ndarray, ys_idx, xs_idx, size: int, context: int) -> np.ndarray:
    """(z, 7 * (2 * context + 1), size, size) uint8: every slice's box, with its neighbours' (training's order)."""
    nz = codes.shape[0]
    crops = [_crop(plane, ys_idx, xs_idx, OUTSIDE) for plane in codes]
    out = []
    for k in range(nz):
        order = [k] + [min(max(k + d, 0), nz - 1) for d in range(-context, context + 1) if d != 0]
        out.append(encode_labels(np.stack([crops[j] for j in order]), size))
    return np.stack(out)


def _paste(images: np.ndarray, codes: np.ndarray, ys_idx, xs_idx) -> np.ndarray:
    """The rendered boxes (z, size, size) HU resampled back onto the label map's grid; outside the box the
    median of each slice's class-0 pixels (-1024 HU where it drew none)."""
    from skimage.transform import resize

    nz, ny, nx = codes.shape
    shape = (len(ys_idx), len(xs_idx))
    vy, vx = (ys_idx >= 0) & (ys_idx < ny), (xs_idx >= 0) & (xs_idx < nx)
    out = np.empty(codes.shape, np.float32)
    for k in range(nz):
        back = resize(images[k].astype(np.float64), shape, order=1, preserve_range=True,
                      anti_aliasing=shape[0] < images.shape[1])
        inside = back[np.ix_(vy, vx)]
        outside = inside[codes[k][np.ix_(ys_idx[vy], xs_idx[vx])] == OUTSIDE]
        out[k] = float(np.median(outside)) if outside.size else HU_MIN
        out[k][np.ix_(ys_idx[vy], xs_idx[vx])] = inside
    return out


def _volume(array, labels: Volume, name: str, seed: int, sample: int, n: int, pixel_mm: float, side_mm: float,
            scale_note: str) -> Volume:
    base = output_name("synthesize", model=f"{name}", seed=seed)
    note = (f"synthesized from a label map ({labels.shape[0]} slice(s)) by {name} (QHQGANLib {__version__}), seed "
            f"{seed}, sample {sample} of {n}; body box {side_mm:.0f} mm drawn at {pixel_mm:.2f} mm per pixel "
            f"(scale: {scale_note})")
    metadata = {"synthetic": True, "name": base + (f"_sample{sample}" if n > 1 else ""), "history": [note],
                "model": name, "seed": int(seed), "sample": int(sample), "conditioned_on": "label map",
                "model_pixel_spacing_mm": round(float(pixel_mm), 4)}
    return Volume(array, labels.spacing, labels.origin, labels.direction.copy(), metadata)
