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
