"""Fair controls (issue #9): classical stand-ins for the circuit, the networks without it, RED-CNN with
HQGAN's input and its published loss, BM3D with the noise's power spectrum.

Counts at the shipped depths, pinned below:

=================  =======================  =================  ===================
                   enhancement (8 q, 2 l)   synthesis (8 q, 4 l)
=================  =======================  =================  ===================
circuit            32 angles                64 angles
mlp-control        8 -> 8 -> 8, 144         8 -> 8 -> 8, 144
bottleneck (old)   8 -> 1 -> 8, 25          8 -> 3 -> 8, 59
no-circuit         HQGAN - 1128             HQGAN - 64
=================  =======================  =================  ===================
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from QHQGANLib import Volume, read_volume
from QHQGANLib.apps.cli import build_parser
from QHQGANLib.core.kinds import ENHANCE_ARCHS, SYNTH_METHODS
from QHQGANLib.core.resources import models_dir
from QHQGANLib.nn.baselines import REDCNN
from QHQGANLib.nn.build import build_from_config, model_config
from QHQGANLib.nn.common import count_parameters
from QHQGANLib.nn.critics import PatchCritic
from QHQGANLib.nn.enhancer import HQGANGenerator
from QHQGANLib.nn.mixers import (ClassicalMixer, circuit_parameters, fair_hidden, make_mixer, mlp_parameters)
from QHQGANLib.nn.synthesis import METHODS, SynthGenerator
from QHQGANLib.nn.weights import load_model, save_model
from QHQGANLib.quantum.layer import QuantumLayer
from QHQGANLib.tasks.enhance import enhance
from QHQGANLib.training.enhancement import (EnhancerStep, TrainConfig, build_model, model_context,
                                            train_enhancer)
from QHQGANLib.training.pairs import PairPool

DEPTHS = [(8, 2), (8, 4), (4, 6), (3, 1), (6, 10)]  # the shipped enhancement and synthesis depths first


@pytest.fixture(scope="module")
def ct():
    from pydicom.data import get_testdata_file

    return read_volume(get_testdata_file("CT_small.dcm"))


def tiny(arch: str, **kw) -> TrainConfig:
    base = dict(arch=arch, steps=2, batch_size=2, patch_size=32, width=4, n_qubits=3, n_layers=1, pool_size=1,
                refresh_every=0, redcnn_width=4, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# the fair MLP
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_qubits, n_layers", DEPTHS)
def test_the_fair_mlp_is_as_wide_and_as_large_as_the_circuit(n_qubits, n_layers):
    circuit = QuantumLayer(n_qubits, n_layers, outputs="expval", reupload=True)
    target = count_parameters(circuit)
    assert target == circuit_parameters(n_qubits, n_layers) == n_layers * n_qubits * 2
    mlp = make_mixer("mlp", n_qubits, n_layers)
    assert isinstance(mlp, ClassicalMixer)
    first, second = mlp.net[0], mlp.net[2]
    assert (first.in_features, second.out_features) == (n_qubits, n_qubits)  # the circuit's widths in and out
    assert mlp.hidden == first.out_features >= n_qubits
    assert count_parameters(mlp) == mlp_parameters(n_qubits, mlp.hidden) >= target
    # the smallest such width: one unit fewer is narrower than the circuit or has fewer parameters
    assert mlp.hidden - 1 < n_qubits or mlp_parameters(n_qubits, mlp.hidden - 1) < target
    angles = torch.rand(5, n_qubits) * np.pi
    out = mlp(angles)
    assert out.shape == circuit(angles).shape == (5, n_qubits) and out.abs().max() <= 1.0


def test_the_legacy_bottleneck_is_not_the_fair_control():
    assert fair_hidden(8, 32) == 8 and make_mixer("bottleneck", 8, 2).hidden == 1
    assert fair_hidden(8, 64) == 8 and make_mixer("bottleneck", 8, 4).hidden == 3
    assert fair_hidden(4, 48) == 5  # 4 -> 5 -> 4: 49 parameters for 48 angles, wider than the circuit


# ---------------------------------------------------------------------------
# enhancement: the controls and their counts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_qubits, n_layers, width", [(8, 2, 16), (4, 3, 4), (6, 1, 8)])
def test_enhancement_controls_differ_from_hqgan_only_in_the_quantum_block(n_qubits, n_layers, width):
    nets = {m: HQGANGenerator(mixer=m, n_qubits=n_qubits, n_layers=n_layers, width=width)
            for m in ("quantum", "mlp", "bottleneck", "none")}
    q, mlp, none = nets["quantum"], nets["mlp"], nets["none"]
    circuit = circuit_parameters(n_qubits, n_layers)
    c = 4 * width  # channels where the block sits
    projections = (c * n_qubits + n_qubits) + (n_qubits * c + c)  # to_angles and from_outputs (1x1 convs)
    assert count_parameters(q.mix) == circuit + projections
    # no-circuit: the block is gone, angles projections included; nothing else differs
    assert isinstance(none.mix, torch.nn.Identity) and none.quantum_layer() is None
    assert count_parameters(q) - count_parameters(none) == circuit + projections
    # mlp-control: the circuit's slot holds the fair MLP, the projections are the same
    hidden = fair_hidden(n_qubits, circuit)
    assert mlp.config.mlp_hidden == hidden and q.config.mlp_hidden is None
    assert count_parameters(mlp) - count_parameters(q) == mlp_parameters(n_qubits, hidden) - circuit >= 0
    shapes = {k: v.shape for k, v in q.state_dict().items() if not k.startswith("mix.")}
    for net in nets.values():
        assert {k: v.shape for k, v in net.state_dict().items() if not k.startswith("mix.")} == shapes
    assert [model_config(n)["arch"] for n in nets.values()] == ["hqgan", "mlp-control", "bottleneck-ablation",
                                                                 "no-circuit"]


def test_enhancement_counts_at_the_shipped_depth():
    q = HQGANGenerator(n_qubits=8, n_layers=2)
    counts = {m: count_parameters(HQGANGenerator(mixer=m, n_qubits=8, n_layers=2)) - count_parameters(q)
              for m in ("mlp", "bottleneck", "none")}
    assert counts == {"mlp": 144 - 32, "bottleneck": 25 - 32, "none": -(32 + 520 + 576)}
    with pytest.raises(ValueError, match="mixer must be one of"):
        HQGANGenerator(mixer="classical")  # the old name is only read from stored cards


def test_untrained_no_circuit_generator_is_the_identity():
    x = torch.randn(2, 3, 32, 32) * 200
    with torch.no_grad():
        torch.testing.assert_close(HQGANGenerator(mixer="none")(x), x[:, 1:2], atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------
# synthesis: the controls and their counts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_qubits, n_layers", DEPTHS)
def test_synthesis_controls_differ_from_hqgan_only_in_the_slot(n_qubits, n_layers):
    nets = {m: SynthGenerator(m, n_qubits=n_qubits, n_layers=n_layers, width=4)
            for m in ("hqgan", "mlp-control", "no-circuit", "bottleneck-ablation")}
    circuit = circuit_parameters(n_qubits, n_layers)
    q, mlp, none = nets["hqgan"], nets["mlp-control"], nets["no-circuit"]
    assert count_parameters(q.mixer) == circuit
    assert count_parameters(q) - count_parameters(none) == circuit  # the noise goes straight to batch norm
    assert isinstance(none.mixer, torch.nn.Identity) and none.latent_dim == q.latent_dim
    hidden = fair_hidden(n_qubits, circuit)
    assert mlp.config["mlp_hidden"] == mlp.mixer.hidden == hidden >= n_qubits
    assert count_parameters(mlp) - count_parameters(q) == mlp_parameters(n_qubits, hidden) - circuit
    shapes = {k: v.shape for k, v in q.state_dict().items() if not k.startswith("mixer.")}
    for net in nets.values():
        assert {k: v.shape for k, v in net.state_dict().items() if not k.startswith("mixer.")} == shapes
        # the same uniform angles as the circuit, the same batch norm of the slot's outputs
        assert net.n_circuits == q.n_circuits and net.config["feature_norm"]
        z = net.sample_latent(64, torch.Generator().manual_seed(0))
        assert z.shape == (64, n_qubits * q.n_circuits) and 0 <= float(z.min()) and float(z.max()) < np.pi


def test_synthesis_counts_at_the_shipped_depth_and_the_legacy_name():
    q = count_parameters(SynthGenerator("hqgan"))
    counts = {m: count_parameters(SynthGenerator(m)) - q for m in ("mlp-control", "bottleneck-ablation",
                                                                  "no-circuit")}
    assert counts == {"mlp-control": 144 - 64, "bottleneck-ablation": 59 - 64, "no-circuit": -64}
    legacy = SynthGenerator("ablation")  # the old name is the bottleneck, under its new name
    assert legacy.method == "bottleneck-ablation" and legacy.mixer.hidden == 3
    # the CLI offers the explicit names (train-synth --method, train-enhance --arch), not "ablation";
    # test_synthesis.py's test_every_method_trains_a_few_steps trains every one of METHODS
    assert SYNTH_METHODS == METHODS and {"mlp-control", "no-circuit", "bottleneck-ablation"} <= set(METHODS)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    arch = next(a for a in sub.choices["train-enhance"]._actions if a.dest == "arch")
    method = next(a for a in sub.choices["train-synth"]._actions if a.dest == "method")
    assert tuple(arch.choices) == ENHANCE_ARCHS and "ablation" not in arch.choices
    assert tuple(method.choices) == SYNTH_METHODS and "ablation" not in method.choices


# ---------------------------------------------------------------------------
# every variant trains, runs on real CT, and round-trips through a model card
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch, extra", [("mlp-control", {}), ("no-circuit", {}), ("bottleneck-ablation", {}),
                                         ("ablation", {}), ("redcnn", {"redcnn_context": 1, "loss": "mse"}),
                                         ("hqgan-film", {}), ("mlp-control-film", {})])
def test_every_variant_trains_runs_and_round_trips(ct, tmp_path, arch, extra):
    cfg = tiny(arch, **extra)
    untrained = build_model(cfg)
    model = train_enhancer(cfg, [ct]).eval()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(untrained.state_dict()[k], v)]
    assert changed, "two steps changed no weight"
    out = enhance(ct, model)  # a real CT slice, 2.5D stacks made by the task
    assert out.shape == ct.shape and np.isfinite(out.array).all()
    assert 0.0 < float(np.abs(out.array - ct.array).mean()) < 200.0
    card = save_model(model, tmp_path / "m", {"task": "enhance", "training": cfg.to_dict()})
    config = card["config"]
    if arch == "redcnn":
        assert config == {"arch": "redcnn", "width": 4, "context": 1}
    else:  # the description is self-contained: the MLP's hidden width is stored
        expected = {"mlp-control": "mlp", "no-circuit": "none", "hqgan-film": "quantum",
                    "mlp-control-film": "mlp"}.get(arch, "bottleneck")
        assert config["mixer"] == expected and config["arch"] == ("bottleneck-ablation" if arch == "ablation"
                                                                  else arch)
        assert config["mlp_hidden"] == {"mlp": 3, "bottleneck": 1, "none": None, "quantum": None}[expected]
        assert config["placement"] == ("film" if arch.endswith("-film") else "residual")
    reloaded = load_model(tmp_path / "m.json")
    x = torch.from_numpy(np.repeat(ct.array[:, 32:96, 32:96], model.in_slices, 0))[None]
    same_outputs(model, reloaded, x)


@pytest.mark.parametrize("method", ["mlp-control", "no-circuit", "bottleneck-ablation"])
def test_synthesis_controls_round_trip(tmp_path, method):
    torch.manual_seed(0)
    model = SynthGenerator(method, n_qubits=4, n_layers=3, width=4, mlp_hidden=7 if method == "mlp-control" else None)
    model.eval()
    card = save_model(model, tmp_path / "s", {"task": "synthesize"})
    assert card["config"]["method"] == method and card["config"]["arch"] == f"{method}-synth"
    reloaded = load_model(tmp_path / "s.json")
    if method == "mlp-control":
        assert reloaded.mixer.hidden == 7  # an explicit width survives
    same_outputs(model, reloaded, model.sample_latent(3, torch.Generator().manual_seed(1)))


def test_shipped_legacy_cards_build_the_same_network():
    card = json.loads((models_dir() / "redcnn-enhance.json").read_text())
    assert card["config"].get("arch") == "redcnn" and "mlp_hidden" not in card["config"]
    shipped = load_model("redcnn-enhance")  # weights loaded strictly into the rebuilt network
    fresh = REDCNN(width=32, context=0)
    assert shipped.in_slices == 1
    assert {k: v.shape for k, v in shipped.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert count_parameters(shipped) == card["n_parameters"]


#: the config of the retired ``ablation-synth`` card as it shipped (legacy names, no ``mlp_hidden``)
LEGACY_ABLATION_SYNTH = {"arch": "ablation-synth", "method": "ablation", "size": 64, "n_qubits": 8, "n_layers": 4,
                         "latent_dim": 100, "width": 16, "upsample": "resize", "feature_norm": True, "n_circuits": 4}


def test_a_legacy_ablation_synth_card_still_loads(tmp_path):
    """Weights stored under the retired ``ablation-synth`` card (method "ablation", the 8 -> 3 -> 8
    bottleneck) load strictly into the network that card describes."""
    trained = SynthGenerator("bottleneck-ablation", n_qubits=8, n_layers=4, n_circuits=4).eval()
    card = save_model(trained, tmp_path / "ablation-synth", {"task": "synthesize"})
    card_path = tmp_path / "ablation-synth.json"
    stored = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**stored, "config": dict(LEGACY_ABLATION_SYNTH)}))
    reloaded = load_model(card_path)
    assert reloaded.method == "bottleneck-ablation" and reloaded.mixer.hidden == 3
    assert count_parameters(reloaded) == card["n_parameters"]
    same_outputs(trained, reloaded, trained.sample_latent(3, torch.Generator().manual_seed(1)))


def test_inconsistent_descriptions_are_refused():
    with pytest.raises(ValueError, match="mixer"):
        build_from_config({"arch": "hqgan", "mixer": "mlp"})
    with pytest.raises(ValueError, match="placement"):
        build_from_config({"arch": "hqgan-film", "mixer": "quantum", "placement": "residual"})
    with pytest.raises(ValueError, match="placement"):
        HQGANGenerator(mixer="none", placement="film")
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model(TrainConfig(arch="classical"))
    with pytest.raises(ValueError, match="loss must be one of"):
        build_model(TrainConfig(loss="l2"))


# ---------------------------------------------------------------------------
# RED-CNN with HQGAN's input
# ---------------------------------------------------------------------------
def test_redcnn_with_context_sees_three_slices_and_keeps_the_centre_as_shortcut():
    torch.manual_seed(0)
    net = REDCNN(width=8, context=1)
    assert net.in_slices == 3 and net.config == {"arch": "redcnn", "width": 8, "context": 1}
    # only the first convolution is wider: 2 more input slices of 5x5 kernels
    assert count_parameters(net) - count_parameters(REDCNN(width=8)) == 2 * 8 * 25
    stack = torch.stack([torch.full((24, 24), -1000.0), torch.linspace(-200, 300, 24 * 24).view(24, 24),
                         torch.full((24, 24), 500.0)])[None]
    with pytest.raises(ValueError, match="expected"):
        net(stack[:, 1:2])
    with torch.no_grad():
        moved = stack.clone()
        moved[:, 0] += 300.0  # a neighbour slice changes the output: the context is used
        assert (net(moved) - net(stack)).abs().max() > 1e-3
        for p in net.parameters():
            p.zero_()
        # all weights zero: what is left is the outer shortcut, the centre slice (not a neighbour)
        torch.testing.assert_close(net(stack), stack[:, 1:2], rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="context"):
        REDCNN(context=2)


# ---------------------------------------------------------------------------
# the published RED-CNN loss: MSE, no critic
# ---------------------------------------------------------------------------
def run_steps(ct, cfg: TrainConfig, n: int = 2):
    torch.manual_seed(cfg.seed)
    model, critic = build_model(cfg), PatchCritic()
    pool = PairPool([ct], cfg, model_context(model), [cfg.seed, 0])
    step = EnhancerStep(cfg, model, critic, pool, np.random.default_rng(cfg.seed), torch.device("cpu"))
    before = {k: v.clone() for k, v in critic.state_dict().items()}
    stats = [step.train_step(i) for i in range(n)]
    critic_changed = any(not torch.equal(before[k], v) for k, v in critic.state_dict().items())
    return stats, critic_changed


def test_mse_loss_trains_without_a_critic(ct, tmp_path):
    stats, critic_changed = run_steps(ct, tiny("redcnn", loss="mse"))
    assert not critic_changed
    for s in stats:
        assert s["loss"] == s["mse"] > 0 and "critic" not in s and "adv" not in s and "ssim_loss" not in s
    # the default loss does train the critic (so the check above can fail)
    stats, critic_changed = run_steps(ct, tiny("redcnn"))
    assert critic_changed and "critic" in stats[0] and "mse" not in stats[0]
    # the loss log of a run, and resume refuses another loss or context
    cfg = tiny("redcnn", loss="mse", output_dir=str(tmp_path), steps=1)
    train_enhancer(cfg, [ct])
    log = [json.loads(line) for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert "mse" in log[0] and "critic" not in log[0]
    for change in ({"loss": "l1-ssim-adv"}, {"redcnn_context": 1}):
        kwargs = {"loss": "mse", "output_dir": str(tmp_path), "steps": 2, "resume": True, **change}
        with pytest.raises(ValueError, match=f"cannot resume: the checkpoint has {next(iter(change))}="):
            train_enhancer(tiny("redcnn", **kwargs), [ct])


def test_cli_trains_redcnn_with_context_and_mse(ct_small_path, tmp_path):
    from QHQGANLib.apps.cli import main

    args = ["train-enhance", "--input", str(ct_small_path), "--arch", "redcnn", "--redcnn-context", "1",
            "--loss", "mse", "--redcnn-width", "4", "--steps", "1", "--batch-size", "2", "--patch-size", "32",
            "--pool-size", "1", "--save-model", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 0
    card = json.loads((tmp_path / "r.json").read_text())
    assert card["config"]["context"] == 1 and card["training"]["loss"] == "mse"
    assert load_model(tmp_path / "r.json").in_slices == 3


# ---------------------------------------------------------------------------
# BM3D with the noise power spectrum
# ---------------------------------------------------------------------------
def correlated_noise(rng: np.random.Generator, n: int, shape, std: float) -> np.ndarray:
    """Noise as filtered back-projection makes it: white Gaussian noise through a ramp x Hann filter."""
    f = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :])
    filt = f * (0.5 + 0.5 * np.cos(np.pi * np.clip(f / 0.5, 0, 1)))
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, *shape))) * filt))
    return noise / noise.std() * std


def test_bm3d_psd_convention_and_resampling():
    from QHQGANLib.tasks.classical import estimate_noise_psd, resample_psd

    rng = np.random.default_rng(0)
    white = estimate_noise_psd(rng.normal(0.0, 30.0, (6, 64, 64)))
    assert white.shape == (64, 64) and white.mean() / 64 ** 2 == pytest.approx(900.0, rel=0.03)
    # resampling keeps the variance of white noise and the spectrum of correlated noise
    assert resample_psd(white, (40, 50)).mean() / 2000 == pytest.approx(white.mean() / 64 ** 2, rel=1e-9)
    noise = correlated_noise(rng, 12, (128, 128), 20.0)
    direct = estimate_noise_psd(noise[:, :64, :64])
    from_large = estimate_noise_psd(noise, shape=(64, 64))
    assert from_large.mean() == pytest.approx(direct.mean(), rel=0.02)  # the variance (measured 0.3 % apart)
    # the spectrum's shape, in rings of frequency that hold its power (measured within 13 %)
    f = np.hypot(np.fft.fftfreq(64)[:, None], np.fft.fftfreq(64)[None, :])
    rings = [(f >= lo) & (f < lo + 0.08) for lo in np.arange(0.0, 0.4, 0.08)]
    ratios = [from_large[r].mean() / direct[r].mean() for r in rings]
    assert all(0.8 < r < 1.2 for r in ratios), ratios
    assert direct[rings[2]].mean() > 3 * direct[rings[0]].mean()  # a ramp: not white noise
    with pytest.raises(ValueError, match="residuals"):
        estimate_noise_psd(np.zeros(5))


def test_bm3d_with_the_noise_psd_beats_white_noise_bm3d_on_correlated_noise(ct, monkeypatch):
    """On a real slice with ramp-filtered (CT-like) noise of 40 HU: measured RMSE 40.0 HU (noisy), 28.0 (white
    BM3D at the true sigma), 27.0 (white, blind sigma), 23.8 (the PSD of 8 other noise realisations)."""
    bm3d = pytest.importorskip("bm3d")
    from QHQGANLib.tasks.classical import bm3d_denoise, estimate_noise_psd

    clean = ct.array[0].astype(np.float64)
    rng = np.random.default_rng(0)
    tuning = correlated_noise(rng, 8, clean.shape, 40.0)  # noise-only residuals, other realisations
    noisy = Volume((clean + correlated_noise(rng, 1, clean.shape, 40.0)[0])[None].astype(np.float32), ct.spacing)
    psd = estimate_noise_psd(tuning)

    def rmse(v: Volume) -> float:
        return float(np.sqrt(np.mean((v.array[0] - clean) ** 2)))

    with_psd = bm3d_denoise(noisy, psd=psd)
    assert with_psd.metadata["history"][-1] == "BM3D denoised (noise PSD)"
    white, blind = rmse(bm3d_denoise(noisy, sigma_hu=40.0)), rmse(bm3d_denoise(noisy))
    assert rmse(with_psd) < 0.92 * min(white, blind) and white < rmse(noisy)
    # the convention: a flat PSD of s^2 * M * N HU^2 is white noise of s HU, whatever size it is given at
    calls = []
    real = bm3d.bm3d
    monkeypatch.setattr(bm3d, "bm3d", lambda x, sigma_psd: calls.append(np.asarray(sigma_psd)) or real(x, sigma_psd))
    flat = bm3d_denoise(noisy, psd=np.full((32, 32), 40.0 ** 2 * 32 * 32))
    np.testing.assert_allclose(calls[-1], (40.0 / 4095.0) ** 2 * 128 * 128, rtol=1e-9)
    np.testing.assert_allclose(flat.array, bm3d_denoise(noisy, sigma_hu=40.0).array, atol=1e-3)
    with pytest.raises(ValueError, match="not both"):
        bm3d_denoise(noisy, sigma_hu=40.0, psd=psd)
    with pytest.raises(ValueError, match="psd"):
        bm3d_denoise(noisy, psd=-psd)
