"""The fixed training / tuning / validation split of ../shared/data used for the shipped enhancement models.

* training: the TotalSegmentator abdomen series (JPEG 2000, 512x512, 0.98 mm), slices 0-12,
  and the KiTS abdomen slices CT2, CT20-CT27 (single 512x512 slices, 0.70 mm);
* tuning (learning-rate choice only): abdomen slices 13-15 (never in training once tuned);
* validation (held out, reported, never tuned on): abdomen slices 16-19 and KiTS CT28, CT29;
* generalisation (other anatomy): the head CT slice 693_UNCR (512x512, 0.48 mm).

Slices of one series are split into contiguous blocks so that no validation slice
is a neighbour (2.5D context) of a training slice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

from QHQGANLib import Volume, read_volume

SHARED = Path(os.environ.get("QHQGAN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def _block(volume: Volume, start: int, stop: int) -> Volume:
    origin = volume.index_to_physical((0, 0, start))
    return volume.with_geometry(volume.array[start:stop], volume.spacing, origin,
                                note=f"slices {start}..{stop - 1}")


def load_split() -> Dict[str, List[Volume]]:
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is absent: the shipped models are trained on ../shared/data")
    series = read_volume(SHARED / "abdomen-ct-totalseg" / "dicom")
    kits = {p.stem: read_volume(p) for p in sorted((SHARED / "abdomen-ct-kits").glob("CT*.dcm"))}
    return {
        "train": [_block(series, 0, 13)] + [kits[k] for k in ("CT2", "CT20", "CT21", "CT22", "CT23", "CT24",
                                                              "CT25", "CT26", "CT27")],
        "tune": [_block(series, 13, 16)],
        "validation": [_block(series, 16, 20), kits["CT28"], kits["CT29"]],
        "head": [read_volume(SHARED / "head-ct-slice" / "693_UNCR.dcm")],
    }


DATA_DESCRIPTION = {
    "training": "TotalSegmentator example abdomen CT series slices 0-12 (Apache-2.0 / CC BY 4.0, "
                "Wasserthal et al. 2023) and TCIA C4KC-KiTS slices CT2, CT20-CT27 (CC BY 3.0)",
    "validation": "held out: TotalSegmentator series slices 16-19, KiTS CT28 and CT29; generalisation: "
                  "head CT slice 693_UNCR from pydicom-data (MIT)",
}
