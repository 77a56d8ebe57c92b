"""Real CT slices for the synthesis benchmark, split by patient as ``protocol.json`` says.

- train: the abdomen volumes of the training patients (TotalSegmentator abdomen-pelvis volume,
  112 slices at 3 mm; the Siemens upper-abdomen series, 20 slices); the head volume is left out
  (the models are not conditioned on anatomy, so they learn abdomen only);
- tune: the tuning patient (KiTS, 10 abdomen slices): design, learning rates and critic steps
  are chosen on it, never on the evaluation slices;
- evaluation: the abdomen slices of the evaluation patients (dcmqi 3 slices, Pancreas-CT 1,
  LCTSC 1 at kidney level): used once, for the reported table. Five slices are all the data
  allow: the reported distances and C2ST on them have wide uncertainty, and the benchmark says so.

All slices are body-cropped and resampled to the model size by ``training_slices``. Earlier
versions held out blocks of slices of the training patient (a slice-level split, which leaks).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import load_split  # noqa: E402

from QHQGANLib.training.slices import training_pixel_spacing, training_slices  # noqa: E402

DESCRIPTION = ("patient-level split of protocol.json: training patients' abdomen volumes (TotalSegmentator "
               "abdomen-pelvis, Apache-2.0 / CC BY 4.0, Wasserthal et al. 2023; Siemens example series), tuning "
               "patient KiTS (CC BY 3.0), evaluation patients' abdomen slices (dcmqi, Pancreas-CT, LCTSC); "
               "body-cropped, resampled")


def _abdomen(volumes):
    return [v for v in volumes if "head" not in str(v.metadata["protocol"]["path"])]


def load_slices(size: int = 64) -> Dict[str, np.ndarray]:
    """``{"train", "tune", "evaluation"}`` -> (n, size, size) HU slices of those patients."""
    out = {}
    for split in ("train", "tune", "evaluation"):
        volumes = _abdomen(load_split(split))
        out[split] = training_slices(volumes, size, min_body_fraction=0.0)
    return out


def pixel_spacing(size: int = 64) -> Dict[str, object]:
    """The physical pixel size of the training slices at ``size`` (for a shipped model's card; ``synthesize``
    writes samples with it): :func:`QHQGANLib.training.slices.training_pixel_spacing` of the training split."""
    return training_pixel_spacing(_abdomen(load_split("train")), size, min_body_fraction=0.0)
