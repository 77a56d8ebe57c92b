"""Training / held-out split of real CT slices for the synthesis models (../shared/data).

The TotalSegmentator abdomen-pelvis volume (112 slices, 3 mm) is cut into blocks of 8
slices; every fourth block is held out (minus one slice at each end, so no held-out
slice is adjacent to a training slice). The 20-slice TotalSegmentator DICOM series
(upper abdomen) is added to training. All slices are body-cropped and resampled to the
model size by ``training_slices``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from enhance_data import SHARED  # noqa: E402

from QHQGANLib import read_volume  # noqa: E402
from QHQGANLib.training.slices import training_slices  # noqa: E402

DESCRIPTION = ("TotalSegmentator example abdomen-pelvis CT (Apache-2.0 / CC BY 4.0, Wasserthal et al. 2023): "
               "3 blocks of 8 slices in 4 for training, every 4th block held out (1-slice gaps), plus the "
               "20-slice TotalSegmentator DICOM series; body-cropped, resampled")


def load_slices(size: int = 64) -> Dict[str, np.ndarray]:
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is absent: the synthesis models are trained on ../shared/data")
    volume = read_volume(SHARED / "abdomen-ct-totalseg" / "example_ct.nii.gz")
    series = read_volume(SHARED / "abdomen-ct-totalseg" / "dicom")
    k = np.arange(volume.shape[0])
    block = (k // 8) % 4
    held = (block == 3) & (k % 8 != 0) & (k % 8 != 7)
    train = block != 3
    all_slices = training_slices([volume], size, min_body_fraction=0.0)
    if len(all_slices) != volume.shape[0]:
        raise RuntimeError("a slice without body: the split would shift")
    return {
        "train": np.concatenate([all_slices[train], training_slices([series], size)]),
        "heldout": all_slices[held],
    }
