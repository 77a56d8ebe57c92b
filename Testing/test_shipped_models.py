"""The models shipped in Resources/Models: cards complete, weights match their sha256, each runs from the
CLI, and each does its job on real CT of patients it never saw (enhancers denoise a simulated quarter-dose
scan, super-resolution beats bicubic)."""
from __future__ import annotations


import numpy as np
import pytest
from conftest import shared_path

from QHQGANLib import read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.nn.weights import list_models, load_model, sha256_of
from QHQGANLib.core.resources import models_dir

CARDS = list_models()
REQUIRED = {"enhance": {"hqgan-enhance", "mlp-control-enhance", "no-circuit-enhance", "redcnn-enhance"}, "super-resolve": {"hqgan-sr2"},
            "synthesize": {"hqgan-synth", "mlp-control-synth", "wgangp-synth", "dcgan-synth",  # 64x64
                           "hqgan-synth-128", "mlp-control-synth-128", "wgangp-synth-128", "dcgan-synth-128"}}
SYNTH_CARDS = [c for c in CARDS if c["task"] == "synthesize"]


def test_the_required_models_ship():
    names = {c["name"] for c in CARDS}
    for task, required in REQUIRED.items():
        missing = required - names
        assert not missing, f"{task} models missing from {models_dir()}: {sorted(missing)}"


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_card_is_complete_and_weights_match(card):
    for key in ("name", "task", "config", "weights", "sha256", "n_parameters", "training_data", "validation"):
        assert key in card, f"{card['name']}: model card lacks {key!r}"
    weights = models_dir() / card["weights"]
    assert weights.suffix == ".safetensors"
    assert sha256_of(weights) == card["sha256"]
    model = load_model(card["name"])
    assert sum(p.numel() for p in model.parameters()) == card["n_parameters"]


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_runs_from_the_cli(card, tmp_path, ct_small_path):
    task = card["task"]
    if task == "synthesize":
        out = tmp_path / "samples_synthetic.nrrd"
        assert main(["synthesize", str(out), "--model", card["name"], "--n", "4", "--quiet"]) == 0
        result = read_volume(out, force=True)
        size = card["size"]
        assert result.shape == (4, size, size) and result.metadata.get("synthetic")
        return
    out = tmp_path / "out.nrrd"
    if card.get("axis") == "z":  # through-plane: a stack of contiguous slices, thinner slices out
        ct = read_volume(shared_path("abdomen-ct-totalseg/example_ct_sm.nii.gz"))
        crop = ct.with_geometry(ct.array[10:16, 20:84, 30:94].copy(), ct.spacing, ct.index_to_physical((30, 20, 10)))
        write_volume(crop, tmp_path / "thick.nrrd")
        assert main(["super-resolve", str(tmp_path / "thick.nrrd"), str(out), "--axis", "z", "--scale",
                     str(card["scale"]), "--model", card["name"], "--quiet"]) == 0
        result = read_volume(out)
        assert result.shape == (6 * card["scale"], 64, 64) and np.isfinite(result.array).all()
        assert result.spacing[2] == pytest.approx(crop.spacing[2] / card["scale"])
        return
    command = "enhance" if task == "enhance" else "super-resolve"
    assert main([command, str(ct_small_path), str(out), "--model", card["name"], "--quiet"]) == 0
    source, result = read_volume(ct_small_path), read_volume(out)
    scale = 1 if task == "enhance" else 2
    assert result.shape == (1, 128 * scale, 128 * scale)
    assert np.isfinite(result.array).all()
    # a trained model changes the image by a plausible amount, not wildly
    reference = source.array if scale == 1 else source.array.repeat(2, 1).repeat(2, 2)
    assert 0.01 < float(np.abs(result.array - reference).mean()) < 100.0


@pytest.mark.parametrize("card", SYNTH_CARDS, ids=[c["name"] for c in SYNTH_CARDS])
def test_shipped_synthesis_models_make_body_slices(card, tmp_path):
    """Samples of a trained model look like axial body CT: air around a body of soft tissue
    (not noise, not a constant image), differ between samples, and go to a synthetic DICOM series."""
    import pydicom

    from QHQGANLib import synthesize

    samples = synthesize(card["name"], n=16, seed=7).array
    size = card["size"]
    assert samples.shape == (16, size, size)
    edge, centre = 6 * size // 64, slice(3 * size // 8, 5 * size // 8)  # 6x6 corners and the middle 16x16 at 64x64
    air, soft = (samples < -900).mean(axis=(1, 2)), ((samples > -150) & (samples < 150)).mean(axis=(1, 2))
    assert np.all(air > 0.1) and np.all(soft > 0.1), (air.min(), soft.min())
    # the body is one region in the middle, surrounded by air: the 6x6 corners are air (median;
    # a single corner pixel may be off, e.g. wgangp-synth's top-left pixel, ~-180 HU)
    corners = np.stack([samples[:, :edge, :edge], samples[:, :edge, -edge:], samples[:, -edge:, :edge],
                        samples[:, -edge:, -edge:]], 1)
    assert np.all(np.median(corners.reshape(len(samples), 4, -1), axis=2) < -900)
    assert np.all(samples[:, centre, centre].mean(axis=(1, 2)) > -500)
    assert float(np.std(samples, axis=0).mean()) > 20.0  # samples differ from each other
    folder = tmp_path / "dicom_synthetic"
    assert main(["synthesize", str(folder), "--model", card["name"], "--n", "2", "--dicom", "--quiet"]) == 0
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 2
    ds = pydicom.dcmread(files[0])
    assert ds.SyntheticData == "YES" and ds.Modality == "CT" and ds.Rows == ds.Columns == size


# ---------------------------------------------------------------------------
# the shipped models do their job on real CT of patients they never saw
# ---------------------------------------------------------------------------
#: evaluation-only patients (../shared/data/README.md), two scanners: one slice each
UNSEEN_SLICES = ("chest-ct-lctsc/LCTSC-Test-S1-101.dcm", "abdomen-ct-pancreas/PANCREAS_0001.dcm")

#: Smallest PSNR gain (abdomen window, dB) over the calibrated simulated quarter-dose input on either
#: slice. Measured with the models of the patient protocol (issue #9; seed 0 at the budget chosen on the
#: tuning patient: 3,000 updates, RED-CNN 4,000): hqgan-enhance +0.77 / +1.50 dB (LCTSC / Pancreas),
#: mlp-control-enhance +1.10 / +1.78, no-circuit-enhance +0.74 / +1.45, redcnn-enhance +3.07 / +2.23; set at
#: about half the worst slice. (These two slices are one noise draw each; BENCHMARKS.md 'evidence' has 3 seeds and 6 slices
#: per condition, on which the same models gain more at 25 % dose.)
MIN_PSNR_GAIN_DB = {"hqgan-enhance": 0.4, "mlp-control-enhance": 0.55, "no-circuit-enhance": 0.35,
                    "redcnn-enhance": 1.0}
#: Largest noise left in uniform soft tissue, as a fraction of the input's. Measured: 0.89 / 0.69 (hqgan),
#: 0.86 / 0.66 (mlp-control), 0.90 / 0.73 (no-circuit), 0.59 / 0.48 (redcnn): the adversarially trained
#: generators keep more of the noise texture than the MSE-trained RED-CNN.
MAX_NOISE_RATIO = 0.95
#: Largest shift of the mean HU of uniform soft tissue. Measured: +0.1 / +0.7 HU (hqgan), -0.7 / +0.9
#: (mlp-control), -0.6 / -0.3 (no-circuit), +1.4 / +2.4 (redcnn).
MAX_MEAN_SHIFT_HU = 5.0


@pytest.fixture(scope="module")
def quarter_dose_pairs():
    """(normal-dose, simulated quarter-dose, uniform soft-tissue mask) of each unseen slice."""
    from QHQGANLib.metrics.image import uniform_region_mask
    from QHQGANLib.physics.lowdose import simulate_low_dose

    pairs = []
    for relative in UNSEEN_SLICES:
        normal = read_volume(shared_path(relative))
        pairs.append((normal, simulate_low_dose(normal, 0.25, seed=0), uniform_region_mask(normal.array)))
    return pairs


@pytest.mark.parametrize("name", sorted(MIN_PSNR_GAIN_DB))
def test_shipped_enhancers_improve_a_quarter_dose_scan(name, quarter_dose_pairs):
    """On unseen patients, each enhancer raises PSNR (abdomen window) against the normal-dose
    scan and lowers the noise in uniform soft tissue without shifting its mean."""
    from QHQGANLib.metrics.image import noise_in_uniform_regions, psnr
    from QHQGANLib.tasks.enhance import enhance

    model = load_model(name, device="cpu")
    for (normal, low, mask), where in zip(quarter_dose_pairs, UNSEEN_SLICES):
        assert mask.sum() > 1000, where  # enough uniform soft tissue to measure noise
        out = enhance(low, model, device="cpu")
        before, after = psnr(low, normal, window="abdomen"), psnr(out, normal, window="abdomen")
        assert after > before + MIN_PSNR_GAIN_DB[name], (where, before, after)
        # noise in HU: measured quarter dose 30.1 / 25.5 (calibrated to each scan's own noise)
        noise_low, noise_out = noise_in_uniform_regions(low.array, mask), noise_in_uniform_regions(out.array, mask)
        assert noise_out < MAX_NOISE_RATIO * noise_low, (where, noise_low, noise_out)
        # a denoiser, not a shift: the mean HU of uniform tissue stays
        shift = float(out.array[mask].mean() - normal.array[mask].mean())
        assert abs(shift) < MAX_MEAN_SHIFT_HU, (where, shift)


def test_shipped_super_resolution_beats_bicubic():
    """hqgan-sr2 on a 2x coarser copy of unseen real slices recovers the original better than bicubic.

    Measured PSNR, model vs bicubic: abdomen window 33.59 vs 29.39 dB (LCTSC), 34.55 vs 26.53 dB
    (Pancreas); full range 50.31 vs 44.62, 49.70 vs 42.56 dB (the model retrained under the patient
    protocol, issue #9)."""
    from QHQGANLib.metrics.image import psnr
    from QHQGANLib.physics.resolution import degrade_resolution
    from QHQGANLib.tasks.classical import bicubic_upsample
    from QHQGANLib.tasks.enhance import super_resolve

    model = load_model("hqgan-sr2", device="cpu")
    for relative in UNSEEN_SLICES:
        original = read_volume(shared_path(relative))
        coarse = degrade_resolution(original, 2)
        sr = super_resolve(coarse, 2, model=model, device="cpu")
        bicubic = bicubic_upsample(coarse, 2)
        assert sr.shape == bicubic.shape == original.shape  # 512 is even: nothing cropped
        assert sr.same_geometry(bicubic) and sr.same_geometry(original)
        for window, margin in (("abdomen", 2.0), ("full", 2.5)):
            model_db, bicubic_db = psnr(sr, original, window=window), psnr(bicubic, original, window=window)
            assert model_db > bicubic_db + margin, (relative, window, model_db, bicubic_db)


def test_list_models_summarises_every_card(capsys):
    assert main(["list-models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(CARDS)
    for card, line in zip(CARDS, lines):
        assert line.startswith(card["name"]) and card["task"] in line
        if card["task"] in ("enhance", "super-resolve"):  # the model's held-out PSNR and its baseline's
            model_rows = [r for r in card["validation"] if r["method"] == "model"]
            assert f"PSNR {model_rows[0]['psnr_abdomen']:.2f} dB" in line
        else:
            assert f"FRD {card['validation']['frd']:.3g}" in line
