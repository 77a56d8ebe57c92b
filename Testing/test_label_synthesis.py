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

import errno
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import shared_path
from QHQGANLib import Volume, read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.core.orientation import slice_axis_name, to_axial
from QHQGANLib.nn.build import build_from_config
from QHQGANLib.nn.critics import LabelPatchCritic
from QHQGANLib.core.crops import CROP_MARGIN, square_box
from QHQGANLib.nn.label_synthesis import ARCH_OF_METHOD, METHODS, LabelGenerator, label_channels, style_parameters
from QHQGANLib.nn.mixers import circuit_parameters
from QHQGANLib.nn.weights import load_model, save_model
from QHQGANLib.physics.tissue_classes import BONE, FAT, LUNG, OUTSIDE, SOFT, class_codes, tissue_labels
from QHQGANLib.tasks.label_synthesis import synthesize_from_labels
from QHQGANLib.training.label_pairs import label_training_pairs
from QHQGANLib.training.label_synthesis import LabelSynthConfig, train_from_labels
from QHQGANLib.training.slices import CROP_MARGIN as TRAINING_CROP_MARGIN
from QHQGANLib.training.slices import crop_boxes

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


# ---------------------------------------------------------------------------
# review fixes
# ---------------------------------------------------------------------------
def _shrunk(plane: np.ndarray, factor: float) -> np.ndarray:
    """The label plane's anatomy zoomed by ``factor`` (nearest) about the centre of the same grid: a smaller body."""
    from scipy import ndimage as ndi

    small = ndi.zoom(plane, factor, order=0)
    out = np.zeros_like(plane)
    oy, ox = (plane.shape[0] - small.shape[0]) // 2, (plane.shape[1] - small.shape[1]) // 2
    out[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
    return out


def _stack(labels: Volume, planes) -> Volume:
    return Volume(np.stack(planes).astype(np.float32), labels.spacing, labels.origin, labels.direction)


def test_label_map_on_another_grid_refused(ct, labels):
    """A map of the CT's shape on another grid (a flipped NIfTI, other spacing) would pair misaligned slices."""
    flip = np.diag([-1.0, -1.0, 1.0])
    corner = np.asarray(labels.origin) + labels.direction @ (np.array([511, 511, 0]) * np.asarray(labels.spacing))
    flipped = Volume(labels.array[:, ::-1, ::-1].copy(), labels.spacing, tuple(corner), labels.direction @ flip)
    other_spacing = Volume(labels.array, (0.9, 0.9, 5.0), labels.origin, labels.direction)
    for wrong in (flipped, other_spacing):
        with pytest.raises(ValueError, match="the label map is on another grid than its CT") as info:
            label_training_pairs([ct], size=64, label_maps=[wrong])
        assert "\n" not in str(info.value) and "label map 0" in str(info.value)
    images, onehot = label_training_pairs([ct], size=64, label_maps=[labels])    # its own grid: accepted
    assert np.array_equal(onehot, label_training_pairs([ct], size=64)[1])


def test_coronal_map_rendered_on_axial_planes(trained):
    """A real CT's tissue classes stored coronally (same voxels, same physical places) give, brought back to
    axial, exactly the samples of the axially stored map (to_axial is a permutation)."""
    model, _ = trained
    axial = tissue_labels(read_volume(shared_path("abdomen-ct-totalseg/example_ct_sm.nii.gz")))   # 30 x 101 x 122
    d, (sx, sy, sz) = axial.direction, axial.spacing
    coronal = Volume(np.ascontiguousarray(axial.array.transpose(1, 0, 2)), (sx, sz, sy), axial.origin,
                     d[:, [0, 2, 1]])                                         # index axes i = x, j = z, k = y
    assert slice_axis_name(coronal) == "coronal" and np.allclose(coronal.index_to_physical((3, 7, 5)),
                                                                 axial.index_to_physical((3, 5, 7)))
    expected = synthesize_from_labels(axial, model=model, n=2, seed=7)
    got = synthesize_from_labels(coronal, model=model, n=2, seed=7)
    for a, c in zip(expected, got):
        assert c.same_geometry(coronal) and c.metadata["synthetic"] is True
        back = to_axial(c)[0]
        assert back.same_geometry(axial) and np.array_equal(back.array, a.array)


def test_square_box_is_training_box(ct):
    """Inference's box (core.crops.square_box) is training's (training.slices.crop_boxes), margin included."""
    assert TRAINING_CROP_MARGIN == CROP_MARGIN
    small = read_volume(shared_path("abdomen-ct-totalseg/example_ct_sm.nii.gz"))      # 3 mm, body at the edges
    for volume in (ct, small):
        for _, k, ys_idx, xs_idx, side in crop_boxes([volume]):
            ys, xs, side_mm = square_box(volume.array[k] > -500, volume.spacing)
            assert np.array_equal(ys, ys_idx) and np.array_equal(xs, xs_idx) and side_mm == side


def test_each_slice_in_its_own_box(trained, labels):
    """Training crops each slice to its own body box: so does inference. A slice with a small body is drawn
    exactly as when it is the map's only slice (no union box); one whose body would be drawn more than 2x
    from the model's pixel size is refused unless forced; one with under 5 % body takes its neighbour's box."""
    plane = class_codes(labels)[0]
    small = _shrunk(plane, 0.6)
    torch.manual_seed(0)
    plain = LabelGenerator("spade", size=64, width=4, hidden=8, pixel_noise=False).eval()   # no noise images
    both = synthesize_from_labels(_stack(labels, [plane, small]), model=plain, seed=2, batch_size=1)[0]
    alone = synthesize_from_labels(_stack(labels, [small]), model=plain, seed=2, batch_size=1)[0]
    assert np.allclose(both.array[1], alone.array[0], atol=1e-3)
    pixels = both.metadata["slice_pixel_spacing_mm"]
    assert pixels[1] == pytest.approx(0.6 * pixels[0], rel=0.05)

    model, _ = trained
    tiny = _stack(labels, [plane, _shrunk(plane, 0.45)])                   # 8 % body: its own box, 2.5 mm pixels
    with pytest.raises(ValueError, match="1 of the label map's 2 axial slice") as info:
        synthesize_from_labels(tiny, model=model)
    assert "force" in str(info.value) and "\n" not in str(info.value)
    assert "forced for 1 slice" in synthesize_from_labels(tiny, model=model, force=True)[0].metadata["history"][-1]
    speck = synthesize_from_labels(_stack(labels, [plane, _shrunk(plane, 0.3)]), model=model)[0]   # 3 % body
    assert speck.metadata["slice_pixel_spacing_mm"][1] == speck.metadata["slice_pixel_spacing_mm"][0]
    assert "1 slice(s) with under 5% body in a neighbour's box" in speck.metadata["history"][-1]


def test_the_callers_model_is_left_as_it_was(trained, labels, tmp_path):
    model, _ = trained
    save_model(model, tmp_path / "m", {"task": "synthesize-from-labels", **model.training_pixel_spacing})
    from_path = synthesize_from_labels(labels, model=tmp_path / "m.safetensors", seed=1)[0]   # a pathlib.Path
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.style_norm.eval()                                                 # a mixed state, kept as it is
    try:
        sample = synthesize_from_labels(labels, model=model, seed=1, quantum_backend="torch")[0]
        flags = {name: m.training for name, m in model.named_modules()}
        assert flags.pop("style_norm") is False and all(flags.values())
    finally:
        model.eval()
    assert np.allclose(sample.array, from_path.array, atol=1e-3)            # rendered in eval mode all the same
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_seeds_out_of_range_refused(trained, labels):
    model, _ = trained
    for seed in (-1, 2 ** 32, 1.5):
        with pytest.raises(ValueError, match="seed"):
            synthesize_from_labels(labels, model=model, seed=seed)
    assert synthesize_from_labels(labels, model=model, seed=2 ** 32 - 1)[0].metadata["seed"] == 2 ** 32 - 1


def test_critic_receptive_field_is_what_its_doc_says():
    torch.manual_seed(0)
    critic = LabelPatchCritic(7, width=8, spectral=False)
    image = torch.randn(1, 1, 128, 128, requires_grad=True)
    x = torch.cat([image, torch.rand(1, 7, 128, 128)], dim=1)
    for layer in critic.layers:
        x = torch.nn.functional.leaky_relu(layer(x), 0.2)
    scores = critic.score(x)
    assert scores.shape[-2:] == (16, 16)
    scores[0, 0, 8, 8].backward()                                           # one score, away from the border
    seen = image.grad[0, 0] != 0
    rows, cols = np.flatnonzero(seen.any(1).numpy()), np.flatnonzero(seen.any(0).numpy())
    side = rows[-1] - rows[0] + 1
    assert side == cols[-1] - cols[0] + 1 == 38
    assert f"{side}x{side}-pixel" in " ".join(LabelPatchCritic.__doc__.split())


@pytest.fixture
def model_file(trained, tmp_path):
    model, _ = trained
    save_model(model, tmp_path / "m", {"task": "synthesize-from-labels", **model.training_pixel_spacing})
    return tmp_path / "m.safetensors"


def test_samples_written_all_or_none(labels, model_file, tmp_path, monkeypatch, capsys):
    import QHQGANLib.core.io as io
    import QHQGANLib.core.outputs as outputs

    label_file = tmp_path / "labels.nrrd"
    write_volume(labels, label_file, pixel_type="int16")
    args = ["--quiet", "synthesize-from-labels", str(label_file), str(tmp_path / "chest_synthetic.nrrd"),
            "--model", str(model_file), "--samples", "3"]
    real_write, calls = io.write_volume, []

    def full_disk_on_second(volume, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(volume, path, **kwargs)

    monkeypatch.setattr(io, "write_volume", full_disk_on_second)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and os.strerror(errno.ENOSPC) in err and "No sample was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nrrd", "m.json", "m.safetensors"]  # nothing left
    monkeypatch.setattr(io, "write_volume", real_write)

    assert main(args) == 0
    written = sorted(tmp_path.glob("chest_synthetic_sample*.nrrd"))
    before = [p.read_bytes() for p in written]
    real_commit, commits = outputs.commit_file, []

    def fail_on_the_second_move(tmp, target, overwrite):                   # write_volume moves 3, then 3 moves
        commits.append(target)
        if len(commits) == 5:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_commit(tmp, target, overwrite)

    monkeypatch.setattr(outputs, "commit_file", fail_on_the_second_move)
    assert main(args + ["--seed", "9", "--overwrite"]) == 2
    assert [p.read_bytes() for p in written] == before                     # the earlier samples put back
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary folder or claim left


def test_commands_check_first_and_read_series_options(labels, model_file, tmp_path, monkeypatch, capsys):
    import inspect

    import QHQGANLib.apps.label_commands as label_commands
    import QHQGANLib.core.io as io

    assert "def positive_int" not in inspect.getsource(label_commands)     # apps.cli's, handed in
    reads = []

    def record(path, **kwargs):
        reads.append(kwargs)
        raise ValueError("recorded")

    monkeypatch.setattr(io, "read_volume", record)
    model = ["--save-model", str(tmp_path / "new")]
    assert main(["--quiet", "train-from-labels", "--input", str(shared_path(SLICE)), "--batch-size", "1"] + model) == 2
    assert "batch_size must be at least 2" in capsys.readouterr().err and not reads     # refused before reading
    assert main(["--quiet", "train-from-labels", "--input", str(shared_path(SLICE)), "--resample-z", "2.5",
                 "--series-block", "2", "--regularize-tilt"] + model) == 2
    assert reads[-1]["resample_z"] == 2.5 and reads[-1]["series_block"] == 2 and reads[-1]["regularize_tilt"]
    assert main(["--quiet", "synthesize-from-labels", str(tmp_path / "labels.nrrd"), str(tmp_path / "x_synthetic.nrrd"),
                 "--model", str(model_file), "--series-uid", "1.2.3", "--resample-z", "3", "--force"]) == 2
    assert reads[-1]["series_uid"] == "1.2.3" and reads[-1]["resample_z"] == 3.0 and reads[-1]["force"] is True
    assert "recorded" in capsys.readouterr().err


def test_image_and_label_pairs(labels, model_file, tmp_path):
    """--write-labels (issue #30 item 4: pairs to train other models): the class map every sample was rendered
    from, written beside them as int16 on the same grid, marked synthetic; the samples are unchanged by it."""
    import SimpleITK as sitk

    label_file = tmp_path / "labels.nrrd"
    write_volume(labels, label_file, pixel_type="int16")
    out = tmp_path / "pair_synthetic.nrrd"
    assert main(["--quiet", "synthesize-from-labels", str(label_file), str(out), "--model", str(model_file),
                 "--samples", "2", "--write-labels"]) == 0
    pair_label = tmp_path / "pair_synthetic_label.nrrd"
    back = read_volume(pair_label, force=True)
    assert back.metadata.get("synthetic") is True and back.same_geometry(labels)
    assert np.array_equal(back.array, labels.array)  # tissue classes already: recoded to themselves
    assert sitk.ReadImage(str(pair_label)).GetPixelID() == sitk.sitkInt16
    alone = tmp_path / "alone_synthetic.nrrd"
    assert main(["--quiet", "synthesize-from-labels", str(label_file), str(alone), "--model", str(model_file),
                 "--samples", "2"]) == 0
    for i in range(2):
        a = read_volume(tmp_path / f"pair_synthetic_sample{i}.nrrd", force=True)
        b = read_volume(tmp_path / f"alone_synthetic_sample{i}.nrrd", force=True)
        assert np.array_equal(a.array, b.array)
    assert not (tmp_path / "alone_synthetic_label.nrrd").exists()
