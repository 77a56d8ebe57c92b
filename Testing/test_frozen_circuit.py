"""Frozen-circuit rows (issue #26, item 5): the hybrid generator with its quantum slot held at its mean output.

The frozen copy's slot returns one constant vector (the mean of what the live slot gave over the image)
for any input; the model it was made from is untouched; a network without the slot is refused. On a real
slice at a simulated quarter dose the frozen HQGAN's output differs from the live one's: the live circuit's
output varies over the image, so freezing it changes what the network computes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_path
from QHQGANLib.core.io import read_volume
from QHQGANLib.nn.weights import load_model
from QHQGANLib.physics.lowdose import simulate_low_dose
from QHQGANLib.tasks.enhance import enhance
from QHQGANLib.tasks.frozen_circuit import freeze_mixer


@pytest.fixture(scope="module")
def low():
    return simulate_low_dose(read_volume(shared_path("abdomen-ct-kits/CT26.dcm")), 0.25, seed=1)


@pytest.mark.parametrize("name", ["hqgan-enhance", "mlp-control-enhance"])
def test_frozen_slot_outputs_its_mean(low, name):
    live = load_model(name)
    before = {k: v.clone() for k, v in live.state_dict().items()}
    frozen, mean = freeze_mixer(live, low)
    angles = torch.rand(5, mean.size) * 2 * np.pi - np.pi
    with torch.no_grad():
        out = frozen.mix.mixer(angles)
    assert torch.allclose(out, torch.from_numpy(mean).expand(5, -1))
    with torch.no_grad():
        varied = live.mix.mixer(angles)  # the live slot answers its input
    assert float(varied.std(0).max()) > 1e-3
    assert all(torch.equal(before[k], v) for k, v in live.state_dict().items())
    assert np.all(np.abs(mean) <= 1.0)  # circuit expectation values and the MLP's tanh lie in [-1, 1]
    a, b = enhance(low, live).array, enhance(low, frozen).array
    assert not np.allclose(a, b, atol=1e-3)  # the frozen slot is what the network now uses (a bug would give a == b)


def test_networks_without_a_slot_are_refused(low):
    for name in ("redcnn-enhance", "no-circuit-enhance"):
        with pytest.raises(ValueError, match="no circuit or MLP slot"):
            freeze_mixer(name, low)


@pytest.mark.parametrize("mixer", ["quantum", "mlp"])
def test_in_the_modulating_placement_the_slot_is_the_only_source_of_varying_modulation(low, mixer):
    """Issue #26, item 5: with ``placement="film"`` the slot's outputs reach the result only as per-position
    scales and shifts of the features (no path adds the features around them). Frozen to its mean, every
    stage's scale and shift is one constant per channel over the whole slice; live, they vary with the
    anatomy (a real quarter-dose slice), and the enhanced slices differ."""
    from QHQGANLib.nn.enhancer import HQGANGenerator

    torch.manual_seed(0)
    net = HQGANGenerator(width=8, n_qubits=4, n_layers=1, mixer=mixer, placement="film").eval()
    assert net.mix.from_outputs is None  # nothing from the slot is added to the features
    with torch.no_grad():
        for conv in net.film:  # a trained network's modulation (zero at initialisation)
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.1)
        net.head.weight.normal_(0, 0.05)  # and its output head (zero at initialisation: the identity map)
    frozen, _ = freeze_mixer(net, low)
    x = torch.from_numpy(np.repeat(low.array[:, 128:384, 128:384], 3, 0))[None]
    modulation = {}
    for name, model in (("live", net), ("frozen", frozen)):
        seen = []
        hooks = [conv.register_forward_hook(lambda _m, _i, out: seen.append(out.detach())) for conv in model.film]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        modulation[name] = seen
    assert len(modulation["live"]) == 3  # the deepest features and both decoder stages
    for live, frozen_map in zip(modulation["live"], modulation["frozen"]):
        spread = frozen_map.flatten(2).std(-1)
        assert float(spread.max()) < 1e-5  # frozen: constant over the slice, channel by channel
        assert float(live.flatten(2).std(-1).max()) > 1e-3  # live: varies from position to position
    a, b = enhance(low, net).array, enhance(low, frozen).array
    assert float(np.abs(a - b).mean()) > 0.1
