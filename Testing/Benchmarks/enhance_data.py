"""The enhancement benchmarks' data, by patient (``protocol.json``; see ``protocol.py``).

This module used to split ../shared/data by slice (neighbouring slices of one patient in
training and validation, a copy of a training slice among the held-out ones); it now only
maps the patient-level protocol onto the names the older scripts use:

* ``train``: the training patients; ``tune``: the tuning patient (learning rates only);
* ``validation``: the evaluation patients except the head (never trained or tuned on);
* ``head``: the evaluation head CT (other anatomy).
"""
from __future__ import annotations

from typing import Dict, List

from protocol import data_root, load_split as _protocol_split

from QHQGANLib import Volume

SHARED = data_root()


def load_split() -> Dict[str, List[Volume]]:
    evaluation = _protocol_split("evaluation")
    is_head = [v.metadata["protocol"]["path"].startswith("head-") for v in evaluation]
    return {
        "train": _protocol_split("train"),
        "tune": _protocol_split("tune"),
        "validation": [v for v, head in zip(evaluation, is_head) if not head],
        "head": [v for v, head in zip(evaluation, is_head) if head],
    }


DATA_DESCRIPTION = {
    "training": "the training patients of Testing/Benchmarks/protocol.json (TotalSegmentator example subject, "
                "the Siemens example DICOM series, the VTK head); tuning: the KiTS patient",
    "validation": "the evaluation patients of Testing/Benchmarks/protocol.json (dcmqi 99000, LCTSC-Test-S1-101, "
                  "PANCREAS_0001; head: CQ500-CT-310), never trained or tuned on",
}
