"""Volume I/O: every format of the foundation issue, geometry, and the refusals of bad input.

Synthetic DICOM series are made from pydicom's real CT_small.dcm by changing only
the geometry tags, so the files are real CT Image Storage objects.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from QHQGANLib import Volume, read_volume, write_volume
from QHQGANLib.core.io import VolumeReadError

from conftest import shared_path


# ---------------------------------------------------------------------------
# helpers: a DICOM series written from CT_small.dcm
# ---------------------------------------------------------------------------
def write_series(folder: Path, ct_small: Path, n: int = 5, *, step: float = 2.5,
                 row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0), shift=(0.0, 0.0, 0.0),
                 positions=None, series_uid=None, modality="CT", shuffle=True) -> list:
    """Write ``n`` slices along the normal of (row, col); returns their 2D pixel arrays in HU."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(str(ct_small))
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    origin = np.asarray([float(v) for v in base.ImagePositionPatient])
    if positions is None:
        positions = [origin + k * step * normal + k * np.asarray(shift) for k in range(n)]
    uid = series_uid or pydicom.uid.generate_uid()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(positions)) if shuffle else np.arange(len(positions))
    slices_hu = []
    for k, pos in enumerate(positions):
        ds = copy.deepcopy(base)
        stored = base.pixel_array.astype(np.int32)
        stored = np.roll(stored, 3 * k, axis=1)  # every slice different
        ds.PixelData = stored.astype(base.pixel_array.dtype).tobytes()
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = k + 1
        ds.Modality = modality
        ds.save_as(str(folder / f"slice{order[k]:03d}.dcm"))
        slices_hu.append(stored * float(base.RescaleSlope) + float(base.RescaleIntercept))
    return slices_hu


# ---------------------------------------------------------------------------
# formats and geometry
# ---------------------------------------------------------------------------
def test_single_dicom_file_ct_small(ct_small_path):
    ds = pydicom.dcmread(str(ct_small_path))
    vol = read_volume(ct_small_path)
    assert vol.shape == (1, 128, 128)
    assert vol.array.dtype == np.float32
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[0], expected)  # rescale slope/intercept applied
    assert vol.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert vol.metadata["dicom"]["Modality"] == "CT"
    assert vol.array.min() < -800  # air in HU


def test_series_sorted_by_position_not_file_name(tmp_path, ct_small_path):
    expected = write_series(tmp_path / "s", ct_small_path, n=6, step=2.5, shuffle=True)
    vol = read_volume(tmp_path / "s")
    assert vol.shape == (6, 128, 128)
    for k in range(6):
        np.testing.assert_array_equal(vol.array[k], expected[k])
    assert vol.spacing[2] == pytest.approx(2.5)


def test_oblique_series_geometry_matches_simpleitk(tmp_path, ct_small_path):
    angle = np.radians(25)
    row = (np.cos(angle), np.sin(angle), 0.0)
    col = (0.0, 0.0, -1.0)  # a coronal-ish oblique stack
    write_series(tmp_path / "obl", ct_small_path, n=4, step=3.0, row=row, col=col)
    vol = read_volume(tmp_path / "obl")
    reader = sitk.ImageSeriesReader()
    image = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(tmp_path / "obl")))
    np.testing.assert_allclose(vol.spacing, image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(vol.direction.reshape(-1), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(vol.array, sitk.GetArrayFromImage(image), atol=1e-3)
    # the last voxel's centre is where DICOM says the last slice's first pixel... plus its row/col
    last = vol.index_to_physical((127, 0, 3))
    first_pixel_last_slice = np.asarray(vol.origin) + 3 * 3.0 * np.cross(row, col)
    np.testing.assert_allclose(last, first_pixel_last_slice + 127 * vol.spacing[0] * np.asarray(row), atol=1e-3)


@pytest.mark.shared_data
def test_jpeg2000_series_matches_reference_nifti():
    folder = shared_path("abdomen-ct-totalseg/dicom")
    reference = sitk.ReadImage(str(shared_path("abdomen-ct-totalseg/example_ct_dicom_20slices.nii.gz")))
    vol = read_volume(folder)
    assert vol.metadata["transfer_syntax"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert vol.shape == (20, 512, 512)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(reference).astype(np.float32))
    np.testing.assert_allclose(vol.spacing, reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(vol.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction.reshape(-1), reference.GetDirection(), atol=1e-6)


@pytest.mark.shared_data
@pytest.mark.parametrize("relative", ["abdomen-ct-totalseg/example_ct.nii.gz",
                                      "head-ct-vtk/headsq_quarter_hu.nii.gz"])
def test_nifti_geometry_in_lps(relative):
    path = shared_path(relative)
    image = sitk.ReadImage(str(path))
    vol = read_volume(path)
    assert vol.size_xyz == image.GetSize()
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), atol=1e-5)  # SimpleITK reports LPS
    np.testing.assert_allclose(vol.direction.reshape(-1), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(image).astype(np.float32))


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd"])
def test_round_trip_every_writable_format(tmp_path, suffix):
    rng = np.random.default_rng(1)
    direction = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    if np.linalg.det(direction) < 0:
        direction[:, 0] *= -1
    vol = Volume(rng.normal(0, 300, (5, 7, 9)).astype(np.float32) - 500, (0.7, 0.8, 2.5),
                 (-100.0, 20.5, 33.0), direction)
    path = write_volume(vol, tmp_path / f"ct{suffix}")
    back = read_volume(path)
    assert back.same_geometry(vol, tol=1e-4)
    np.testing.assert_allclose(back.array, vol.array, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------
def test_non_ct_modality_refused_unless_forced():
    from pydicom.data import get_testdata_file

    mr = get_testdata_file("MR_small.dcm")
    with pytest.raises(VolumeReadError, match="modality is MR, not CT"):
        read_volume(mr)
    assert read_volume(mr, force=True).shape == (1, 64, 64)


def test_several_series_refused_and_selectable(tmp_path, ct_small_path):
    write_series(tmp_path / "mix", ct_small_path, n=3, series_uid="1.2.3.4.1")
    write_series(tmp_path / "mix2", ct_small_path, n=2, series_uid="1.2.3.4.2")
    for f in (tmp_path / "mix2").iterdir():
        f.rename(tmp_path / "mix" / f"other_{f.name}")
    with pytest.raises(VolumeReadError, match="holds 2 series"):
        read_volume(tmp_path / "mix")
    assert read_volume(tmp_path / "mix", series_uid="1.2.3.4.2").shape == (2, 128, 128)


def test_missing_slice_refused(tmp_path, ct_small_path):
    write_series(tmp_path / "gap", ct_small_path, n=6)
    files = sorted((tmp_path / "gap").iterdir(), key=lambda p: float(pydicom.dcmread(str(p)).ImagePositionPatient[2]))
    files[3].unlink()
    with pytest.raises(VolumeReadError, match="missing slice"):
        read_volume(tmp_path / "gap")


def test_duplicated_slice_refused(tmp_path, ct_small_path):
    origin = np.asarray([float(v) for v in pydicom.dcmread(str(ct_small_path)).ImagePositionPatient])
    positions = [origin, origin + [0, 0, 2.5], origin + [0, 0, 2.5], origin + [0, 0, 5.0]]
    write_series(tmp_path / "dup", ct_small_path, positions=positions)
    with pytest.raises(VolumeReadError, match="duplicated slice position"):
        read_volume(tmp_path / "dup")


def test_uneven_spacing_refused(tmp_path, ct_small_path):
    origin = np.asarray([float(v) for v in pydicom.dcmread(str(ct_small_path)).ImagePositionPatient])
    positions = [origin + [0, 0, z] for z in (0.0, 2.5, 5.0, 6.5, 9.0)]
    write_series(tmp_path / "uneven", ct_small_path, positions=positions)
    with pytest.raises(VolumeReadError, match="uneven slice spacing"):
        read_volume(tmp_path / "uneven")


def test_gantry_tilt_refused(tmp_path, ct_small_path):
    # slices step 2.5 mm along z but also 0.9 mm along y each: a 20-degree tilt
    write_series(tmp_path / "tilt", ct_small_path, n=5, step=2.5, shift=(0.0, 0.91, 0.0))
    with pytest.raises(VolumeReadError, match="gantry tilt of 20"):
        read_volume(tmp_path / "tilt")


@pytest.mark.shared_data
def test_real_noncontiguous_kits_slices_refused_as_series():
    with pytest.raises(VolumeReadError, match="duplicated slice position|missing slice|uneven"):
        read_volume(shared_path("abdomen-ct-kits"))


def test_broken_dicom_file_refused(tmp_path, ct_small_path):
    data = ct_small_path.read_bytes()
    (tmp_path / "broken.dcm").write_bytes(data[: len(data) // 3])
    with pytest.raises(VolumeReadError, match="broken.dcm"):
        read_volume(tmp_path / "broken.dcm")


def test_nan_volume_refused(tmp_path):
    array = np.full((2, 4, 4), -1000.0, np.float32)
    array[1, 2, 2] = np.nan
    image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(tmp_path / "nan.nrrd"))
    with pytest.raises(VolumeReadError, match="1 voxels are NaN or infinite"):
        read_volume(tmp_path / "nan.nrrd")


def test_huge_volume_refused_before_reading_pixels(tmp_path):
    image = sitk.Image(64, 64, 64, sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "big.nrrd"))
    with pytest.raises(VolumeReadError, match="exceed the limit"):
        read_volume(tmp_path / "big.nrrd", max_voxels=100_000)


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", b"hello", "not a supported volume"),
    ("photo.png", b"\x89PNG\r\n", "picture holds no CT values"),
    ("missing.nrrd", None, "no such file"),
])
def test_wrong_file_types_refused(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(VolumeReadError, match=message):
        read_volume(tmp_path / name)


def test_empty_and_non_dicom_folders_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="empty"):
        read_volume(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("x")
    with pytest.raises(VolumeReadError, match="no DICOM file"):
        read_volume(tmp_path / "txt")


def test_values_that_are_not_hu_refused_unless_forced(tmp_path):
    mr_like = (np.random.default_rng(0).random((3, 16, 16)) * 900).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(mr_like), str(tmp_path / "mr.nii.gz"))
    with pytest.raises(VolumeReadError, match="do not look like CT in HU"):
        read_volume(tmp_path / "mr.nii.gz")
    assert read_volume(tmp_path / "mr.nii.gz", force=True).shape == (3, 16, 16)


def test_write_refuses_to_overwrite_and_keeps_the_input(tmp_path, ct_small_path):
    vol = read_volume(ct_small_path)
    out = write_volume(vol, tmp_path / "ct.nrrd")
    before = out.read_bytes()
    with pytest.raises(FileExistsError):
        write_volume(vol.with_array(vol.array + 1), out)
    assert out.read_bytes() == before
    write_volume(vol.with_array(vol.array + 1), out, overwrite=True)
    assert read_volume(out).array[0, 0, 0] == vol.array[0, 0, 0] + 1
    with pytest.raises(ValueError, match="export_dicom_series"):
        write_volume(vol, tmp_path / "ct.dcm")


def test_empty_volume_refused():
    with pytest.raises(ValueError, match="empty"):
        Volume(np.zeros((0, 4, 4), np.float32))


def test_int16_output_holds_whole_hu_and_refuses_to_round(ct_small_path, tmp_path):
    """``write_volume(..., pixel_type="int16")``: a real CT's whole HU written as 16-bit integers read back
    exactly (half the file of float32); decimals are refused, not silently rounded, and nothing is written."""
    import SimpleITK as sitk

    from QHQGANLib import read_volume, write_volume

    ct = read_volume(ct_small_path)
    out = write_volume(ct, tmp_path / "ct16.nrrd", pixel_type="int16", compress=False)
    wide = write_volume(ct, tmp_path / "ct32.nrrd", compress=False)
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(read_volume(out).array, ct.array)
    assert out.stat().st_size < 0.6 * wide.stat().st_size
    with pytest.raises(ValueError, match="whole HU"):
        write_volume(ct.with_array(ct.array + 0.5), tmp_path / "half.nrrd", pixel_type="int16")
    assert not (tmp_path / "half.nrrd").exists()


def test_outputs_record_what_made_them_without_folders(ct_small_path, tmp_path):
    """Issue #31: an enhanced NRRD said nothing of how it was made. The history (task, model, strength) and
    the QHQGAN version go into the header, are read back (a later step adds to the same record), and a
    model given by path is named by its file name alone (folders can name a patient)."""
    import SimpleITK as sitk

    from QHQGANLib.core.constants import __version__

    ct = read_volume(ct_small_path)
    made = ct.with_array(ct.array, note="enhanced by /data/SMITH_JANE_1970/model.safetensors at strength 0.50")
    out = write_volume(made, tmp_path / "e.nrrd")
    image = sitk.ReadImage(str(out))
    assert image.GetMetaData("QHQGAN_version") == str(__version__)
    assert image.GetMetaData("QHQGAN_history") == "enhanced by model.safetensors at strength 0.50"
    assert "SMITH" not in out.read_bytes()[:4096].decode("latin-1")
    again = read_volume(out)
    chained = write_volume(again.with_array(again.array, note="super-resolved x2 by hqgan-sr2"), tmp_path / "s.mha")
    assert sitk.ReadImage(str(chained)).GetMetaData("QHQGAN_history") == (
        "enhanced by model.safetensors at strength 0.50 | super-resolved x2 by hqgan-sr2")
    nii = write_volume(made, tmp_path / "e.nii.gz")
    assert "strength 0.50" in sitk.ReadImage(str(nii)).GetMetaData("descrip")


def test_a_rescale_slope_of_zero_is_refused_not_read_as_one(ct_small_path, tmp_path):
    """Issue #28 (low): RescaleSlope 0 was read as 1 (``or 1``), so a broken file gave a plausible image."""
    ds = pydicom.dcmread(str(ct_small_path))
    ds.RescaleSlope = "0"
    broken = tmp_path / "slope0.dcm"
    ds.save_as(str(broken))
    with pytest.raises(VolumeReadError, match="RescaleSlope 0"):
        read_volume(broken)
    ds.RescaleSlope = "1"  # the same file with a valid slope reads
    ds.save_as(str(tmp_path / "slope1.dcm"))
    assert read_volume(tmp_path / "slope1.dcm").shape == (1, 128, 128)
