"""Test limits for the shipped enhancers, set on the tuning patient (issue #27, item 4).

The rule, written on 2026-12-07 before the retrained models were measured by it:

* Data: the tuning patient's first four slices by file name (KiTS CT2, CT20, CT21, CT22: the slices
  ``bench_adapt.py`` tunes on), each at a simulated quarter dose (``simulate_low_dose(ct, 0.25, seed=0)``).
  No evaluation patient is used.
* For every shipped enhancement model: its PSNR gain over the quarter-dose input (soft-tissue window) and
  the ratio of the noise left in uniform soft tissue to the input's, per slice.
* ``MIN_PSNR_GAIN_DB`` = half the smallest gain over the four slices, rounded down to 0.05 dB (0.05 dB
  at least: a model that gains nothing here is tested to gain something, and fails if it does not);
  ``MAX_NOISE_RATIO`` = the largest ratio + 0.1, at most 0.95.
* The limits go into ``Testing/test_shipped_models.py`` with the measured values beside them; the test
  applies them to two unseen patients' slices. A model that misses them there fails the test; the limits
  are never lowered to what a model gives on those slices.

    python Testing/Benchmarks/shipped_thresholds.py     # prints the measured values and the limits
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adapt import TUNE_SLICES  # noqa: E402
from protocol import load_split  # noqa: E402

from QHQGANLib.metrics.image import noise_in_uniform_regions, psnr, uniform_region_mask  # noqa: E402
from QHQGANLib.nn.weights import list_models, load_model  # noqa: E402
from QHQGANLib.physics.lowdose import simulate_low_dose  # noqa: E402
from QHQGANLib.tasks.enhance import enhance  # noqa: E402


def main() -> None:
    slices = [v for v in load_split("tune") if v.metadata["protocol"]["path"].endswith(TUNE_SLICES)]
    assert len(slices) == len(TUNE_SLICES)
    pairs = [(v, simulate_low_dose(v, 0.25, seed=0), uniform_region_mask(v.array)) for v in slices]
    result = {}
    for card in list_models():
        if card.get("task") != "enhance":
            continue
        model = load_model(card["name"], device="cpu")
        gains, ratios = [], []
        for normal, low, mask in pairs:
            out = enhance(low, model, device="cpu")
            gains.append(psnr(out, normal, window="abdomen") - psnr(low, normal, window="abdomen"))
            ratios.append(noise_in_uniform_regions(out.array, mask) / noise_in_uniform_regions(low.array, mask))
        result[card["name"]] = {
            "gains_db": [round(g, 3) for g in gains], "noise_ratios": [round(r, 3) for r in ratios],
            "min_psnr_gain_db": max(0.05, math.floor(min(gains) / 2 * 20) / 20),
            "max_noise_ratio": round(min(0.95, max(ratios) + 0.1), 2),
            "sha256": card.get("sha256", "")[:12]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
