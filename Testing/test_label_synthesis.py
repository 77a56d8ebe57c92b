"""Label-conditioned synthesis (issue #30, item 1): ``train_from_labels``, ``synthesize_from_labels`` and their commands.

The data: one real chest slice (Lung-PET-CT-Dx A0001, kernel B, slice 31 of 64: 0.84 mm pixels; outside,
lung, fat, soft tissue, a little enhanced tissue and bone by ``tissue_labels``). Everything runs at 64x64 with
a few updates: a learning check, not a model. Measured (2 busy CPU cores): 40 updates, batch 4, generator rate
1e-3 take about 9 s (one torch thread); the samples' mean HU per class then orders bone (about -30) > soft
tissue (-130) > fat (-250) > lung (-790) > outside (-990), and the real slice's is 294 > 29 > -103 > -809 > -947.
Such a model has learned lung and air against tissue, not yet bone or fat inside a large painted region: 40 x 40
mm of the heart painted as lung turns about 600 HU darker (the rest of the slice moves about 3 HU), painted as
bone it changes by less than 15 HU; the conditioning test paints lung.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import shared_path
from QHQGANLib import Volume, read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.nn.build import build_from_config
from QHQGANLib.nn.label_synthesis import (ARCH_OF_METHOD, CROP_MARGIN, METHODS, LabelGenerator, label_channels,
                                          style_parameters)
from QHQGANLib.nn.mixers import circuit_parameters
from QHQGANLib.nn.weights import load_model, save_model
from QHQGANLib.physics.tissue_classes import BONE, FAT, LUNG, OUTSIDE, SOFT, class_codes, tissue_labels
from QHQGANLib.tasks.label_synthesis import synthesize_from_labels
from QHQGANLib.training.label_pairs import label_training_pairs
from QHQGANLib.training.label_synthesis import LabelSynthConfig, train_from_labels
from QHQGANLib.training.slices import CROP_MARGIN as TRAINING_CROP_MARGIN

SLICE = "chest-ct-lungdx/A0001-kernel-B/1-31.dcm"
#: The tiny budget of these tests (the shipped defaults are 128x128, batch 8, rate 1e-4, 2000 updates).
TINY = dict(size=64, batch_size=4, lr_g=1e-3, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the networks are tiny and 2-core machines run other work (two threads contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ct() -> Volume:
    return read_volume(shared_path(SLICE))


@pytest.fixture(scope="module")
def labels(ct) -> Volume:
    return tissue_labels(ct)


@pytest.fixture(scope="module")
def trained(ct, tmp_path_factory):
    """(model, its run folder): 40 updates of hqgan-labels on the one slice."""
    run = tmp_path_factory.mktemp("label_run") / "run"
    torch.manual_seed(0)
    model = train_from_labels([ct], method="hqgan", steps=40, output_dir=str(run), checkpoint_every=20, **TINY)
    return model, run


def test_three_archs_same_network_but_the_style_source():
    torch.manual_seed(0)
    models = {m: LabelGenerator(m, size=64) for m in METHODS}
    circuit = circuit_parameters(8, 4)
    assert style_parameters(models["hqgan"]) == circuit == 64
    assert style_parameters(models["mlp-control"]) >= circuit                 # 8 -> 8 -> 8 with biases: 144
    assert models["mlp-control"].style_source.hidden >= models["hqgan"].n_qubits
    assert {g.style_dim for g in models.values()} == {32}                    # the same output width
    assert models["spade"].style_source.out_features == 32
    rest = {m: sum(p.numel() for p in g.parameters()) - style_parameters(g) for m, g in models.items()}
    assert len(set(rest.values())) == 1, rest                                # the rest is the same network
    keys = {m: {k for k in g.state_dict() if not k.startswith("style_source.")} for m, g in models.items()}
    assert keys["hqgan"] == keys["mlp-control"] == keys["spade"]
    assert {g.config["arch"] for g in models.values()} == set(ARCH_OF_METHOD.values())
    assert TRAINING_CROP_MARGIN == CROP_MARGIN
    latent = models["hqgan"].sample_latent(3, torch.Generator().manual_seed(0))
    out = models["hqgan"].eval()(torch.rand(3, label_channels(0), 64, 64), latent)
    assert out.shape == (3, 1, 64, 64) and out.abs().max() <= 1
    two_half = LabelGenerator("spade", size=64, context=1)                    # 2.5D: 21 label channels
    assert two_half.head.in_channels == 21


def test_training_pairs_follow_the_slice(ct, labels):
    images, onehot = label_training_pairs([ct], size=64)
    assert images.shape == (1, 64, 64) and onehot.shape == (1, 7, 64, 64) and onehot.dtype == np.uint8
    fractions = onehot[0].astype(np.float64) / 255
    assert np.allclose(fractions.sum(0), 1.0, atol=0.02)                     # soft one-hot: fractions of classes
    lung, bone = fractions[LUNG] > 0.9, fractions[BONE] > 0.9
    assert images[0][lung].mean() < -600 and images[0][bone].mean() > 150
    _, stacked = label_training_pairs([ct], size=64, context=1)              # one slice: its own neighbours
    assert stacked.shape == (1, 21, 64, 64) and np.array_equal(stacked[0, 7:14], stacked[0, :7])


def test_training_reduces_l1_and_writes_the_run(trained, ct):
    import json

    model, run = trained
    log = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert len(log) == 40 and {"loss_d", "loss_g", "l1_hu", "fm", "adv"} <= set(log[0])
    first, last = np.mean([r["l1_hu"] for r in log[:5]]), np.mean([r["l1_hu"] for r in log[-5:]])
    assert last < 0.6 * first, (first, last)
    # the returned generator (the moving average) against a fresh one on the training pair itself
    images, onehot = label_training_pairs([ct], size=64)
    real = torch.from_numpy(np.clip(images, -1024, 1024) / 1024.0)[:, None]
    labels_t = torch.from_numpy(onehot).float() / 255

    def l1(g):
        with torch.no_grad():
            return float((g(labels_t, g.sample_latent(1, torch.Generator().manual_seed(0)),
                            generator=torch.Generator().manual_seed(0)) - real).abs().mean()) * 1024

    torch.manual_seed(0)
    assert l1(model) < 0.5 * l1(LabelGenerator("hqgan", size=64).eval())
    assert {"checkpoint.pt", "config.json", "losses.jsonl", "training_data.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "training_data.json").read_text())["n_volumes"] == 1
    assert 3.0 < model.training_pixel_spacing["pixel_spacing_mm"] < 9.0
    with pytest.raises(ValueError, match="not empty"):                      # an earlier run is never replaced
        train_from_labels([ct], method="hqgan", steps=2, output_dir=str(run), **TINY)


def test_resume_continues_exactly(ct, tmp_path):
    small = dict(TINY, batch_size=2, width=4, hidden=8)
    straight = train_from_labels([ct], method="spade", steps=4, output_dir=str(tmp_path / "a"), **small)
    train_from_labels([ct], method="spade", steps=2, output_dir=str(tmp_path / "b"), **small)
    resumed = train_from_labels([ct], method="spade", steps=4, output_dir=str(tmp_path / "b"), resume=True, **small)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_output_follows_the_map(trained, labels):
    model, _ = trained
    codes = class_codes(labels)
    sample = synthesize_from_labels(labels, model=model, n=1, seed=0)[0].array
    mean = {c: float(sample[codes == c].mean()) for c in (OUTSIDE, LUNG, FAT, SOFT, BONE)}
    assert mean[BONE] > mean[SOFT] > mean[FAT] > mean[LUNG] > mean[OUTSIDE], mean
    assert mean[BONE] - mean[SOFT] > 40 and mean[SOFT] - mean[LUNG] > 300, mean
    # conditioned: soft tissue (the heart) painted as lung changes the output there, hardly anywhere else
    painted = codes.copy()
    region = np.zeros(codes.shape, bool)
    region[0, 212:260, 260:308] = True                                    # 40 x 40 mm of the heart
    changed = region & (codes == SOFT)
    assert changed.sum() > 0.9 * region.sum()
    painted[changed] = LUNG
    other = synthesize_from_labels(labels.with_array(painted.astype(np.float32)), model=model, seed=0)[0].array
    from scipy import ndimage as ndi

    elsewhere = ~ndi.binary_dilation(region[0], iterations=30)[None]      # 25 mm around the square left out
    assert other[changed].mean() - sample[changed].mean() < -300
    assert np.abs(other - sample)[elsewhere].mean() < 0.05 * np.abs(other - sample)[changed].mean()


def test_seeds_geometry_and_mark(trained, labels, tmp_path):
    model, _ = trained
    rotation = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    stack = np.repeat(labels.array, 3, axis=0)
    stack[2] = np.where(stack[2] == LUNG, SOFT, stack[2])                   # z as given: three different slices
    grid = Volume(stack, (0.8418, 0.8418, 2.5), (10.0, -20.0, 5.0), rotation, {"dicom": {"PatientName": "X"}})
    a, b = synthesize_from_labels(grid, model=model, n=2, seed=3)
    again = synthesize_from_labels(grid, model=model, n=1, seed=3, batch_size=1)[0]
    other = synthesize_from_labels(grid, model=model, n=1, seed=4)[0]
    assert np.allclose(a.array, again.array, atol=1e-3)                      # same seed: same sample (any n, batch)
    assert np.abs(a.array - other.array).mean() > 0.5                        # another seed: another sample
    assert np.abs(a.array - b.array).mean() > 0.5                            # samples of one map differ
    for s in (a, b):
        assert s.same_geometry(grid) and s.metadata["synthetic"] is True
        assert "dicom" not in s.metadata and s.metadata["name"].startswith("SYNTHETIC_")
    assert not np.allclose(a.array[0], a.array[2])
    for name in ("sample_synthetic.nrrd", "sample_synthetic.nii.gz"):
        write_volume(a, tmp_path / name)
        back = read_volume(tmp_path / name, force=True)
        assert back.metadata.get("synthetic") is True and back.same_geometry(grid, tol=1e-3)


def test_save_load_without_pickle(trained, labels, tmp_path, monkeypatch):
    model, _ = trained
    card = save_model(model, tmp_path / "labels_model", {"task": "synthesize-from-labels",
                                                         **model.training_pixel_spacing})
    assert card["config"]["arch"] == "hqgan-labels" and card["pixel_spacing_mm"] > 0

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a model")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = load_model(tmp_path / "labels_model.safetensors")
    assert type(build_from_config(card["config"])) is LabelGenerator
    first = synthesize_from_labels(labels, model=model, seed=1)[0]
    second = synthesize_from_labels(labels, model=str(tmp_path / "labels_model.safetensors"), seed=1)[0]
    assert np.allclose(first.array, second.array, atol=1e-3) and loaded.card["name"] == "labels_model"
    assert "labels_model" in second.metadata["name"]


def test_unknown_values_and_scale_refused(trained, labels):
    model, _ = trained
    odd = labels.array.copy()
    odd[0, :4, :4] = 9
    odd[0, 4:8, :4] = 12
    with pytest.raises(ValueError) as info:
        synthesize_from_labels(labels.with_array(odd), model=model)
    message = str(info.value)
    assert "\n" not in message and "9, 12" in message and "mapping" in message
    mapped = synthesize_from_labels(labels.with_array(odd), model=model, mapping={9: OUTSIDE, 12: OUTSIDE})[0]
    assert mapped.same_geometry(labels)
    with pytest.raises(ValueError, match="whole numbers"):
        synthesize_from_labels(labels.with_array(labels.array + 0.5), model=model)
    with pytest.raises(ValueError, match="no body"):
        synthesize_from_labels(labels.with_array(np.zeros(labels.shape, np.float32)), model=model)
    coarse = Volume(labels.array, (3 * labels.spacing[0], 3 * labels.spacing[1], 5.0))   # 3x the scale
    with pytest.raises(ValueError, match="force") as info:
        synthesize_from_labels(coarse, model=model)
    assert "\n" not in str(info.value)
    assert synthesize_from_labels(coarse, model=model, force=True)[0].metadata["synthetic"]


def test_commands(ct, labels, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["--quiet", "train-from-labels", "--input", str(shared_path(SLICE)), "--method", "spade", "--size",
                 "64", "--steps", "2", "--batch-size", "2", "--width", "4", "--hidden", "8",
                 "--save-model", str(model)]) == 0
    import json

    card = json.loads(model.with_suffix(".json").read_text())
    assert card["config"]["arch"] == "spade-labels" and card["task"] == "synthesize-from-labels"
    assert card["pixel_spacing_mm"] > 0 and len(card["training_data"]["voxel_sha256"]) == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "other.txt").write_text("an earlier run")
    assert main(["--quiet", "train-from-labels", "--input", str(shared_path(SLICE)), "--steps", "1",
                 "--output-dir", str(run), "--save-model", str(tmp_path / "m2")]) == 2
    assert "not empty" in capsys.readouterr().err

    label_file = tmp_path / "labels.nrrd"
    write_volume(labels, label_file, pixel_type="int16")
    out = tmp_path / "chest_synthetic.nrrd"
    args = ["--quiet", "synthesize-from-labels", str(label_file), str(out), "--model", str(model.with_suffix(
        ".safetensors")), "--samples", "2", "--seed", "5"]
    assert main(args) == 0
    written = [tmp_path / "chest_synthetic_sample0.nrrd", tmp_path / "chest_synthetic_sample1.nrrd"]
    for path in written:
        back = read_volume(path, force=True)
        assert back.metadata.get("synthetic") is True and back.same_geometry(labels, tol=1e-3)
    before = [p.read_bytes() for p in written]
    assert main(args) == 2                                                  # never over an existing output
    assert "exists" in capsys.readouterr().err and [p.read_bytes() for p in written] == before
    assert main(args + ["--overwrite"]) == 0
    assert main(["--quiet", "synthesize-from-labels", str(label_file), str(tmp_path / "chest.nrrd"),
                 "--model", str(model.with_suffix(".safetensors"))]) == 2      # the name must say synthetic
    assert "synthetic" in capsys.readouterr().err

    odd = labels.array.copy()
    odd[0, :4, :4] = 17
    odd_file = tmp_path / "odd.nrrd"
    write_volume(labels.with_array(odd), odd_file, pixel_type="int16")
    single = ["--quiet", "synthesize-from-labels", str(odd_file), str(tmp_path / "odd_synthetic.nii.gz"), "--model",
              str(model.with_suffix(".safetensors"))]
    assert main(single) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "17" in err and "--map" in err
    assert not (tmp_path / "odd_synthetic.nii.gz").exists()
    assert main(single + ["--map", "17=0"]) == 0
    assert read_volume(tmp_path / "odd_synthetic.nii.gz", force=True).metadata.get("synthetic") is True


def test_config_refusals(ct):
    with pytest.raises(ValueError, match="method"):
        train_from_labels([ct], method="dcgan", steps=1)
    with pytest.raises(ValueError, match="adversarial"):
        train_from_labels([ct], LabelSynthConfig(adversarial="lsgan"), steps=1)
    with pytest.raises(ValueError, match="label map"):
        train_from_labels([ct], steps=1, label_maps=[None, None], **TINY)
