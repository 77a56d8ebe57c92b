"""Enhancement strength (#14): 0 is the input, 1 the model, noise falls monotonically in between;
"auto" (a target noise in HU) lands on its target. On real CT at a simulated quarter dose."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from QHQGANLib.core.io import read_volume
from QHQGANLib.physics.calibration import estimate_noise
from QHQGANLib.physics.lowdose import simulate_low_dose
from QHQGANLib.tasks.enhance import enhance
from QHQGANLib.core.kinds import default_model
from QHQGANLib.tasks.inference import run_model


@pytest.fixture(scope="module")
def low_and_full():
    normal = read_volume(shared_path("abdomen-ct-totalseg/dicom"))
    origin = normal.index_to_physical((0, 0, 8))
    normal = normal.with_geometry(normal.array[8:11].copy(), normal.spacing, origin)  # 3 slices, 2.5D context
    low = simulate_low_dose(normal, 0.25, seed=0)
    full = run_model(low, default_model("enhance"))  # what enhance() runs when no model is named
    return low, full


def _noise(volume) -> float:
    return estimate_noise(volume).noise_hu


def test_strength_limits(low_and_full):
    low, full = low_and_full
    zero = enhance(low, strength=0.0)
    assert np.array_equal(zero.array, low.array) and zero.array is not low.array
    one = enhance(low, strength=1.0)
    assert np.array_equal(one.array, full)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        enhance(low, strength=1.5)


def test_noise_falls_monotonically_with_strength(low_and_full):
    low, full = low_and_full
    noise = [_noise(enhance(low, strength=s)) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(noise, noise[1:])), noise
    assert noise[0] > 1.5 * noise[-1]  # the model removes a real share of the noise


def test_auto_strength_reaches_the_target_noise(low_and_full):
    low, _ = low_and_full
    before, after = _noise(low), _noise(enhance(low))
    target = 0.5 * (before + after)
    auto = enhance(low, target_noise_hu=target)
    info = auto.metadata["enhancement"]
    assert 0.0 < info["strength"] < 1.0
    assert _noise(auto) == pytest.approx(target, rel=0.05)
    assert "strength" in auto.metadata["history"][-1]
    assert not auto.metadata.get("warnings")  # reached: nothing to warn about
    # a target above the input's noise leaves the input; below the model's gives the full model; either is
    # said (issue #31: it used to happen silently)
    above = enhance(low, target_noise_hu=before * 2)
    assert above.metadata["enhancement"]["strength"] == 0.0
    assert any("unchanged (strength 0)" in w for w in above.metadata["warnings"])
    below = enhance(low, target_noise_hu=0.5)
    assert below.metadata["enhancement"]["strength"] == 1.0
    assert any("cannot be reached" in w and "strength 1" in w for w in below.metadata["warnings"])


def test_the_cli_prints_the_noise_before_and_after(low_and_full, tmp_path, capsys):
    from QHQGANLib import write_volume
    from QHQGANLib.apps.cli import main

    low, _ = low_and_full
    path = write_volume(low, tmp_path / "low.nrrd")
    assert main(["enhance", str(path), str(tmp_path / "out.nrrd"), "--target-noise-hu", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "HU in," in captured.out and "target 0.5 HU; strength 1.00" in captured.out
    assert "qhqgan: warning: the target noise 0.5 HU cannot be reached" in captured.err
