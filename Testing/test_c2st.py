"""The classifier two-sample test (C2ST) on real CT slices: real vs real stays near 0.5, a trivially
different set (the real slices with strong noise, or blurred) scores near 1.0, the result is the
same for the same seed, and ``evaluate_synthetic`` / ``qhqgan evaluate-synth`` report it.

Real CT: the TotalSegmentator abdomen CT of ../shared/data (112 slices, resampled to 64x64 or
128x128 by ``training_slices``); the tests skip when it is absent.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_path

from QHQGANLib import read_volume
from QHQGANLib.metrics.c2st import c2st_accuracy, wilson_interval

ABDOMEN = "abdomen-ct-totalseg/example_ct.nii.gz"
ABDOMEN_SMALL = "abdomen-ct-totalseg/example_ct_sm.nii.gz"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (the CNN is small; 2-core CI machines run other work)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _slices(size: int) -> np.ndarray:
    from QHQGANLib.training.slices import training_slices

    return training_slices([read_volume(shared_path(ABDOMEN))], size).astype(np.float64)


@pytest.fixture(scope="module")
def abdomen64() -> np.ndarray:
    return _slices(64)


def _blurred(slices: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(s, sigma) for s in slices])


def test_noisy_slices_score_near_one(abdomen64):
    """Even slices + 100 HU noise vs the odd slices: measured 1.0 (seeds 0-3)."""
    rng = np.random.default_rng(0)
    noisy = abdomen64[0::2] + rng.normal(0.0, 100.0, abdomen64[0::2].shape)
    result = c2st_accuracy(noisy, abdomen64[1::2], seed=0)
    assert result["accuracy"] >= 0.9, result["fold_accuracies"]
    assert result["n_per_class"] == 56 and result["n_test"] == 112 and len(result["fold_accuracies"]) == 5
    assert result["ci95"][0] <= result["accuracy"] <= result["ci95"][1] and result["ci95"][0] > 0.8
    assert result["p_value"] < 1e-6 and result["auc"] > 0.95
    assert result["reference"] is None


def test_blurred_slices_score_near_one_real_halves_near_half(abdomen64):
    """Blurred (1 px) even slices vs the real slices: ~1.0; ``reference=True``: the same test between two
    random halves of ``real`` (here all 112 slices, 56 vs 56): near 0.5. Measured (seeds 0-2): 1.0, and
    0.41 / 0.54 / 0.55 for the halves."""
    blurred = _blurred(abdomen64[0::2], 1.0)
    result = c2st_accuracy(blurred, abdomen64, seed=1, reference=True)
    assert result["accuracy"] >= 0.9, result["fold_accuracies"]
    ref = result["reference"]
    assert ref["n_per_class"] == 56 and 0.3 <= ref["accuracy"] <= 0.7, ref["fold_accuracies"]
    assert ref["p_value"] > 0.01
    assert result["settings"]["reference_split"] == "two random halves of the real slices"
    json.dumps(result)  # JSON-friendly


def test_same_seed_same_result_other_seed_other_folds(abdomen64):
    a, b = abdomen64[0:40:2], abdomen64[1:40:2]
    first = c2st_accuracy(a, b, seed=3, epochs=2, min_steps=10)
    again = c2st_accuracy(a, b, seed=3, epochs=2, min_steps=10)
    assert first == again
    other = c2st_accuracy(a, b, seed=4, epochs=2, min_steps=10)
    assert other["settings"]["seed"] == 4


def test_works_at_128x128():
    """Blurred (1.5 px) vs real at 128x128, 24 slices per set (smaller batches to keep it quick): the CNN
    pools to 4x4 at any size. Measured with the defaults, 30 per set: 1.0 (seed 0), 0.98 (seed 1)."""
    slices = _slices(128)
    result = c2st_accuracy(_blurred(slices[0:48:2], 1.5), slices[1:48:2], seed=0, batch_size=16, min_steps=80)
    assert result["n_per_class"] == 24 and result["accuracy"] >= 0.9, result["fold_accuracies"]


def test_unequal_sets_are_balanced_and_bad_inputs_refused():
    rng = np.random.default_rng(0)
    big, small = rng.normal(0, 50, (30, 32, 32)), rng.normal(0, 50, (12, 32, 32)) + 300.0
    result = c2st_accuracy(small, big, seed=0, folds=3, epochs=3, min_steps=20)
    assert result["n_per_class"] == 12 and result["n_test"] == 24
    assert result["accuracy"] == 1.0  # a 300 HU shift
    with pytest.raises(ValueError, match="differ in size"):
        c2st_accuracy(big, rng.normal(size=(30, 16, 16)))
    with pytest.raises(ValueError, match="at least 5 slices"):
        c2st_accuracy(big[:4], big)
    with pytest.raises(ValueError, match="16x16"):
        c2st_accuracy(big[:, :8, :8], big[:, :8, :8])
    with pytest.raises(ValueError, match="reference needs"):
        c2st_accuracy(big[:6], big[:6], folds=5, reference=True)


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_evaluate_synth_prints_the_c2st(tmp_path, capsys):
    """``qhqgan evaluate-synth``: C2ST lines and JSON keys by default, skipped with ``--no-c2st``."""
    from QHQGANLib import Volume
    from QHQGANLib.apps.cli import main
    from QHQGANLib.core.io import write_volume
    from QHQGANLib.training.slices import training_slices

    real = training_slices([read_volume(shared_path(ABDOMEN_SMALL))], 64)
    noisy = real + np.random.default_rng(0).normal(0.0, 150.0, real.shape).astype(np.float32)
    samples = write_volume(Volume(noisy, metadata={"synthetic": True}), tmp_path / "noisy_synthetic.nrrd")
    out = tmp_path / "r.json"
    assert main(["evaluate-synth", str(samples), "--real", str(shared_path(ABDOMEN_SMALL)),
                 "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "C2ST real vs synthetic" in printed and "C2ST real vs real" in printed
    result = json.loads(out.read_text())
    assert result["c2st_accuracy"] >= 0.9 and 0.0 <= result["c2st_reference"] <= 1.0
    assert len(result["c2st"]["fold_accuracies"]) == 5

    assert main(["evaluate-synth", str(samples), "--real", str(shared_path(ABDOMEN_SMALL)),
                 "--json", str(out), "--quiet", "--no-c2st", "--overwrite"]) == 0  # the report exists now
    assert "C2ST" in capsys.readouterr().out  # the "skipped" line
    result = json.loads(out.read_text())
    assert result["c2st_accuracy"] is None and result["c2st_reason"].startswith("not asked")
