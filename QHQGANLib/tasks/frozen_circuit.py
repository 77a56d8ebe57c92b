"""Does the circuit carry information? A copy of a hybrid generator whose circuit output is frozen to its mean.

Issue #26: "for every hybrid model, report the PSNR lost when the circuit's output is frozen to its
mean". :func:`freeze_mixer` runs the model once over a volume, averages what its quantum slot (the
circuit, or the MLP of the classical control) outputs over every position of every slice, and returns
a copy in which the slot outputs that constant vector whatever its input. The network around it is
unchanged, so the difference between the two models' results is what the slot's variation from
position to position contributes. A slot the network has learnt to route around costs nothing when
frozen.

Console usage::

    >>> import QHQGANLib as q
    >>> from QHQGANLib.tasks.frozen_circuit import freeze_mixer
    >>> frozen, mean = freeze_mixer("hqgan-enhance", low)           # low: a Volume
    >>> q.enhance(low, model=frozen)                                 # the circuit's output held constant
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import numpy as np

from ..core.volume import Volume


def _constant_mixer(mean):
    """A module that outputs ``mean`` (a buffer, so it moves with the network) at every position."""
    import torch

    class ConstantMixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", mean.clone())

        def forward(self, angles):
            return self.mean.to(angles.dtype).expand(angles.shape[0], -1)

    return ConstantMixer()


def freeze_mixer(model, volume: Volume, device: Optional[str] = None,
                 quantum_backend: Optional[str] = None) -> Tuple[object, np.ndarray]:
    """``(copy of model with its quantum slot frozen to its mean output over volume, that mean)``.

    ``model``: a shipped name, a path or a loaded hybrid generator (one with a ``mix`` block holding a
    ``mixer``: HQGAN and its MLP control; a ValueError for networks without one, e.g. RED-CNN or
    ``no-circuit``). The given model is not modified.
    """
    import torch

    from ..core.devices import pick_device
    from .inference import _resolve_model, run_model

    device = pick_device(device)
    net = _resolve_model(model, device, quantum_backend)
    mixer = getattr(getattr(net, "mix", None), "mixer", None)
    if mixer is None:
        raise ValueError(f"{getattr(net, 'arch', type(net).__name__)} has no circuit or MLP slot to freeze")
    total, count = None, 0

    def hook(_module, _inputs, output):
        nonlocal total, count
        out = output.detach().double()
        total = out.sum(0) if total is None else total + out.sum(0)
        count += out.shape[0]

    handle = mixer.register_forward_hook(hook)
    try:
        run_model(volume, net, device=device)
    finally:
        handle.remove()
    mean = (total / max(count, 1)).float()
    frozen = copy.deepcopy(net)
    frozen.mix.mixer = _constant_mixer(mean.to(next(frozen.parameters()).device))  # the slot, replaced
    frozen.card = {**(getattr(net, "card", None) or {}), "frozen_mixer": True}
    return frozen, mean.cpu().numpy()
