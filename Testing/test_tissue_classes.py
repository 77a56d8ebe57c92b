"""Tissue classes from HU and morphology (issue #30, item 2): ``QHQGANLib.physics.tissue_classes``.

A drawn phantom runs everywhere; the real CT of ../shared/data checks the classes on a chest and an
abdomen slice, that the couch is not body, and the agreement with TotalSegmentator's reference
segmentations (model output, not manual ground truth) of two training images. The thresholds of the
real-data tests were set as plausible ranges for the anatomy before the final numbers were read;
the numbers measured with the module as shipped are in each docstring.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_path
from QHQGANLib import Volume, read_volume
from QHQGANLib.physics.tissue_classes import (AIR, BONE, ENHANCED, FAT, LUNG, OUTSIDE, SOFT, TISSUE_CLASSES,
                                              body_masks, class_fractions, tissue_labels)

#: TotalSegmentator v2 `total` classes (the files' numbers match v2: checked by HU and position).
TS_LUNGS = list(range(10, 15))
TS_BONES = [25] + list(range(26, 51)) + list(range(69, 79)) + [91] + list(range(92, 117))  # sacrum..sternum


def _phantom() -> Volume:
    """A 2 mm-pixel body: fat rim, soft tissue, two lungs, a trachea, a vertebra with marrow and canal,
    a contrast-filled aorta, and a couch 6 mm below the back; plus a little noise."""
    ny, nx = 160, 200
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    a = np.full((ny, nx), -1000.0)

    def ellipse(cy, cx, ry, rx):
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0

    a[ellipse(75, 100, 55, 85)] = -100.0                     # fat
    a[ellipse(75, 100, 48, 78)] = 40.0                       # soft tissue
    a[ellipse(65, 60, 22, 25)] = -850.0                      # lungs
    a[ellipse(65, 140, 22, 25)] = -850.0
    a[ellipse(45, 100, 4, 4)] = -1000.0                      # trachea (50 mm^2)
    a[ellipse(105, 100, 10, 10)] = 700.0                     # vertebral body: cortex ...
    a[ellipse(105, 100, 8, 8)] = 120.0                       # ... and marrow
    a[ellipse(85, 120, 6, 6)] = 250.0                        # aorta with contrast
    a[136:139, 10:190] = 200.0                               # couch shell, 3 px below the body
    a += np.random.default_rng(0).normal(0, 8, a.shape)
    return Volume(a[None].astype(np.float32), (2.0, 2.0, 5.0), (-200.0, -160.0, 30.0), np.eye(3),
                  {"synthetic": True, "history": ["drawn phantom"]})


def _fractions(labels: Volume) -> dict:
    return {k: round(v, 3) for k, v in class_fractions(labels).items()}


def test_phantom_classes_geometry_and_input_untouched():
    ct = _phantom()
    before = ct.array.copy()
    labels = tissue_labels(ct)
    assert np.array_equal(ct.array, before)
    assert labels.same_geometry(ct) and labels.array.dtype == np.float32
    codes = labels.array[0]
    assert np.array_equal(codes, np.rint(codes)) and set(np.unique(codes)) <= set(TISSUE_CLASSES)
    assert codes[65, 60] == LUNG and codes[65, 140] == LUNG
    assert codes[45, 100] == AIR                            # the airway is not lung
    assert codes[75, 100] == SOFT and codes[75, 20] == FAT
    assert codes[105, 100] == BONE and codes[105, 91] == BONE   # marrow and cortex
    assert codes[85, 120] == ENHANCED
    assert (codes[136:139] == OUTSIDE).all()                # the couch is not body
    assert codes[5, 5] == OUTSIDE
    assert labels.metadata.get("synthetic") is True          # the label map of a synthetic image stays marked
    assert "tissue classes" in labels.metadata["history"][-1]
    assert body_masks(ct)[0, 75, 100] and not body_masks(ct)[0, 137, 100]


def test_chest_slice_has_large_lungs_bone_and_no_couch():
    """Lung_Dx-A0001, slice 30 (kernel B, smooth), mid-chest. Measured: lung 0.412 of the body, fat 0.225,
    soft tissue 0.313, enhanced 0.008, bone 0.037, air inside 0.004; the same slice reconstructed with
    the sharp kernel L (much noisier): lung 0.405, bone 0.041."""
    ct = read_volume(shared_path("chest-ct-lungdx/A0001-kernel-B/1-30.dcm"))
    labels = tissue_labels(ct)
    f = _fractions(labels)
    assert 0.25 <= f["lung"] <= 0.60, f
    assert 0.01 <= f["bone"] <= 0.10, f
    assert 0.05 <= f["fat"] <= 0.40 and 0.15 <= f["soft tissue"] <= 0.50, f
    assert f["air inside the body"] <= 0.03, f
    codes = labels.array[0]
    spine = codes[int(ct.shape[1] * 0.6):, ct.shape[2] // 2 - 20:ct.shape[2] // 2 + 20]
    assert (spine == BONE).sum() > 300                      # the spine, posterior midline
    sharp = _fractions(tissue_labels(read_volume(shared_path("chest-ct-lungdx/A0001-kernel-L/1-30.dcm"))))
    assert abs(sharp["lung"] - f["lung"]) <= 0.02, (sharp, f)


def test_abdomen_slice_fat_soft_tissue_and_bone():
    """KiTS CT27 (portal-venous abdomen at the kidneys, liver and spleen enlarged). Measured: fat 0.184 of
    the body, soft tissue 0.755, enhanced 0.024 (vessels, oral contrast), bone 0.031, air inside 0.005,
    lung 0; the body is 0.515 of the grid."""
    ct = read_volume(shared_path("abdomen-ct-kits/CT27.dcm"))
    f = _fractions(tissue_labels(ct))
    assert 0.10 <= f["fat"] <= 0.45, f
    assert 0.45 <= f["soft tissue"] <= 0.85, f
    assert 0.01 <= f["bone"] <= 0.10, f
    assert f["lung"] <= 0.01 and f["air inside the body"] <= 0.03 and f["enhanced soft tissue and vessels"] <= 0.10, f
    assert 0.3 <= 1 - f["outside the body"] <= 0.7, f


@pytest.mark.parametrize("name", ["chest-ct-lctsc/LCTSC-Test-S1-101.dcm", "abdomen-ct-kits/CT27.dcm"])
def test_the_couch_is_not_body(name):
    """Flat RT couch (LCTSC) and curved couch (KiTS). Measured: 1902 and 1710 couch pixels above -500 HU below
    the patient; the body ends 84 and 49 rows above the couch's lowest row."""
    from scipy import ndimage as ndi

    ct = read_volume(shared_path(name))
    body = tissue_labels(ct).array[0] > 0
    tissue_like = ndi.median_filter(ct.array[0], 3) > -500
    bottom = np.flatnonzero(body.any(axis=1)).max()
    couch = tissue_like[bottom + 1:]
    assert couch.sum() > 1000                                # there is a couch under the patient ...
    couch_bottom = bottom + 1 + np.flatnonzero(couch.any(axis=1)).max()
    assert couch_bottom - bottom >= 20                       # ... and the body stops well above it


def _totalseg(name: str):
    """The image and TotalSegmentator's labels resampled onto its grid (the 20-slice file's labels are
    stored with y flipped: same voxels, another direction)."""
    sitk = pytest.importorskip("SimpleITK")
    image_path = shared_path(f"abdomen-ct-totalseg/{name}.nii.gz")
    label_path = shared_path(f"abdomen-ct-totalseg/{name}_labels.nii.gz")
    image = sitk.ReadImage(str(image_path))
    labels = sitk.Resample(sitk.ReadImage(str(label_path)), image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return read_volume(image_path), sitk.GetArrayFromImage(labels)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_lungs_agree_with_totalsegmentator():
    """TotalSegmentator example (3 mm, 30 slices, lung bases in the last 11): its five lung lobes against
    class 2. Threshold Dice > 0.85; measured 0.894 (4307 reference voxels, 4238 class-2, 3818 in both;
    the extra voxels are partial volume and bowel gas on one slice)."""
    ct, ref = _totalseg("example_ct_sm")
    labels = tissue_labels(ct).array
    dice = _dice(np.isin(ref, TS_LUNGS), labels == LUNG)
    assert dice > 0.85, dice


def test_bones_agree_with_totalsegmentator():
    """The 20-slice Siemens series (0.98 mm, upper abdomen, portal venous, an elderly patient with a
    calcified aorta): vertebrae, ribs, humeri against class 6. Threshold Dice > 0.65; measured 0.709
    (77250 reference voxels, 95946 class-6, 61417 in both: the calcified aorta joins the bone, and
    osteoporotic marrow below 150 HU is soft tissue). No reference voxel lies outside the body."""
    ct, ref = _totalseg("example_ct_dicom_20slices")
    labels = tissue_labels(ct).array
    dice = _dice(np.isin(ref, TS_BONES), labels == BONE)
    assert dice > 0.65, dice
    assert not ((ref > 0) & (labels == OUTSIDE)).any()
