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
from ..core.progress import check_cancel, report
from ..core.volume import Volume
from ..nn.synthesis import SynthGenerator, unit_to_hu


def synthesize(model: Union[str, SynthGenerator], n: int = 8, seed: int = 0, pixel_spacing: float = 1.0,
               slice_spacing: float = 1.0, progress: Optional[Callable[[float, str], None]] = None,
               cancel=None, batch_size: int = 64, quantum_backend: Optional[str] = None) -> Volume:
    """``n`` synthetic slices as a Volume (HU), seeded; named and marked synthetic in its metadata.

    The slices are independent samples stacked along z (not a contiguous volume);
    ``pixel_spacing`` is nominal (the training crops were resampled to a fixed size).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if isinstance(model, str):
        from ..nn.weights import load_model

        model = load_model(model, quantum_backend=quantum_backend)
    elif quantum_backend:
        from ..nn.build import set_quantum_backend

        set_quantum_backend(model, quantum_backend)
    if not isinstance(model, SynthGenerator):
        raise TypeError(f"{type(model).__name__} is not a synthesis model (try hqgan-synth)")
    model.eval()
    generator = torch.Generator().manual_seed(int(seed))
    images = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            check_cancel(cancel)
            count = min(batch_size, n - start)
            images.append(model(model.sample_latent(count, generator))[:, 0].float().numpy())
            report(progress, (start + count) / n, f"{start + count}/{n} samples")
    array = unit_to_hu(np.concatenate(images)).astype(np.float32)
    name = getattr(model, "card", {}).get("name", model.config["arch"]) if hasattr(model, "card") else model.config["arch"]
    metadata = {
        "synthetic": True,
        "name": f"SYNTHETIC_{name}_seed{seed}",
        "history": [f"synthesized by {name} (QHQGANLib {__version__}), seed {seed}, {n} independent samples"],
        "model": name,
        "seed": int(seed),
    }
    return Volume(array, (pixel_spacing, pixel_spacing, slice_spacing), (0.0, 0.0, 0.0), np.eye(3), metadata)
