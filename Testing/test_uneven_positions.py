"""Slice-wise tasks keep every slice's own position (issue #31): an uneven series needs no resampling.

The series are built from real slices of Pancreas-CT-CB_001 (../shared/data/abdomen-ct-pancreas-cb: contiguous
3 mm axial slices): copies written into tmp_path by pydicom, cropped to 64 x 64 pixels around the liver (the
position moved with the crop, so every pixel keeps its place in the patient), with one slice moved (a shortened
last gap), one dropped (a missing slice), every second one dropped in a part (two blocks: 3 mm then 6 mm), or
sheared (gantry tilt). Enhancement, in-plane super-resolution and dose simulation read them as acquired and
write a derived DICOM series with each slice at its source position (read back by pydicom and by SimpleITK's
ImageSeriesReader, to 1e-3 mm, with the patient and study kept); NRRD/NIfTI/MHA outputs are refused before any
work with the three ways out; through-plane super-resolution keeps refusing; what is not one series stays
refused; the Slicer panel's path (a node is one regular grid) still works. ``evaluate`` and ``train-*`` take
the series options as enhance does (the demo's: Testing/test_demo.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from QHQGANLib import Volume, read_volume, write_volume  # noqa: E402
from QHQGANLib.apps.cli import main  # noqa: E402
from QHQGANLib.core.file_checks import VolumeReadError  # noqa: E402
from QHQGANLib.core.slice_grid import UnevenSeriesError  # noqa: E402
from QHQGANLib.core.slice_positions import SLICE_POSITIONS, slice_origins  # noqa: E402

from conftest import shared_path  # noqa: E402

pytestmark = pytest.mark.shared_data

SERIES = "abdomen-ct-pancreas-cb"
GAP = 3.0  # mm between the real slices
CROP = (200, 180, 64)  # first row, first column, size: liver, kidney, fat and muscle
#: The quickest shipped enhancer (no circuit to simulate).
FAST_MODEL = "no-circuit-enhance"
TOL_MM = 1e-3


def real_files() -> list:
    """The real series' files, sorted by position along the slice normal."""
    files = sorted(shared_path(SERIES).glob("*.dcm"))
    return sorted(files, key=lambda f: float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]))


def write_series(folder: Path, files, change=None) -> Path:
    """Copies of real slices cropped to ``CROP`` (ImagePositionPatient moved with the crop); ``change(k, ds)``
    may then change slice k's header (k in position order)."""
    folder.mkdir()
    r0, c0, n = CROP
    for k, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        pixels = ds.pixel_array[r0:r0 + n, c0:c0 + n].copy()
        row = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        dy, dx = (float(v) for v in ds.PixelSpacing)
        corner = np.array([float(v) for v in ds.ImagePositionPatient]) + c0 * dx * row + r0 * dy * col
        ds.ImagePositionPatient = [round(float(v), 4) for v in corner]
        ds.Rows, ds.Columns = n, n
        ds.PixelData = pixels.tobytes()
        if change is not None:
            change(k, ds)
        ds.save_as(str(folder / f.name))
    return folder


def move_z(ds, dz: float) -> None:
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + dz]
    ds.SliceLocation = float(ds.ImagePositionPatient[2])


def tilt(z0: float, degrees: float = 15.0):
    """A gantry tilt as GE writes it: positions sheared along y."""
    shear = np.tan(np.radians(degrees))

    def change(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (z - z0) * shear, z]
        ds.GantryDetectorTilt = str(degrees)
    return change


def headers(folder: Path) -> list:
    """The series' headers in position order."""
    items = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(Path(folder).glob("*.dcm"))]
    return sorted(items, key=lambda ds: float(ds.ImagePositionPatient[2]))


def positions(folder: Path) -> np.ndarray:
    return np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers(folder)])


def hu(ds) -> np.ndarray:
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def real():
    return real_files()


@pytest.fixture(scope="module")
def uneven(tmp_path_factory, real):
    """8 slices 3 mm apart, the last moved 1 mm nearer its neighbour (gaps 3.0 mm except 2.0 mm)."""
    return write_series(tmp_path_factory.mktemp("uneven") / "series", real[60:68],
                        lambda k, ds: move_z(ds, -1.0) if k == 7 else None)


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory, real):
    """6 slices at 3 mm, then 4 at 6 mm."""
    return write_series(tmp_path_factory.mktemp("blocks") / "series", real[60:66] + [real[k] for k in (67, 69, 71, 73)])


def _no_work(*args, **kwargs):
    raise AssertionError("the work started")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def test_reading_keeps_every_slice_at_its_own_position(uneven):
    with pytest.raises(UnevenSeriesError, match="gaps 3.0 mm except 2.0 mm between slices 7 and 8"):
        read_volume(uneven)  # a regular grid is still refused by default
    source = headers(uneven)
    volume = read_volume(uneven, keep_positions=True)
    expected = positions(uneven)
    assert volume.shape == (8, 64, 64) and np.allclose(np.diff(expected[:, 2]), [GAP] * 6 + [2.0], atol=TOL_MM)
    assert np.array_equal(np.asarray(volume.metadata[SLICE_POSITIONS]), expected)
    assert np.allclose(slice_origins(volume), expected, atol=1e-9)
    assert volume.spacing[2] == pytest.approx(GAP) and np.allclose(volume.origin, expected[0])  # the median gap
    assert volume.metadata["slice_thicknesses"] == [3.0] * 8
    for k, ds in enumerate(source):  # the acquired slices, unchanged
        assert np.array_equal(volume.array[k], hu(pydicom.dcmread(ds.filename)))
    assert volume.metadata["history"] == ["read as acquired, each slice at its own position (8 slices, gaps "
                                          "2.0-3.0 mm, median 3.0 mm): not resampled"]
    regular = read_volume(uneven, keep_positions=True, series_block=1)  # a regular block: a plain grid
    assert regular.shape[0] == 7 and SLICE_POSITIONS not in regular.metadata


def test_a_missing_slice_and_two_blocks_are_read_as_acquired(tmp_path, real, two_blocks):
    missing = write_series(tmp_path / "missing", real[60:64] + real[65:68])
    for folder, gaps in ((missing, [GAP] * 3 + [6.0] + [GAP] * 2), (two_blocks, [GAP] * 5 + [6.0] * 4)):
        volume = read_volume(folder, keep_positions=True)
        kept = np.asarray(volume.metadata[SLICE_POSITIONS])
        assert np.array_equal(kept, positions(folder)) and np.allclose(np.diff(kept[:, 2]), gaps, atol=TOL_MM)


def test_what_is_not_one_series_stays_refused(tmp_path, real):
    def duplicate(k, ds):
        if k == 4:
            move_z(ds, -GAP)  # slice 5 onto slice 4's position
    folder = write_series(tmp_path / "dup", real[60:66], duplicate)
    with pytest.raises(VolumeReadError, match="duplicated slice position"):
        read_volume(folder, keep_positions=True)

    angle = np.radians(12.0)
    col = [0.0, float(np.cos(angle)), float(-np.sin(angle))]

    def turn(k, ds):
        if k >= 4:
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0] + col
    folder = write_series(tmp_path / "turned", real[60:68], turn)
    with pytest.raises(UnevenSeriesError, match="different slice orientations"):
        read_volume(folder, keep_positions=True)


def test_a_tilted_uneven_series_keeps_its_positions_on_the_normal(tmp_path, real):
    z0 = float(pydicom.dcmread(str(real[60]), stop_before_pixels=True).ImagePositionPatient[2])
    shear = tilt(z0)
    folder = write_series(tmp_path / "tilted", real[60:68],
                          lambda k, ds: (move_z(ds, -1.0) if k == 7 else None, shear(k, ds)))
    with pytest.raises(VolumeReadError, match="gantry tilt of 15.0 degrees"):
        read_volume(folder, keep_positions=True)
    volume = read_volume(folder, keep_positions=True, regularize_tilt=True)
    kept = np.asarray(volume.metadata[SLICE_POSITIONS])
    source = positions(folder)
    assert np.allclose(kept[:, 2], source[:, 2], atol=TOL_MM)  # each slice at its own height ...
    assert np.allclose(kept[:, :2], source[0, :2], atol=TOL_MM)  # ... on the normal through the first (unsheared)
    assert [h.split(" ")[0] for h in volume.metadata["history"]] == ["gantry", "read"]


# ---------------------------------------------------------------------------
# a derived DICOM series, each slice at its source position
# ---------------------------------------------------------------------------
def test_enhance_writes_each_slice_at_its_source_position_in_the_patients_study(uneven, tmp_path, capsys):
    out = tmp_path / "enhanced"
    assert main(["enhance", str(uneven), str(out), "--dicom", "--model", FAST_MODEL, "--device", "cpu",
                 "--progress", "none"]) == 0
    captured = capsys.readouterr()
    assert "qhqgan: note: input read as acquired, each slice at its own position" in captured.err
    assert "every slice at its own source position" in captured.out
    source, expected = headers(uneven), positions(uneven)
    files = sorted(out.glob("*.dcm"))
    written = [pydicom.dcmread(str(f)) for f in files]
    assert len(written) == 8 and [int(ds.InstanceNumber) for ds in written] == list(range(1, 9))
    for k, ds in enumerate(written):  # in slice order, each at its source position
        assert np.allclose([float(v) for v in ds.ImagePositionPatient], expected[k], atol=TOL_MM)
        assert float(ds.SliceLocation) == pytest.approx(expected[k][2], abs=TOL_MM)
        assert float(ds.SliceThickness) == pytest.approx(3.0) and "SpacingBetweenSlices" not in ds
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert str(ds[keyword].value) == str(source[0][keyword].value), keyword
        assert ds.SeriesInstanceUID != source[0].SeriesInstanceUID and ds.PatientIdentityRemoved == "NO"
    library = read_volume(uneven, keep_positions=True)
    from QHQGANLib import enhance

    expected_hu = np.rint(enhance(library, model=FAST_MODEL, device="cpu").array)
    stored = np.stack([hu(ds) for ds in written])
    assert np.abs(stored - expected_hu).max() <= 1.0  # the same slice-wise result, as int16 HU

    reader = sitk.ImageSeriesReader()  # SimpleITK sorts and reads the series as a viewer would
    names = reader.GetGDCMSeriesFileNames(str(out))
    assert [Path(n).name for n in names] == [f.name for f in files]
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    for k in range(len(names)):
        assert np.allclose([float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")], expected[k], atol=TOL_MM)
        assert reader.GetMetaData(k, "0010|0020").strip() == str(source[0].PatientID)
        assert reader.GetMetaData(k, "0020|000d").strip() == str(source[0].StudyInstanceUID)
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float32), stored)

    back = read_volume(out, keep_positions=True)  # and QHQGAN reads its own series back at those positions
    assert np.allclose(back.metadata[SLICE_POSITIONS], expected, atol=TOL_MM)


def test_in_plane_super_resolution_keeps_each_slice_height(uneven, tmp_path, capsys):
    out = tmp_path / "sr"
    assert main(["super-resolve", str(uneven), str(out), "--dicom", "--device", "cpu", "--quiet"]) == 0
    expected = positions(uneven)
    written = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(out.glob("*.dcm"))]
    pixel = float(headers(uneven)[0].PixelSpacing[0])
    for k, ds in enumerate(written):  # the finer grid's first pixel centre: a quarter of an old pixel back in x, y
        assert (int(ds.Rows), int(ds.Columns)) == (128, 128)
        assert float(ds.PixelSpacing[0]) == pytest.approx(pixel / 2)
        assert np.allclose([float(v) for v in ds.ImagePositionPatient],
                           expected[k] - [pixel / 4, pixel / 4, 0.0], atol=TOL_MM)
        assert ds.PatientID == headers(uneven)[0].PatientID


def test_simulated_low_dose_of_two_blocks_is_de_identified_at_the_source_positions(two_blocks, tmp_path, capsys):
    out = tmp_path / "low"
    assert main(["simulate-low-dose", str(two_blocks), str(out), "--dicom", "--dose", "0.25",
                 "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "a simulated dose is no acquisition of the patient: the series is de-identified, in a new study" in err
    source = headers(two_blocks)
    written = sorted((pydicom.dcmread(str(f), stop_before_pixels=True) for f in out.glob("*.dcm")),
                     key=lambda ds: int(ds.InstanceNumber))
    assert np.allclose([[float(v) for v in ds.ImagePositionPatient] for ds in written], positions(two_blocks),
                       atol=TOL_MM)
    for ds in written:
        assert ds.SeriesDescription == "QHQGAN SIMULATED 25% DOSE - NOT FOR DIAGNOSIS"
        assert ds.PatientID != source[0].PatientID and ds.StudyInstanceUID != source[0].StudyInstanceUID
        assert str(source[0].PatientID) not in str(ds.DerivationDescription)


@pytest.mark.parametrize("command", [["enhance", "--model", FAST_MODEL], ["super-resolve"],
                                     ["simulate-low-dose"]])
def test_volume_files_are_refused_before_work_with_the_three_ways_out(two_blocks, tmp_path, capsys, monkeypatch,
                                                                      command):
    import QHQGANLib.physics.lowdose as lowdose
    import QHQGANLib.tasks.enhance as tasks

    for module, name in ((tasks, "enhance"), (tasks, "super_resolve"), (lowdose, "simulate_low_dose")):
        monkeypatch.setattr(module, name, _no_work)
    out = tmp_path / "result.nrrd"
    assert main([command[0], str(two_blocks), str(out), *command[1:], "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the series is uneven (uneven slice spacing: 2 blocks: 6 slices at 3.0 mm then 4 at " \
                               "6.0 mm)" in err
    assert "the output result.nrrd (NRRD, NIfTI or MetaImage) holds one regular grid" in err
    assert "--dicom (OUTPUT a folder; keeps every slice's own position)" in err
    assert "--resample-z MM (e.g. --resample-z 3.0" in err and "--series-block N (N from 1 to 2)" in err
    assert not out.exists()


def test_the_library_refuses_a_regular_grid_for_slices_at_their_own_positions(uneven, tmp_path):
    volume = read_volume(uneven, keep_positions=True)
    with pytest.raises(ValueError, match=r"x\.nrrd: an NRRD, NIfTI or MetaImage file holds one regular grid, and its "
                                         r"slices lie at uneven positions \(8 slices, gaps 2\.0-3\.0 mm.*--dicom"):
        write_volume(volume, tmp_path / "x.nrrd")
    assert not (tmp_path / "x.nrrd").exists()
    from QHQGANLib import super_resolve

    with pytest.raises(ValueError, match="these slices lie at uneven positions: read one regular block"):
        super_resolve(volume, scale=2, axis="z")
    cut = volume.with_geometry(volume.array[:4], volume.spacing, volume.origin)  # slices removed: positions stale
    with pytest.raises(ValueError, match="4 slice"):
        slice_origins(cut)
    # stored sagittally (k along left-right): its axial planes would cross the uneven slices
    sagittal = Volume(volume.array, volume.spacing, volume.origin, [[0, 0, 1], [1, 0, 0], [0, -1, 0]],
                      volume.metadata)
    from QHQGANLib import enhance

    with pytest.raises(ValueError, match="sagittal slices at uneven positions"):
        enhance(sagittal, model=FAST_MODEL)


def test_through_plane_super_resolution_keeps_refusing(two_blocks, tmp_path, capsys):
    out = tmp_path / "thin"
    assert main(["super-resolve", str(two_blocks), str(out), "--axis", "z", "--scale", "2", "--dicom", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "needs the slices as acquired" in err and "--series-block N (N from 1 to 2)" in err
    assert not out.exists()


def test_the_panel_path_still_works_for_a_regular_node(real, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
    import slicer.util

    from QHQGANLib.apps import scene as bridge
    from QHQGANLib.apps.background import TaskRequest, process_node

    regular = read_volume(write_series(tmp_path / "regular", real[60:63]))
    uneven = read_volume(write_series(tmp_path / "uneven", real[60:62] + real[63:64]), keep_positions=True)
    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    try:
        node = bridge.node_from_volume(regular, mrml, "CT")  # a node is always one regular grid
        out = process_node(node, TaskRequest("enhance", model=FAST_MODEL, device="cpu"))
        result = bridge.volume_from_node(out)
        assert result.same_geometry(bridge.volume_from_node(node), tol=1e-5)
        assert np.abs(slicer.util.arrayFromVolume(out) - regular.array).max() > 0
        with pytest.raises(ValueError, match="a Slicer volume node holds one regular grid"):
            bridge.node_from_volume(uneven, mrml, "uneven")
    finally:
        mrml.Clear(True)


# ---------------------------------------------------------------------------
# evaluate and train take the series options as enhance does
# ---------------------------------------------------------------------------
def test_evaluate_reads_an_uneven_series_as_acquired_and_takes_the_series_options(uneven, two_blocks, real, tmp_path,
                                                                                  capsys):
    z0 = float(pydicom.dcmread(str(real[60]), stop_before_pixels=True).ImagePositionPatient[2])
    tilted = write_series(tmp_path / "tilted", real[60:64], tilt(z0))
    base = ["evaluate", "--models", FAST_MODEL, "--doses", "0.25", "--progress", "none"]
    runs = [([uneven], [], "input 1 read as acquired, each slice at its own position (8 slices", 8),
            ([two_blocks], ["--series-block", "2"], "input 1 block 2 of 2 read alone", 4),
            ([two_blocks], ["--resample-z", "3"], "input 1 resampled along z to 3.0 mm", 14),
            ([tilted], ["--regularize-tilt"], "input 1 gantry tilt of 15.00 degrees regularized", 4)]
    for number, (inputs, options, note, n_slices) in enumerate(runs):
        report = tmp_path / f"rows{number}.json"
        assert main(base + [a for f in inputs for a in ("--input", str(f))] + options + ["--json", str(report)]) == 0
        assert note in capsys.readouterr().err, options
        assert {row["n_slices"] for row in json.loads(report.read_text())} == {n_slices}
    assert main(base + ["--input", str(tilted), "--quiet"]) == 2
    assert "--regularize-tilt" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-enhance", "train-synth"])
def test_training_takes_the_series_options(command, uneven, two_blocks, real, tmp_path, capsys, monkeypatch):
    """The trainers are replaced by a recorder: what matters here is what they would be given."""
    import QHQGANLib.training.enhancement as enhancement
    import QHQGANLib.training.synthesis as synthesis

    seen = []

    class Recorded(Exception):
        pass

    def record(cfg, volumes, **kwargs):
        seen.append(volumes)
        raise Recorded()

    monkeypatch.setattr(enhancement, "train_enhancer", record)
    monkeypatch.setattr(synthesis, "train_synth", record)
    z0 = float(pydicom.dcmread(str(real[60]), stop_before_pixels=True).ImagePositionPatient[2])
    tilted = write_series(tmp_path / "tilted", real[60:64], tilt(z0))
    base = [command, "--save-model", str(tmp_path / "model"), "--quiet", "--debug"]
    with pytest.raises(UnevenSeriesError, match=r"resample_z=MM \(--resample-z MM"):  # refused: no regular grid
        main(base + ["--input", str(uneven), "--output-dir", str(tmp_path / "run0")])
    for number, (folder, options, n_slices) in enumerate([(two_blocks, ["--series-block", "2"], 4),
                                                          (uneven, ["--resample-z", "1"], 21),
                                                          (tilted, ["--regularize-tilt"], 4)]):
        with pytest.raises(Recorded):
            main(base + ["--input", str(folder), "--output-dir", str(tmp_path / f"run{number + 1}"), *options])
        (volume,) = seen[-1]
        assert volume.shape[0] == n_slices and SLICE_POSITIONS not in volume.metadata, options
    assert seen[-1][0].metadata["gantry_tilt_degrees"] == pytest.approx(15.0, abs=0.01)
