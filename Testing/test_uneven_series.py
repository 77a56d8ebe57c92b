"""Real clinical series: uneven slice spacing and multi-block series (issue #31, first item).

The series are built from real slices of Pancreas-CT-CB_001 (../shared/data/abdomen-ct-pancreas-cb:
contiguous 3 mm axial slices, 512x512): copies written into tmp_path by pydicom, with one slice moved
(a shortened last gap), one slice dropped (a missing slice), every second slice dropped in one part
(two blocks: 3 mm then 6 mm), the second block sheared (gantry tilt) or turned (another orientation).
A plain read refuses them with one line that says where the gaps are and which option helps;
``resample_z`` puts them on a regular grid from the slices' real positions, ``series_block`` reads
one regular block as acquired; the CLI does the same end to end.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from QHQGANLib import read_volume  # noqa: E402
from QHQGANLib.apps.cli import main  # noqa: E402
from QHQGANLib.core.file_checks import VolumeReadError  # noqa: E402
from QHQGANLib.core.slice_grid import UnevenSeriesError, gap_blocks, resample_slices  # noqa: E402

from conftest import shared_path  # noqa: E402

pytestmark = pytest.mark.shared_data

SERIES = "abdomen-ct-pancreas-cb"
GAP = 3.0  # mm between the real slices


def _real_files() -> list:
    """The real series' files, sorted by position along the slice normal (z up: the file numbers go down)."""
    files = sorted(shared_path(SERIES).glob("*.dcm"))
    return sorted(files, key=lambda f: float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]))


def _write(folder: Path, files, shift=None) -> Path:
    """Copies of real slices; ``shift(k, ds)`` may change slice k's header (k in position order)."""
    folder.mkdir()
    for k, f in enumerate(files):
        if shift is None:
            shutil.copy(f, folder / f.name)
            continue
        ds = pydicom.dcmread(str(f))
        shift(k, ds)
        ds.save_as(str(folder / f.name))
    return folder


def _move_z(ds, dz: float) -> None:
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + dz]
    ds.SliceLocation = float(ds.ImagePositionPatient[2])


def _hu(f: Path) -> np.ndarray:
    ds = pydicom.dcmread(str(f))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def real():
    return _real_files()[60:72]  # 12 contiguous slices, 3 mm apart


def test_a_shortened_last_gap_is_refused_with_the_gap_and_the_option(tmp_path, real):
    folder = _write(tmp_path / "uneven", real, lambda k, ds: _move_z(ds, -1.0) if k == len(real) - 1 else None)
    with pytest.raises(UnevenSeriesError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message and "uneven slice spacing" in message
    assert f"gaps 3.0 mm except 2.0 mm between slices 11 and 12 ({real[-2].name} and {real[-1].name})" in message
    assert "--resample-z MM, e.g. --resample-z 3.0" in message and "resample_z=MM" in message
    assert "--series-block N, N from 1 to 2" in message  # the 11 regular slices, then the moved one


def test_resampling_an_uneven_series_keeps_the_real_slices(tmp_path, real):
    folder = _write(tmp_path / "uneven", real, lambda k, ds: _move_z(ds, -1.0) if k == len(real) - 1 else None)
    z = np.array([float(pydicom.dcmread(str(folder / f.name), stop_before_pixels=True).ImagePositionPatient[2])
                  for f in real])
    assert np.allclose(np.diff(z), [GAP] * 10 + [2.0], atol=1e-3)
    volume = read_volume(folder, resample_z=1.0)
    assert volume.spacing[2] == pytest.approx(1.0) and volume.shape == (33, 512, 512)  # 0 .. 32 mm
    assert np.allclose(volume.direction, np.eye(3))
    assert volume.index_to_physical((0, 0, 0))[2] == pytest.approx(z[0], abs=1e-4)
    assert z[-1] - 1.0 < volume.index_to_physical((0, 0, volume.shape[0] - 1))[2] <= z[-1] + 1e-3
    for k in (0, 5, 10):  # real slices on the grid, unchanged
        assert np.array_equal(volume.array[3 * k], _hu(real[k]))
    assert np.allclose(volume.array[31], (_hu(real[10]) + _hu(real[11])) / 2, atol=1e-3)  # halfway: 1 mm of 2
    assert np.array_equal(volume.array[32], _hu(real[11]))  # the moved slice, at its own position
    assert np.allclose(volume.array[1], (2 * _hu(real[0]) + _hu(real[1])) / 3, atol=1e-3)
    note = volume.metadata["history"][-1]
    assert note.startswith("resampled along z to 1.0 mm from 12 slices at uneven positions (gaps 2.0-3.0 mm): "
                           "33 slices, 12 of them real slices unchanged, 21 interpolated")
    assert volume.metadata["resampled_z"]["source_positions_mm"][-1] == pytest.approx(32.0, abs=1e-3)
    assert volume.metadata["dicom"]["SeriesInstanceUID"]  # still the source's provenance


def test_a_missing_slice_is_named_and_resampled_across(tmp_path, real):
    files = real[:6] + real[7:]
    folder = _write(tmp_path / "gap", files)
    with pytest.raises(UnevenSeriesError, match=r"missing slice\(s\): gaps 3\.0 mm except 6\.0 mm between slices 6 "
                                                r"and 7 .*--resample-z 3\.0"):
        read_volume(folder)
    volume = read_volume(folder, resample_z=GAP)
    assert volume.shape[0] == 12  # the dropped slice's position comes back, interpolated
    assert np.allclose(volume.array[6], (_hu(real[5]) + _hu(real[7])) / 2, atol=1e-3)
    assert np.array_equal(volume.array[7], _hu(real[7]))


def test_two_blocks_refused_then_resampled_or_read_one_by_one(tmp_path, real):
    files = real[:10] + [_real_files()[60 + k] for k in (11, 13, 15, 17)]  # 10 slices at 3 mm, then 4 at 6 mm
    folder = _write(tmp_path / "blocks", files)
    with pytest.raises(UnevenSeriesError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message
    assert "uneven slice spacing: 2 blocks: 10 slices at 3.0 mm then 4 at 6.0 mm" in message
    assert "--resample-z 3.0" in message and "--series-block N, N from 1 to 2" in message

    volume = read_volume(folder, resample_z=GAP)
    z0 = float(pydicom.dcmread(str(files[0]), stop_before_pixels=True).ImagePositionPatient[2])
    assert volume.shape[0] == 18 and volume.spacing[2] == pytest.approx(GAP)  # 0 .. 51 mm
    assert volume.origin[2] == pytest.approx(z0, abs=1e-4)
    for k, f in enumerate(files):  # every real slice sits on the 3 mm grid, unchanged
        height = float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]) - z0
        assert np.array_equal(volume.array[int(round(height / GAP))], _hu(f)), f.name
    assert np.allclose(volume.array[10], (_hu(files[9]) + _hu(files[10])) / 2, atol=1e-3)
    assert "from 14 slices at uneven positions (gaps 3.0-6.0 mm)" in volume.metadata["history"][-1]

    second = read_volume(folder, series_block=2)
    assert second.shape[0] == 4 and second.spacing[2] == pytest.approx(6.0, abs=1e-3)
    assert second.origin[2] == pytest.approx(z0 + 33.0, abs=1e-3)
    assert np.array_equal(second.array[0], _hu(files[10]))
    assert second.metadata["history"] == ["block 2 of 2 read alone: slices 11-14 of 14 along the normal (the series: "
                                          "2 blocks: 10 slices at 3.0 mm then 4 at 6.0 mm)"]
    first = read_volume(folder, series_block=1)
    assert first.shape[0] == 10 and first.spacing[2] == pytest.approx(GAP, abs=1e-3)
    with pytest.raises(VolumeReadError, match=r"no block 3 .*holds 2 regular block\(s\): 2 blocks: 10 slices"):
        read_volume(folder, series_block=3)


def test_a_tilted_two_block_series_needs_both_options_and_works_with_them(tmp_path, real):
    """Gantry tilt of 15 degrees (positions sheared along y, as GE writes them) over two blocks."""
    files = real[:10] + [_real_files()[60 + k] for k in (11, 13, 15, 17)]
    z0 = float(pydicom.dcmread(str(files[0]), stop_before_pixels=True).ImagePositionPatient[2])
    shear = np.tan(np.radians(15.0))

    def tilt(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (z - z0) * shear, z]
        ds.GantryDetectorTilt = "15"

    folder = _write(tmp_path / "tilted", files, tilt)
    with pytest.raises(VolumeReadError, match=r"gantry tilt of 15\.0 degrees .*--regularize-tilt.*also unevenly "
                                              r"spaced \(2 blocks: 10 slices at 3\.0 mm then 4 at 6\.0 mm\): add "
                                              r"resample_z=MM \(--resample-z MM, e\.g\. 3\.0\)"):
        read_volume(folder)
    with pytest.raises(UnevenSeriesError, match="2 blocks"):
        read_volume(folder, regularize_tilt=True)
    volume = read_volume(folder, regularize_tilt=True, resample_z=GAP)
    assert volume.shape[0] == 18 and volume.metadata["gantry_tilt_degrees"] == pytest.approx(15.0, abs=0.01)
    assert [n.split(" ")[0] for n in volume.metadata["history"]] == ["gantry", "resampled"]
    block = read_volume(folder, regularize_tilt=True, series_block=1)  # the same slices, no resampling
    assert np.array_equal(volume.array[:10], block.array)


def test_blocks_of_different_orientations_are_read_one_at_a_time(tmp_path, real):
    """The second block turned by 12 degrees about x (a different gantry tilt, written into the orientation)."""
    files = real[:8] + real[8:12]
    angle = np.radians(12.0)
    col = np.array([0.0, np.cos(angle), -np.sin(angle)])
    normal = np.cross([1.0, 0.0, 0.0], col)
    top = [float(v) for v in pydicom.dcmread(str(files[7]), stop_before_pixels=True).ImagePositionPatient]

    def turn(k, ds):
        if k >= 8:
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0] + [float(v) for v in col]
            ds.ImagePositionPatient = [float(v) for v in np.asarray(top) + (k - 7) * 5.0 * normal]

    folder = _write(tmp_path / "turned", files, turn)
    with pytest.raises(UnevenSeriesError, match=r"blocks of different slice orientations .*2 blocks: 8 slices at 3\.0 "
                                                r"mm then 4 at 5\.0 mm; one grid cannot hold them: read one regular "
                                                r"block with series_block=N"):
        read_volume(folder)
    with pytest.raises(UnevenSeriesError, match="different slice orientations"):
        read_volume(folder, resample_z=3.0)
    second = read_volume(folder, series_block=2)
    assert second.shape[0] == 4 and second.spacing[2] == pytest.approx(5.0, abs=1e-3)
    assert np.allclose(second.direction[:, 2], normal, atol=1e-5)
    assert np.array_equal(second.array[0], _hu(files[8]))


def test_cli_uneven_series_end_to_end(tmp_path, real, capsys):
    folder = _write(tmp_path / "uneven", real, lambda k, ds: _move_z(ds, -1.0) if k == len(real) - 1 else None)
    out = tmp_path / "enhanced.nrrd"
    assert main(["enhance", str(folder), str(out), "--strength", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gaps 3.0 mm except 2.0 mm between slices 11 and 12" in err and "--resample-z" in err
    assert not out.exists()

    assert main(["enhance", str(folder), str(out), "--strength", "0", "--resample-z", "3", "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "qhqgan: note: input resampled along z to 3.0 mm from 12 slices at uneven positions" in err
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (512, 512, 11) and image.GetSpacing()[2] == pytest.approx(3.0)
    assert image.GetMetaData("QHQGAN_RESAMPLED_Z").startswith("resampled along z to 3.0 mm from 12 slices")
    assert np.array_equal(sitk.GetArrayFromImage(image)[10], _hu(real[10]))
    assert read_volume(out).metadata["resampled_z"]["note"].startswith("resampled along z to 3.0 mm")  # read back


def test_cli_simulate_low_dose_on_one_block(tmp_path, real, capsys):
    files = real[:10] + [_real_files()[60 + k] for k in (11, 13)]
    folder = _write(tmp_path / "blocks", files)
    out = tmp_path / "low.nrrd"
    assert main(["simulate-low-dose", str(folder), str(out), "--dose", "0.5", "--series-block", "2",
                 "--progress", "none"]) == 0
    assert "input block 2 of 2 read alone" in capsys.readouterr().err
    image = sitk.ReadImage(str(out))
    assert image.GetSize()[2] == 2 and image.GetSpacing()[2] == pytest.approx(6.0, abs=1e-3)


def test_through_plane_super_resolution_says_what_it_needs(tmp_path, real, capsys):
    files = real[:10] + [_real_files()[60 + k] for k in (11, 13, 15, 17)]
    folder = _write(tmp_path / "blocks", files)
    out = tmp_path / "thin.nrrd"
    assert main(["super-resolve", str(folder), str(out), "--axis", "z", "--scale", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 blocks: 10 slices at 3.0 mm then 4 at 6.0 mm" in err
    assert "needs the slices as acquired" in err and "--series-block N (N from 1 to 2)" in err
    assert "--resample-z" not in err
    assert main(["super-resolve", str(folder), str(out), "--axis", "z", "--scale", "2", "--resample-z", "3",
                 "--quiet"]) == 2
    assert "interpolated slices" in capsys.readouterr().err
    assert not out.exists()

    from QHQGANLib import super_resolve

    with pytest.raises(ValueError, match="resampled along z: read one regular block"):
        super_resolve(read_volume(folder, resample_z=GAP), scale=2, axis="z")


def test_cli_derived_dicom_of_a_resampled_series_reads_back_regular(tmp_path, real, capsys):
    folder = _write(tmp_path / "uneven", real[:6], lambda k, ds: _move_z(ds, -1.0) if k == 5 else None)
    out = tmp_path / "derived"
    assert main(["enhance", str(folder), str(out), "--dicom", "--strength", "0", "--resample-z", "1",
                 "--quiet"]) == 0
    back = read_volume(out)
    assert back.shape[0] == 15 and back.spacing[2] == pytest.approx(1.0, abs=1e-3)
    ds = pydicom.dcmread(str(sorted(out.glob("*.dcm"))[0]), stop_before_pixels=True)
    assert "resampled along z to 1.0 mm" in str(ds.DerivationDescription)


def test_ge_two_block_protocol_split_by_thickness():
    """14 slices at 4 mm then 14 at 7 mm, 4 mm between the blocks: by positions alone the 15th slice ends the
    first block; its SliceThickness (7 mm) puts it in the second."""
    heights = np.r_[np.arange(15) * 4.0, 56.0 + 7.0 * np.arange(1, 14)]
    assert gap_blocks(heights) == [(0, 15), (15, 28)]
    assert gap_blocks(heights, [4.0] * 14 + [7.0] * 14) == [(0, 14), (14, 28)]
    thin = resample_slices(np.arange(28, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32),
                           heights, 2.0)
    assert thin.shape[0] == 74 and thin[1, 0, 0] == 0.5 and thin[28, 0, 0] == 14.0  # 0 .. 146 mm; 56 mm: slice 14
    assert thin[-1, 0, 0] == pytest.approx(26 + 6 / 7)  # 146 mm: 6 of the 7 mm from slice 26 to 27; none beyond


def test_resample_z_on_a_regular_file_and_no_blocks_in_a_file():
    path = shared_path("head-ct-vtk/headsq_quarter_hu.nii.gz")  # 93 slices 1.5 mm apart
    original = read_volume(path)
    volume = read_volume(path, resample_z=3.0)
    assert volume.shape[0] == 47 and volume.spacing[2] == pytest.approx(3.0)
    assert np.array_equal(volume.array[5], original.array[10]) and volume.origin == original.origin
    assert volume.metadata["history"][-1].startswith("resampled along z to 3.0 mm from 93 slices 1.5 mm apart")
    assert read_volume(path, resample_z=1.5).metadata.get("history") is None  # already on that grid
    with pytest.raises(VolumeReadError, match="no block 2"):
        read_volume(path, series_block=2)
    with pytest.raises(ValueError, match="above 0"):
        read_volume(path, resample_z=0)
