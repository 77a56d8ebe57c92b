"""The side-by-side evaluation: rows are consistent and the noise measure reads known noise."""
from __future__ import annotations

import numpy as np
import pytest

from QHQGANLib import Volume, read_volume
from QHQGANLib.tasks.classical import bicubic_upsample
from QHQGANLib.tasks.evaluate import evaluate_enhancement, evaluate_super_resolution
from QHQGANLib.metrics.image import noise_in_uniform_regions, uniform_region_mask


def test_noise_measure_reads_known_noise():
    rng = np.random.default_rng(0)
    clean = np.full((2, 96, 96), -1000.0)
    clean[:, 16:80, 16:80] = 40.0  # a uniform soft-tissue block in air
    mask = uniform_region_mask(clean)
    assert mask.any() and not mask[:, :16].any()
    noisy = clean + rng.normal(0, 12.0, clean.shape)
    assert noise_in_uniform_regions(noisy, mask) == pytest.approx(12.0, rel=0.1)


def test_identity_method_scores_like_the_input(ct_small_path):
    ct = read_volume(ct_small_path)
    rows = evaluate_enhancement({"identity": lambda v: v}, [ct], doses=(0.25,))
    low, same = rows
    assert low["method"] == "low-dose input" and same["method"] == "identity"
    for key in ("psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu"):
        assert same[key] == pytest.approx(low[key])
    assert low["noise_hu"] > 5.0  # the simulated dose reduction is measurable


def test_super_resolution_rows_and_bicubic_reference(ct_small_path):
    ct = read_volume(ct_small_path)
    rows = evaluate_super_resolution({"again bicubic": lambda v: bicubic_upsample(v, 2)}, [ct])
    assert [r["method"] for r in rows] == ["bicubic", "again bicubic"]
    assert rows[0]["psnr_full"] == pytest.approx(rows[1]["psnr_full"])
    assert 20.0 < rows[0]["psnr_abdomen"] < 60.0
    up = bicubic_upsample(Volume(np.zeros((1, 8, 6), np.float32), (1.0, 2.0, 3.0)), 2)
    assert up.shape == (1, 16, 12) and up.spacing == (0.5, 1.0, 3.0)
