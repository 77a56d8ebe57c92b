"""Slice orientation (issue #28, item 4): a volume stored coronally or sagittally is processed on its axial planes.

The same real CT stored axially and coronally (or sagittally) must give the same enhanced and dose-simulated
voxels at the same physical positions: before the fix, the coronal copy was processed plane by plane as if
its planes were axial (outputs differed by ~10 HU on average). The round trip to axial storage is exact.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from QHQGANLib.core.io import read_volume, write_volume
from QHQGANLib.core.orientation import slice_axis_name, to_axial
from QHQGANLib.core.volume import Volume
from QHQGANLib.physics.lowdose import simulate_low_dose
from QHQGANLib.tasks.enhance import enhance, super_resolve


@pytest.fixture(scope="module")
def axial():
    ct = read_volume(shared_path("abdomen-ct-totalseg/dicom"))
    k0, y0, x0 = 6, 160, 140
    origin = ct.index_to_physical((x0, y0, k0))
    return Volume(ct.array[k0:k0 + 8, y0:y0 + 192, x0:x0 + 224].copy(), ct.spacing, origin, ct.direction,
                  {"modality": "CT"})


def _restored(axial: Volume, order) -> Volume:
    """``axial`` stored with index axes reordered (new axis n = old axis order[n]), same physical voxels."""
    array = np.transpose(axial.array, tuple(2 - order[2 - a] for a in range(3)))
    return Volume(np.ascontiguousarray(array), tuple(axial.spacing[c] for c in order), axial.origin,
                  axial.direction[:, list(order)], dict(axial.metadata))


@pytest.fixture(scope="module")
def coronal(axial):
    return _restored(axial, (0, 2, 1))  # slices along P: coronal planes first


def test_orientation_is_recognised_and_the_round_trip_is_exact(axial, coronal):
    sagittal = _restored(axial, (1, 2, 0))
    assert [slice_axis_name(v) for v in (axial, coronal, sagittal)] == ["axial", "coronal", "sagittal"]
    assert to_axial(axial)[0] is axial
    for stored in (coronal, sagittal):
        back_to_axial, undo = to_axial(stored)
        assert np.array_equal(back_to_axial.array, axial.array)
        assert np.allclose(back_to_axial.direction, axial.direction) and back_to_axial.spacing == axial.spacing
        again = undo(back_to_axial)
        assert np.array_equal(again.array, stored.array) and again.spacing == stored.spacing
        assert np.allclose(again.direction, stored.direction) and np.allclose(again.origin, stored.origin)
        # every voxel keeps its physical position
        assert np.allclose(stored.index_to_physical((3, 5, 2)),
                           back_to_axial.index_to_physical(tuple(np.array((3, 5, 2))[list(np.argsort(
                               [0, 2, 1] if stored is coronal else [1, 2, 0]))])))


def test_coronal_storage_is_enhanced_on_axial_planes(axial, coronal):
    a = enhance(axial)
    c = enhance(coronal)
    assert c.shape == coronal.shape and np.allclose(c.direction, coronal.direction)
    assert np.allclose(to_axial(c)[0].array, a.array, atol=0.05)  # the same voxels, stored coronally
    assert any("stored coronal" in h for h in c.metadata["history"])


def test_coronal_storage_is_dose_simulated_on_axial_planes(axial, coronal):
    a = simulate_low_dose(axial, 0.25, seed=3, truncation="off")
    c = simulate_low_dose(coronal, 0.25, seed=3, truncation="off")
    assert np.allclose(to_axial(c)[0].array, a.array, atol=0.05)
    noise = c.array - coronal.array
    # inserted noise is independent between axial planes: neighbouring coronal planes are not copies of it
    lag = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert abs(lag) < 0.2, lag


@pytest.mark.filterwarnings("ignore:the input's pixel size")
def test_coronal_storage_is_super_resolved_in_the_axial_plane(axial, coronal):
    a = super_resolve(axial, scale=2)
    c = super_resolve(coronal, scale=2)
    assert c.shape == (coronal.shape[0] * 2, coronal.shape[1], coronal.shape[2] * 2)  # P and L finer, S kept
    assert np.allclose(to_axial(c)[0].array, a.array, atol=0.05)


def test_written_and_read_back_coronal_volume_keeps_its_storage(coronal, tmp_path):
    out = enhance(coronal)
    path = write_volume(out, tmp_path / "coronal_enhanced.nrrd")
    back = read_volume(path, force=True)
    assert back.shape == coronal.shape and slice_axis_name(back) == "coronal"
