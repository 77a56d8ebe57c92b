"""Synthetic CT: every method trains, generation is seeded and always marked synthetic."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from QHQGANLib import Volume, read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.nn.weights import load_model, save_model
from QHQGANLib.nn.synthesis import METHODS, SynthGenerator
from QHQGANLib.training.synthesis import SynthConfig, train_synth
from QHQGANLib.tasks.synthesize import synthesize
from QHQGANLib.training.slices import training_slices

from conftest import shared_path


@pytest.fixture(scope="module")
def slices():
    from pydicom.data import get_testdata_file

    ct = read_volume(get_testdata_file("CT_small.dcm"))
    data = training_slices([ct], 64)
    return np.concatenate([data, data[:, :, ::-1]])  # two slices: the CT and its mirror


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_a_few_steps(slices, method, tmp_path):
    cfg = SynthConfig(method=method, steps=2, batch_size=4, width=8, n_qubits=4, n_layers=2, n_critic=2,
                      ema_decay=0.0, device="cpu", output_dir=str(tmp_path))
    model = train_synth(cfg, slices=slices)
    untrained = train_synth(SynthConfig(**{**cfg.to_dict(), "steps": 0, "output_dir": None}), slices=slices)
    # the same seed, so the same initial weights: only the two updates tell them apart
    changed = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.equal(untrained.state_dict()[k], v)]
    assert "decoder.fc.0.weight" in changed
    log = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite([r["loss_d"], r["loss_g"]]).all() for r in log)
    fake = synthesize(model, n=3, seed=0)
    assert fake.shape == (3, 64, 64)
    assert -1024.0 <= fake.array.min() and fake.array.max() <= 1024.0


def test_training_brings_the_samples_closer_to_the_real_hu_histogram(slices):
    """20 updates of the hybrid GAN halve the HU-histogram distance of its samples to the
    training slices (363 -> 179 HU), which no untrained generator with the same seed does."""
    from QHQGANLib.metrics.distances import hu_histogram_wasserstein

    cfg = SynthConfig(method="hqgan", steps=20, batch_size=8, width=8, n_qubits=4, n_layers=2, n_critic=1,
                      device="cpu")
    trained = train_synth(cfg, slices=slices)
    untrained = train_synth(SynthConfig(**{**cfg.to_dict(), "steps": 0}), slices=slices)
    before = hu_histogram_wasserstein(synthesize(untrained, 16, seed=0).array, slices)
    after = hu_histogram_wasserstein(synthesize(trained, 16, seed=0).array, slices)
    assert after < 0.7 * before, (before, after)


def test_quantum_and_ablation_at_the_shipped_depth_share_the_decoder():
    """The legacy classical ablation (method "ablation", now ``bottleneck-ablation``) against the circuit
    at the shipped models' depth (n_qubits=8, n_layers=4): 64 angles against an 8 -> 3 -> 8 MLP of 59
    parameters (hidden width rounded to 3), 8 % fewer: not a fair control. The fair control
    (``mlp-control``) and the network without the circuit (``no-circuit``): Testing/test_controls.py.
    This test pins the legacy counts (weights of the retired ``ablation-synth`` must keep loading:
    Testing/test_controls.py) at the depth of the shipped ``hqgan-synth``."""
    from QHQGANLib.core.resources import models_dir

    card = json.loads((models_dir() / "hqgan-synth.json").read_text())
    n_qubits, n_layers = card["config"]["n_qubits"], card["config"]["n_layers"]
    assert (n_qubits, n_layers) == (8, 4)
    q = SynthGenerator("hqgan", n_qubits=n_qubits, n_layers=n_layers)
    c = SynthGenerator("ablation", n_qubits=n_qubits, n_layers=n_layers)
    n_q, n_c = sum(p.numel() for p in q.mixer.parameters()), sum(p.numel() for p in c.mixer.parameters())
    assert n_q == n_layers * n_qubits * 2 == 64
    assert c.mixer.hidden == 3 and n_c == 2 * n_qubits * 3 + 3 + n_qubits == 59
    assert [p.shape for p in q.decoder.parameters()] == [p.shape for p in c.decoder.parameters()]


def test_generation_is_seeded_and_marked_synthetic(slices, tmp_path):
    model = train_synth(SynthConfig(method="hqgan", steps=1, batch_size=4, width=8, n_critic=1), slices=slices)
    a, b, c = synthesize(model, 5, seed=1), synthesize(model, 5, seed=1), synthesize(model, 5, seed=2)
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)
    assert a.metadata["synthetic"] is True and "SYNTHETIC" in a.metadata["name"]
    path = write_volume(a, tmp_path / "liver_synthetic.nrrd")
    assert read_volume(path, force=True).metadata.get("synthetic") is True  # the NRRD header says so
    # the same through a saved, reloaded model
    save_model(model, tmp_path / "synth", {"task": "synthesize"})
    reloaded = load_model(tmp_path / "synth.safetensors")
    np.testing.assert_allclose(synthesize(reloaded, 5, seed=1).array, a.array, atol=1e-3)


def test_cli_synthesize_requires_a_synthetic_name(slices, tmp_path, capsys):
    model = train_synth(SynthConfig(method="dcgan", steps=1, batch_size=4, width=8), slices=slices)
    save_model(model, tmp_path / "m", {"task": "synthesize"})
    weights = str(tmp_path / "m.safetensors")
    assert main(["synthesize", str(tmp_path / "fake.nrrd"), "--model", weights, "--n", "2", "--quiet"]) == 2
    assert "marked synthetic in their names" in capsys.readouterr().err
    out = tmp_path / "fake_synthetic.nrrd"
    assert main(["synthesize", str(out), "--model", weights, "--n", "2", "--seed", "3", "--quiet"]) == 0
    assert read_volume(out, force=True).shape == (2, 64, 64)


def test_training_slices_crop_to_the_roi(ct_small_path):
    ct = read_volume(ct_small_path)
    roi = np.zeros(ct.shape, bool)
    roi[0, 40:60, 50:80] = True  # a 20 x 30 pixel region
    crops = training_slices([ct], 64, roi=[roi])
    assert crops.shape == (1, 64, 64)
    # the crop shows the ROI's tissue, not the whole slice
    inside = ct.array[0, 40:60, 50:80]
    assert abs(float(np.median(crops[0, 20:44, 16:48])) - float(np.median(inside))) < 150


@pytest.mark.shared_data
def test_training_slices_from_real_abdomen_volume():
    ct = read_volume(shared_path("abdomen-ct-totalseg/example_ct_sm.nii.gz"))
    data = training_slices([ct], 64)
    assert data.shape[1:] == (64, 64) and 20 <= data.shape[0] <= 30
    assert data.min() >= -1024 and (data > 0).mean() > 0.1  # soft tissue present


def test_synthesize_nodes_in_the_scene(slices):
    slicer = pytest.importorskip("slicer")
    from QHQGANLib.apps import scene as bridge

    model = train_synth(SynthConfig(method="wgan-gp", steps=1, batch_size=4, width=8, n_critic=1), slices=slices)
    mrml = slicer.vtkMRMLScene()
    ref = bridge.node_from_volume(Volume(np.full((2, 16, 16), 40, np.float32)), mrml, "Patient CT")
    node = bridge.synthesize_nodes(ref, n=4, seed=0, model=model)
    assert node.GetName().startswith("SYNTHETIC_")
    assert node.GetAttribute("QHQGAN.synthetic") == "true"
    assert "Patient" not in node.GetName()


def test_diff_augment_translates_and_cuts_out_with_air_and_stays_differentiable():
    from QHQGANLib.training.augment import diff_augment, parse_diffaugment

    assert parse_diffaugment("translation, cutout") == ["translation", "cutout"] and parse_diffaugment("") == []
    with pytest.raises(ValueError, match="colour"):
        parse_diffaugment("translation,colour")
    x = torch.zeros(64, 1, 32, 32, requires_grad=True)  # water-grey images
    g = torch.Generator().manual_seed(0)
    assert diff_augment(x, [], g) is x
    moved = diff_augment(x, ["translation"], g)
    assert moved.shape == x.shape
    air = (moved == -1.0).flatten(1).sum(1)
    assert set(torch.unique(moved).tolist()) <= {-1.0, 0.0} and air.max() > 0 and (air == 0).any()
    assert air.max() <= 32 * 32 - 28 * 28  # at most 1/8 of the side shifted in from each direction
    cut = diff_augment(x, ["cutout"], g)
    assert torch.all((cut == -1.0).flatten(1).sum(1) == 16 * 16)  # a square of half the side
    cut.sum().backward()
    assert torch.all(x.grad.flatten(1).sum(1) == 32 * 32 - 16 * 16)  # gradient flows where not cut out


def test_feature_norm_spreads_the_circuit_outputs():
    torch.manual_seed(0)
    model = SynthGenerator("hqgan", n_circuits=1)
    z = model.sample_latent(256, torch.Generator().manual_seed(0))
    raw = model.mixer(z).detach()
    assert raw.std(0).max() < 0.2  # <Z_i> of a random 8-qubit, 4-layer circuit concentrate near 0
    model.train()
    assert model.features(raw).std(0).min() > 0.9
    assert isinstance(SynthGenerator("wgan-gp").features, torch.nn.Identity)


@pytest.mark.parametrize("upsample", ["resize", "transposed"])
def test_decoder_upsampling_keeps_size_and_reloads(upsample, tmp_path):
    from QHQGANLib.nn.synthesis import build_from_config

    model = SynthGenerator("ablation", size=128, width=4, upsample=upsample).eval()
    z = model.sample_latent(2, torch.Generator().manual_seed(0))
    assert model(z).shape == (2, 1, 128, 128)
    clone = build_from_config(json.loads(json.dumps(model.config)))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval()(z), model(z))
    with pytest.raises(ValueError, match="upsample"):
        SynthGenerator("dcgan", upsample="bilinear-ish")


def test_cli_train_synth_records_its_settings_and_refuses_bad_options(ct_small_path, tmp_path, capsys):
    model_path = tmp_path / "my-synth"
    # the CLI offers the controls under their explicit names ("ablation" is no longer a choice)
    args = ["train-synth", "--input", str(ct_small_path), "--method", "mlp-control", "--steps", "2",
            "--batch-size", "4", "--n-critic", "1", "--diffaugment", "translation,cutout",
            "--output-dir", str(tmp_path / "run"), "--save-model", str(model_path), "--quiet"]
    assert main(args) == 0
    card = json.loads(model_path.with_suffix(".json").read_text())
    assert card["task"] == "synthesize"
    assert card["training"]["n_critic"] == 1 and card["training"]["diffaugment"] == "translation,cutout"
    assert card["training"]["ema_decay"] == SynthConfig.ema_decay
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 2
    # the card names no input file (paths often hold patient names): a count and content hashes
    assert str(ct_small_path) not in json.dumps(card) and "CT_small" not in json.dumps(card)
    assert card["training_data"]["n_volumes"] == 1 and len(card["training_data"]["voxel_sha256_16"][0]) == 16
    assert card["training"]["output_dir"] is None
    assert card["speed"]["updates"] == 2 and card["speed"]["updates_per_second"] > 0  # #16: speed in the card
    # an existing model is refused before any training (#12), replaced only with --overwrite
    before = model_path.with_suffix(".safetensors").read_bytes()
    assert main(args[:6] + ["4"] + args[7:] + ["--resume", "--checkpoint-every", "1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 2
    assert model_path.with_suffix(".safetensors").read_bytes() == before
    # a longer run continues from the checkpoint the first one left
    assert main(args[:6] + ["4"] + args[7:] + ["--resume", "--checkpoint-every", "1", "--overwrite"]) == 0
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 4
    with pytest.raises(SystemExit) as exit_info:  # --steps 0 would save an untrained model
        main(args[:6] + ["0"] + args[7:])
    assert exit_info.value.code == 2 and "at least 1" in capsys.readouterr().err
    out = tmp_path / "s_synthetic.nrrd"
    assert main(["synthesize", str(out), "--model", str(model_path.with_suffix(".safetensors")), "--n", "3",
                 "--quiet"]) == 0
    assert read_volume(out, force=True).shape == (3, 64, 64)
    capsys.readouterr()
    bad = args[:11] + ["--diffaugment", "rotation", "--save-model", str(tmp_path / "bad"), "--quiet"]
    assert main(bad) != 0
    assert "rotation" in capsys.readouterr().err
    assert not list(tmp_path.glob("bad*"))  # nothing written


@pytest.mark.parametrize("method", ["hqgan", "ablation"])
def test_several_circuit_runs_share_weights_and_each_sees_its_own_noise(method):
    one, four = SynthGenerator(method, n_circuits=1), SynthGenerator(method, n_circuits=4)
    assert sum(p.numel() for p in four.mixer.parameters()) == sum(p.numel() for p in one.mixer.parameters())
    four.eval()
    z = four.sample_latent(6, torch.Generator().manual_seed(0))
    assert z.shape == (6, 32)
    features = four.mixer(z.reshape(-1, 8)).reshape(6, 32)
    moved = z.clone()
    moved[:, 8:16] += 0.5  # change the noise of the second run only
    changed = (four.mixer(moved.reshape(-1, 8)).reshape(6, 32) - features).abs().amax(0)
    assert changed[8:16].min() > 0 and changed[:8].max() == 0 and changed[16:].max() == 0
    assert four(z).shape == (6, 1, 64, 64)
    assert four.config["n_circuits"] == 4 and SynthGenerator("dcgan", n_circuits=4).config["n_circuits"] == 1


def test_checkpoints_resume_exactly(slices, tmp_path):
    def cfg(out, steps, resume=False):
        return SynthConfig(method="hqgan", steps=steps, batch_size=4, width=8, n_qubits=4, n_layers=2, n_critic=1,
                           output_dir=str(out), checkpoint_every=2, resume=resume)

    straight = train_synth(cfg(tmp_path / "a", 4), slices=slices)
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["step"] == 4
    train_synth(cfg(tmp_path / "b", 2), slices=slices)  # stopped after 2 updates
    resumed = train_synth(cfg(tmp_path / "b", 4, resume=True), slices=slices)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    assert len((tmp_path / "b" / "losses.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ValueError, match="width"):
        train_synth(SynthConfig(**{**cfg(tmp_path / "b", 6, resume=True).to_dict(), "width": 4}), slices=slices)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train_synth(cfg(tmp_path / "empty", 4, resume=True), slices=slices)


@pytest.mark.parametrize("size", [64, 128])
def test_residual_decoder_generates_saves_and_loads_at_both_sizes(tmp_path, size):
    """The residual decoder (capacity for anatomy, #10) at 64x64 and 128x128: shapes, range, exact reload."""
    torch.manual_seed(0)
    g = SynthGenerator("hqgan", size=size, blocks="residual", width=8).eval()
    z = g.sample_latent(3, torch.Generator().manual_seed(1))
    out = g(z)
    assert out.shape == (3, 1, size, size) and out.min() >= -1 and out.max() <= 1
    save_model(g, tmp_path / f"r{size}", {"task": "synthesize"})
    back = load_model(tmp_path / f"r{size}.safetensors")
    assert back.config["blocks"] == "residual"
    torch.testing.assert_close(back(z), out)
    with pytest.raises(ValueError, match="blocks"):
        SynthGenerator("dcgan", blocks="deep")
