"""``qhqgan evaluate`` and ``qhqgan evaluate-synth`` on real CT: exit status, JSON rows, and numbers that
say the shipped models work (and that the measures can tell a bad result from a good one)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import shared_path

from QHQGANLib import Volume, read_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.core.io import write_volume

#: an evaluation-only patient (never trained or tuned on), one 512x512 slice
UNSEEN_SLICE = "chest-ct-lctsc/LCTSC-Test-S1-101.dcm"
#: TotalSegmentator: the 30-slice crop the synthesis models were trained on, and the separate
#: 20-slice DICOM series (its own scan) as held-out real slices
SYNTH_TRAIN = "abdomen-ct-totalseg/example_ct_sm.nii.gz"
SYNTH_HELDOUT = "abdomen-ct-totalseg/example_ct_dicom_20slices.nii.gz"


@pytest.fixture(scope="module")
def unseen_nrrd(tmp_path_factory) -> Path:
    """The unseen real slice written as a small NRRD (what a user would pass)."""
    volume = read_volume(shared_path(UNSEEN_SLICE))
    assert volume.shape == (1, 512, 512)
    return write_volume(volume, tmp_path_factory.mktemp("evaluate") / "lctsc_slice.nrrd")


def rows_by_method(path: Path):
    rows = json.loads(path.read_text())
    return {row["method"]: row for row in rows}


def test_evaluate_enhance_scores_the_model_above_its_input(unseen_nrrd, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["evaluate", "--input", str(unseen_nrrd), "--models", "hqgan-enhance", "--doses", "0.25",
                 "--json", str(out), "--quiet"])
    assert code == 0
    rows = rows_by_method(out)
    assert set(rows) == {"low-dose input", "hqgan-enhance"}
    low, model = rows["low-dose input"], rows["hqgan-enhance"]
    for row in (low, model):
        assert row["dose"] == 0.25
        for key in ("psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu", "seconds_per_slice"):
            assert math.isfinite(row[key]), key
    # measured on this slice (seed 1234) with the 3,000-update hqgan-enhance: input 28.23 dB, model 29.01 dB;
    # SSIM 0.862 -> 0.873; noise 29.8 -> 26.6 HU (RED-CNN at 3,000 updates on the same input: 30.94 dB, 19.4 HU)
    assert model["psnr_abdomen"] > low["psnr_abdomen"] + 0.4
    assert model["ssim_abdomen"] > low["ssim_abdomen"]
    assert model["noise_hu"] < 0.95 * low["noise_hu"]
    assert model["seconds_per_slice"] > 0.0 and low["seconds_per_slice"] == 0.0  # the input costs nothing
    assert low["n_slices"] == model["n_slices"] == 1
    assert len(model["inputs_voxel_sha256_16"]) == 1 and "lctsc" not in out.read_text().lower()  # no file names
    table = capsys.readouterr().out
    assert "hqgan-enhance" in table and "low-dose input" in table  # the table is printed too


def test_evaluate_reports_progress(unseen_nrrd, tmp_path, capsys):
    """Issue #31: evaluate ran for minutes without a word."""
    code = main(["--progress", "lines", "evaluate", "--input", str(unseen_nrrd), "--models", "redcnn-enhance",
                 "--doses", "0.25"])
    assert code == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("QHQGAN-PROGRESS")]
    assert len(lines) >= 3 and any("redcnn-enhance at 0.25 dose" in ln for ln in lines)
    assert "soft-tissue window [-160, 240] HU" in out


def test_evaluate_super_resolve_includes_bicubic(unseen_nrrd, tmp_path):
    out = tmp_path / "sr.json"
    code = main(["evaluate", "--input", str(unseen_nrrd), "--task", "super-resolve", "--models", "hqgan-sr2",
                 "--json", str(out), "--quiet"])
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["bicubic", "hqgan-sr2"]
    bicubic, model = rows
    assert bicubic["scale"] == model["scale"] == 2
    # measured: bicubic 29.4 dB, hqgan-sr2 33.7 dB (abdomen window)
    assert model["psnr_abdomen"] > bicubic["psnr_abdomen"] + 2.0
    assert model["psnr_full"] > bicubic["psnr_full"]


def test_evaluate_unknown_model_is_a_one_line_error(unseen_nrrd, tmp_path, capsys):
    out = tmp_path / "none.json"
    code = main(["evaluate", "--input", str(unseen_nrrd), "--models", "no-such-model", "--doses", "0.25",
                 "--json", str(out), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qhqgan: error") and "no-such-model" in lines[0]
    assert "Traceback" not in err
    assert not out.exists()  # nothing half-written


@pytest.fixture(scope="module")
def synthetic_nrrd(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "x_synthetic.nrrd"
    assert main(["synthesize", str(path), "--model", "hqgan-synth", "--n", "16", "--quiet"]) == 0
    return path


def evaluate_synth(samples: Path, out: Path) -> dict:
    code = main(["evaluate-synth", str(samples), "--real", str(shared_path(SYNTH_HELDOUT)),
                 "--train", str(shared_path(SYNTH_TRAIN)), "--json", str(out), "--quiet"])
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def generated(synthetic_nrrd) -> dict:
    """evaluate-synth's JSON for the 16 hqgan-synth samples."""
    return evaluate_synth(synthetic_nrrd, synthetic_nrrd.with_name("r.json"))


def test_evaluate_synth_scores_synthetic_slices(generated):
    result = generated
    assert result["n_samples"] == 16 and result["n_real"] == 20
    for key in ("frd", "kid_mean", "frd_real_reference", "diversity_samples"):
        assert math.isfinite(result[key]) and result[key] >= 0.0, key
    memorization = result["memorization"]
    assert len(memorization["ssim"]) == 16
    # measured: max SSIM to the nearest training slice 0.39; a copy would be ~1
    assert memorization["max"] < 0.95 and memorization["fraction_above_0.95"] == 0.0


def test_evaluate_synth_flags_copied_training_slices(generated, tmp_path):
    """Positive control: 'samples' that are training slices are caught as memorised, and score
    closer to real CT (FRD) than the generator's samples (measured FRD 53 vs 98)."""
    from QHQGANLib.training.slices import training_slices

    copies = training_slices([read_volume(shared_path(SYNTH_TRAIN))], 64)[::3]
    path = write_volume(Volume(copies, metadata={"synthetic": True}), tmp_path / "copies_synthetic.nrrd")
    copied = evaluate_synth(path, tmp_path / "copies.json")
    assert copied["memorization"]["max"] > 0.99
    assert copied["memorization"]["fraction_above_0.95"] == 1.0
    assert copied["frd"] < generated["frd"]


def test_evaluate_synth_says_which_direction_is_better(generated):
    """Issue #31: FRD, precision/density/coverage and the classifier test were printed with nothing saying
    which direction is better or what the reference means; every headline number now carries its note."""
    from QHQGANLib.apps.model_info import SYNTH_METRIC_NOTES

    for key in ("frd", "frd_real_reference", "kid_mean", "precision", "recall", "density", "coverage"):
        if key in generated:
            assert key in SYNTH_METRIC_NOTES, key
    assert "lower is better" in SYNTH_METRIC_NOTES["frd"] and "higher" in SYNTH_METRIC_NOTES["coverage"]
