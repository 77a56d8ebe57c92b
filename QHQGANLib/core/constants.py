"""Numbers the whole library agrees on: the version, the CT value range and the display windows.

Console usage::

    >>> from QHQGANLib.core.constants import HU_MIN, HU_MAX, WINDOWS
    >>> HU_MIN, HU_MAX                 # the 12-bit CT range every network and metric clips to
    (-1024.0, 3071.0)
    >>> WINDOWS["abdomen"]             # soft-tissue window used for PSNR/SSIM
    (-160.0, 240.0)
"""
from __future__ import annotations

from typing import Dict, Tuple

__version__ = "0.1.0"

#: The CT value range (HU): 12-bit, air at -1024. Inputs are clipped to it before networks and metrics.
HU_MIN, HU_MAX = -1024.0, 3071.0
HU_RANGE: Tuple[float, float] = (HU_MIN, HU_MAX)

#: Named HU windows for metrics and figures: ``full`` is the whole CT range, ``abdomen`` soft tissue.
WINDOWS: Dict[str, Tuple[float, float]] = {
    "full": HU_RANGE,
    "abdomen": (-160.0, 240.0),
}

#: The window synthesis trains in and its metrics compare in (bone above 1024 HU saturates).
SYNTH_WINDOW: Tuple[float, float] = (-1024.0, 1024.0)

#: Soft-tissue display window (width, level) in HU for new CT nodes in Slicer.
CT_DISPLAY_WINDOW = (400.0, 40.0)

#: Body voxels are those above this value (HU): air and lung parenchyma lie below it.
BODY_THRESHOLD_HU = -500.0
