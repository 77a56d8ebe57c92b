"""Synthetic CT slices from a trained generator, always marked synthetic.

Console usage::

    >>> import QHQGANLib as q
    >>> fake = q.synthesize("hqgan-synth", n=32, seed=0)     # a Volume of 32 synthetic slices, HU
    >>> fake.metadata["synthetic"]
    True
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch

from ..core.constants import __version__
from ..core.devices import pick_device
from ..core.naming import output_name
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.synthesis import SynthGenerator, unit_to_hu


def synthesize(model: Union[str, SynthGenerator], n: int = 8, seed: int = 0, pixel_spacing: Optional[float] = None,
               slice_spacing: float = 1.0, progress: Optional[Callable[[float, str], None]] = None,
               cancel=None, batch_size: int = 64, quantum_backend: Optional[str] = None,
               device: Optional[str] = None) -> Volume:
    """``n`` synthetic slices as a Volume (HU), seeded; named and marked synthetic in its metadata.

    The slices are independent samples stacked along z (not a contiguous volume; ``slice_spacing``
    is nominal). ``pixel_spacing`` (mm): by default the model card's ``pixel_spacing_mm``, the physical
    pixel size of its training crops (each training slice cropped to a square around the body and
    resampled to the model's size: the median of crop side / size, see
    :func:`QHQGANLib.training.slices.training_pixel_spacing`); 1 mm, nominal, for a model whose card
    does not record it. A value given here wins. The history says which.
    ``device``: ``"cpu"``, ``"cuda"`` or ``None``/``"auto"`` (CUDA when available); the model
    is moved there. The latent noise is always drawn on the CPU from the seeded generator
    and then moved, so a seed gives the same samples on every device (up to float rounding).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    device = pick_device(device)
    if isinstance(model, str):
        from ..nn.weights import load_model

        model = load_model(model, device=device, quantum_backend=quantum_backend)
    elif quantum_backend:
        from ..nn.build import set_quantum_backend

        set_quantum_backend(model, quantum_backend)
    if not isinstance(model, SynthGenerator):
        raise TypeError(f"{type(model).__name__} is not a synthesis model (try hqgan-synth)")
    pixel_spacing, where = _pixel_spacing(model, pixel_spacing)
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(int(seed))  # on the CPU: the same noise on every device
    images = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            check_cancel(cancel)
            count = min(batch_size, n - start)
            latent = model.sample_latent(count, generator).to(device)
            images.append(model(latent)[:, 0].float().cpu().numpy())
            report(progress, (start + count) / n, f"{start + count}/{n} samples")
    array = unit_to_hu(np.concatenate(images)).astype(np.float32)
    name = model.card.get("name", model.config["arch"]) if hasattr(model, "card") else model.config["arch"]
    metadata = {
        "synthetic": True,
        "name": output_name("synthesize", model=name, seed=seed),
        "history": [f"synthesized by {name} (QHQGANLib {__version__}), seed {seed}, {n} independent samples; "
                    f"pixel size {pixel_spacing:g} mm ({where})"],
        "model": name,
        "seed": int(seed),
        "pixel_spacing_source": where,
    }
    return Volume(array, (pixel_spacing, pixel_spacing, slice_spacing), (0.0, 0.0, 0.0), np.eye(3), metadata)


def _pixel_spacing(model, given: Optional[float]):
    """(pixel size in mm, where it comes from): the value given, else the card's, else 1 mm (nominal)."""
    if given is not None:
        value, where = given, "given"
    else:
        card = getattr(model, "card", None) or getattr(model, "training_pixel_spacing", None) or {}
        value = card.get("pixel_spacing_mm")  # a model just trained (train_synth) carries it before its card
        where = "the model's training crops (model card)" if value is not None else \
            "nominal: the model's card records no pixel size"
        value = 1.0 if value is None else value
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"pixel_spacing must be a positive number of mm, got {value!r}")
    return value, where
