"""Rare cases in real scans (issue #30, item 3): ``insert_lesion`` and ``qhqgan insert-lesion``.

The scan: KiTS CT27 (../shared/data/abdomen-ct-kits, 0.70 mm pixels, portal venous). The lesion: a
13 mm disc centred at row 157, column 128, in the liver (verified below: every voxel of it is soft tissue
by ``tissue_labels``, and the 5 mm around it has a median of 107 HU, enhanced liver parenchyma).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from QHQGANLib import Volume, read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.metrics.image import noise_in_uniform_regions
from QHQGANLib.physics.tissue_classes import SOFT, tissue_labels
from QHQGANLib.tasks.lesion import insert_lesion

CENTRE = (157, 128)
RADIUS_MM = 6.5


@pytest.fixture(scope="module")
def ct() -> Volume:
    return read_volume(shared_path("abdomen-ct-kits/CT27.dcm"))


def _disc(ct: Volume, radius_mm: float = RADIUS_MM, centre=CENTRE) -> np.ndarray:
    yy, xx = np.mgrid[:ct.shape[1], :ct.shape[2]]
    return (np.hypot(yy - centre[0], xx - centre[1]) * ct.spacing[0] <= radius_mm)[None]


def _local_noise(image: np.ndarray, region: np.ndarray, size: int = 5) -> float:
    """Mean local standard deviation in ``size`` x ``size`` windows lying inside ``region``."""
    from scipy import ndimage as ndi

    centres = ndi.binary_erosion(region, structure=np.ones((1, size, size)))
    return noise_in_uniform_regions(image.astype(np.float64), centres, size)


def _regions(ct: Volume, edge_mm: float = 1.5):
    yy, xx = np.mgrid[:ct.shape[1], :ct.shape[2]]
    d = np.hypot(yy - CENTRE[0], xx - CENTRE[1]) * ct.spacing[0]
    core = (d <= RADIUS_MM - edge_mm - ct.spacing[0])[None]
    ring = ((d > RADIUS_MM + 1.5) & (d <= RADIUS_MM + 8.5))[None]   # liver around it
    return core, ring


def test_the_region_is_liver(ct):
    mask = _disc(ct)
    assert (tissue_labels(ct).array[mask] == SOFT).all()
    image, _ = insert_lesion(ct, mask)
    assert 80 <= image.metadata["lesions"][-1]["surrounding_median_hu"] <= 140


def test_hypodense_matched_lesion(ct):
    """Measured: surrounding median 107 HU, target 67 HU, core mean 66.8 HU; local noise (5x5 windows) 12.2 HU
    in the core against 14.5 HU in the liver around it (matched), 0 HU (smooth)."""
    before = ct.array.copy()
    mask = _disc(ct)
    image, label = insert_lesion(ct, mask, kind="hypodense", texture="matched")
    assert np.array_equal(ct.array, before)                         # the input is untouched
    assert np.array_equal(image.array[~mask], ct.array[~mask])      # outside the mask: the input, bit for bit
    assert image.same_geometry(ct) and label.same_geometry(ct)
    info = image.metadata["lesions"][-1]
    assert info["mean_hu"] == pytest.approx(info["surrounding_median_hu"] - 40.0)
    core, ring = _regions(ct)
    assert abs(float(image.array[core].mean()) - info["mean_hu"]) <= 5.0
    inside, around = _local_noise(image.array, core), _local_noise(ct.array, ring)
    assert 0.7 <= inside / around <= 1.3, (inside, around)
    assert not np.array_equal(image.array[mask], ct.array[mask])

    smooth, _ = insert_lesion(ct, mask, kind="hypodense", texture="smooth")
    assert _local_noise(smooth.array, core) < 0.2 * around
    assert abs(float(smooth.array[core].mean()) - info["mean_hu"]) <= 0.5
    assert np.array_equal(smooth.array[~mask], ct.array[~mask])


def test_marks_label_and_history(ct, tmp_path):
    mask = _disc(ct)
    image, label = insert_lesion(ct, mask)
    assert image.metadata["synthetic"] is True and label.metadata["synthetic"] is True
    assert not ct.metadata.get("synthetic")
    assert set(np.unique(label.array)) == {0.0, 1.0} and int(label.array.sum()) == int(mask.sum())
    note = image.metadata["history"][-1]
    assert note.startswith("SYNTHETIC lesion inserted: hypodense") and f"{int(mask.sum())} voxels" in note
    assert "slice 0" in note and "HU" in note
    dicom = ct.metadata.get("dicom", {})
    for key in ("PatientName", "PatientID", "PatientBirthDate"):
        if dicom.get(key):
            assert str(dicom[key]) not in note
    for volume, name in ((image, "lesion_synthetic.nrrd"), (label, "lesion_synthetic_label.nrrd")):
        back = read_volume(write_volume(volume, tmp_path / name), force=True)
        assert back.metadata.get("synthetic") is True
        assert b"QHQGAN_SYNTHETIC" in (tmp_path / name).read_bytes()[:4096]


def test_kinds_and_explicit_hu(ct):
    core, _ = _regions(ct)
    for kind, expected in (("cyst", 10.0), ("calcification", 400.0)):
        image, _ = insert_lesion(ct, _disc(ct), kind=kind, texture="smooth")
        assert float(image.array[core].mean()) == pytest.approx(expected, abs=0.5)
    hyper, _ = insert_lesion(ct, _disc(ct), kind="hyperdense", texture="smooth")
    info = hyper.metadata["lesions"][-1]
    assert info["mean_hu"] == pytest.approx(info["surrounding_median_hu"] + 40.0)
    custom, _ = insert_lesion(ct, _disc(ct), hu=-20.0, texture="smooth")
    assert float(custom.array[core].mean()) == pytest.approx(-20.0, abs=0.5)


def test_soft_edge(ct):
    """The weight rises over edge_mm: the border voxels are between the original and the lesion."""
    mask = _disc(ct)
    image, _ = insert_lesion(ct, mask, kind="cyst", texture="smooth", edge_mm=1.5)
    hard, _ = insert_lesion(ct, mask, kind="cyst", texture="smooth", edge_mm=0)
    from scipy import ndimage as ndi

    border = mask & ~ndi.binary_erosion(mask)
    assert np.allclose(hard.array[mask], 10.0)
    mid = image.array[border]
    lo, hi = np.minimum(ct.array[border], 10.0), np.maximum(ct.array[border], 10.0)
    assert ((mid >= lo - 1e-3) & (mid <= hi + 1e-3)).all() and not np.allclose(mid, 10.0)


def test_drawn_noise_is_seeded_and_matched(ct):
    mask = _disc(ct)
    a, _ = insert_lesion(ct, mask, texture="noise", seed=1)
    b, _ = insert_lesion(ct, mask, texture="noise", seed=1)
    c, _ = insert_lesion(ct, mask, texture="noise", seed=2)
    assert np.array_equal(a.array, b.array) and not np.array_equal(a.array, c.array)
    core, ring = _regions(ct)
    ratio = _local_noise(a.array, core) / _local_noise(ct.array, ring)
    assert 0.7 <= ratio <= 1.3, ratio


def test_refusals(ct):
    with pytest.raises(ValueError, match="empty"):
        insert_lesion(ct, np.zeros(ct.shape, bool))
    with pytest.raises(ValueError, match="shape"):
        insert_lesion(ct, np.ones((1, 10, 10), bool))
    other = Volume(_disc(ct).astype(np.float32), ct.spacing, (0.0, 0.0, 0.0), ct.direction)
    with pytest.raises(ValueError, match="grid"):
        insert_lesion(ct, other)
    with pytest.raises(ValueError, match="outside the body"):
        insert_lesion(ct, _disc(ct, 5.0, centre=(20, 20)))            # air in a corner
    with pytest.raises(ValueError, match="outside the body"):
        insert_lesion(ct, _disc(ct, 5.0, centre=(470, 256)))          # the couch
    with pytest.raises(ValueError, match="too large"):
        insert_lesion(ct, _disc(ct, 50.0, centre=(250, 256)))         # 100 mm across
    with pytest.raises(ValueError, match="kind"):
        insert_lesion(ct, _disc(ct), kind="tumour")
    with pytest.raises(ValueError, match="texture"):
        insert_lesion(ct, _disc(ct), texture="grainy")
    accepted = Volume(_disc(ct).astype(np.float32), ct.spacing, ct.origin, ct.direction)
    insert_lesion(ct, accepted)                                       # a label map on the same grid is fine


def test_cli_end_to_end(ct, tmp_path, capsys):
    dicom = shared_path("abdomen-ct-kits/CT27.dcm")
    mask_path = write_volume(ct.with_array(_disc(ct).astype(np.float32)), tmp_path / "mask.nrrd")
    out = tmp_path / "liver_lesion_synthetic.nrrd"
    assert main(["insert-lesion", str(dicom), str(mask_path), str(out), "--kind", "hypodense", "--quiet"]) == 0
    image = read_volume(out)
    label = read_volume(tmp_path / "liver_lesion_synthetic_label.nrrd", force=True)
    assert image.metadata.get("synthetic") is True and label.metadata.get("synthetic") is True
    mask = _disc(ct)
    assert np.array_equal(image.array[~mask], ct.array[~mask]) and not np.array_equal(image.array[mask], ct.array[mask])
    assert int(label.array.sum()) == int(mask.sum())
    assert "SYNTHETIC lesion inserted" in image.metadata["history"][-1]
    # a name that does not say synthetic is refused before any work, and nothing is written
    plain = tmp_path / "liver_lesion.nrrd"
    assert main(["insert-lesion", str(dicom), str(mask_path), str(plain)]) == 2
    assert "synthetic" in capsys.readouterr().err
    assert not plain.exists() and not (tmp_path / "liver_lesion_label.nrrd").exists()
    # so is a label map whose name does not (it is the label of a synthetic image)
    other = tmp_path / "other_synthetic.nrrd"
    assert main(["insert-lesion", str(dicom), str(mask_path), str(other), "--label-out", str(tmp_path / "m.nrrd")]) == 2
    assert not other.exists() and not (tmp_path / "m.nrrd").exists()
