"""FID with InceptionV3, only when torchvision and its weights are already on disk (nothing is downloaded).

Console usage::

    >>> from QHQGANLib.metrics.inception import fid_inception
    >>> fid_inception(samples, real)          # {"fid": value or None, "reason": ...}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .distances import frechet_distance
from .features import WINDOW, SlicesLike, _as_slices, _window01


# ---------------------------------------------------------------------------
# FID with InceptionV3 (optional)
# ---------------------------------------------------------------------------
#: File names of torchvision's ImageNet InceptionV3 weights looked for in the torch hub cache.
INCEPTION_WEIGHT_FILES = ("inception_v3_google-0cc3c7bd.pth", "inception_v3_google-1a9a5a14.pth")


def find_inception_weights(extra_dirs: Sequence[Union[str, Path]] = ()) -> Optional[Path]:
    """A torchvision InceptionV3 weight file already on disk (torch hub cache), or None."""
    dirs = [Path(d) for d in extra_dirs]
    try:
        import torch

        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # pragma: no cover - torch is a dependency
        pass
    for d in dirs:
        for name in INCEPTION_WEIGHT_FILES:
            if (d / name).is_file():
                return d / name
    return None


def fid_inception(samples: SlicesLike, real: SlicesLike, *, window: Tuple[float, float] = WINDOW,
                  weights: Optional[Union[str, Path]] = None, batch_size: int = 32) -> Dict[str, Any]:
    """FID with torchvision's InceptionV3 (2048-d pool features), only if everything is on disk.

    Nothing is downloaded: without torchvision or without the weights file (``weights`` or
    the torch hub cache) the result is ``{"fid": None, "reason": ...}``. Slices are windowed
    to [0, 1], repeated to 3 channels, resized to 299x299 and ImageNet-normalised. Note that
    Inception features of CT are ImageNet features: the radiomic FRD is the primary metric.
    """
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return {"fid": None, "reason": "torchvision is not installed; FID with InceptionV3 is not available "
                                       "(nothing is downloaded)"}
    path = Path(weights) if weights is not None else find_inception_weights()
    if path is None or not path.is_file():
        return {"fid": None, "reason": "InceptionV3 weights are not on disk (looked for "
                                       f"{', '.join(INCEPTION_WEIGHT_FILES)} in the torch hub cache); "
                                       "nothing is downloaded"}
    feats = [_inception_features(_as_slices(x, name), path, window, batch_size)
             for name, x in (("samples", samples), ("real", real))]
    return {"fid": frechet_distance(feats[1], feats[0], standardize=False), "reason": None,
            "weights": str(path)}


def _inception_features(x: np.ndarray, path: Path, window, batch_size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = torch.from_numpy(_window01(x, window).astype(np.float32))[:, None]
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            b = F.interpolate(images[start:start + batch_size], size=(299, 299), mode="bilinear",
                              align_corners=False).repeat(1, 3, 1, 1)
            out.append(model((b - mean) / std).double().numpy())
    return np.concatenate(out)
