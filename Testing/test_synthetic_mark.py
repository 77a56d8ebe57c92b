"""The synthetic mark is never lost (issue #28, item 5).

A synthetic image is marked in every file it is written to (NRRD/MHA header field, NIfTI
``descrip`` and comment extension, DICOM ``SyntheticData`` YES), reading any of them back sets
``metadata["synthetic"]``, every output derived from a marked input is marked again, and no
API call writes a synthetic volume as a non-synthetic one.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from QHQGANLib import Volume, read_volume, write_volume  # noqa: E402
from QHQGANLib.apps.cli import main  # noqa: E402
from QHQGANLib.core.dicom_export import export_dicom_series  # noqa: E402
from QHQGANLib.core.io import SYNTHETIC_KEY  # noqa: E402
from QHQGANLib.core.resources import model_cards  # noqa: E402


def _model(task: str, preferred: str) -> str:
    names = [c["name"] for c in model_cards() if c.get("task") == task]
    if not names:
        pytest.skip(f"no shipped {task} model installed")
    return preferred if preferred in names else names[0]


def _synthetic_volume() -> Volume:
    rng = np.random.default_rng(0)
    array = rng.normal(0.0, 300.0, (3, 24, 20)).astype(np.float32)
    array[:, :4] = -1000.0  # air: it looks like CT in HU
    return Volume(array, (0.8, 0.8, 2.0), (-10.0, 5.0, 30.0), np.eye(3),
                  {"synthetic": True, "history": ["synthesized by a test"]})


def _synthetic_dicom_series(folder: Path, ct_small_path: Path, n: int = 3) -> Path:
    """``n`` copies of pydicom's real CT_small.dcm stacked 5 mm apart, marked SyntheticData YES
    (as another program's synthetic series would be) and in one new series."""
    folder.mkdir()
    series_uid = pydicom.uid.generate_uid()
    for k in range(n):
        ds = pydicom.dcmread(str(ct_small_path))
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.699997 + 5.0 * k]
        ds.SyntheticData = "YES"
        ds.save_as(str(folder / f"IM{k:03d}.dcm"), enforce_file_format=True)
    return folder


# ---------------------------------------------------------------------------
# (1) NIfTI carries the mark
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["samples_synthetic.nii.gz", "samples_synthetic.nii"])
def test_cli_synthesize_writes_a_marked_nifti(tmp_path, name):
    out = tmp_path / name
    model = _model("synthesize", "dcgan-synth")
    assert main(["synthesize", str(out), "--model", model, "--n", "2", "--seed", "1", "--device", "cpu",
                 "--quiet"]) == 0
    back = read_volume(out, force=True)
    assert back.metadata.get("synthetic") is True
    assert SYNTHETIC_KEY in sitk.ReadImage(str(out)).GetMetaData("descrip")
    # the mark is also in the file's NIfTI extension, where a rewritten descrip cannot remove it
    from QHQGANLib.core.io import _nifti_marked

    assert _nifti_marked(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no litter beside it


def test_nifti_mark_survives_a_cleared_descrip_and_a_resave_without_extension(tmp_path):
    volume = _synthetic_volume()
    marked = write_volume(volume, tmp_path / "v_synthetic.nii")
    # another tool clears descrip: the extension still says it
    raw = bytearray(marked.read_bytes())
    assert struct.unpack("<i", raw[:4])[0] == 348
    raw[148:228] = b"\0" * 80
    cleared = tmp_path / "cleared.nii"
    cleared.write_bytes(bytes(raw))
    assert SYNTHETIC_KEY not in sitk.ReadImage(str(cleared)).GetMetaData("descrip")
    back = read_volume(cleared)
    assert back.metadata.get("synthetic") is True
    assert np.array_equal(back.array, volume.array) and back.same_geometry(volume)
    # another tool re-saves it (ITK drops extensions, keeps descrip): still marked
    resaved = tmp_path / "resaved.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(marked)), str(resaved))
    assert read_volume(resaved).metadata.get("synthetic") is True


def test_real_volumes_are_not_marked(tmp_path, ct_small_path):
    ct = read_volume(ct_small_path)
    assert not ct.metadata.get("synthetic")
    for name in ("ct.nii.gz", "ct.nrrd", "ct.mha"):
        assert not read_volume(write_volume(ct, tmp_path / name)).metadata.get("synthetic")


@pytest.mark.parametrize("name", ["d_synthetic.nii.gz", "d.nrrd", "d.mha", "d.nhdr"])
def test_every_format_round_trips_the_mark(tmp_path, name):
    volume = _synthetic_volume()
    back = read_volume(write_volume(volume, tmp_path / name))
    assert back.metadata.get("synthetic") is True
    assert np.array_equal(back.array, volume.array) and back.same_geometry(volume)


# ---------------------------------------------------------------------------
# (2) a SyntheticData YES series is read as synthetic; its derived outputs stay marked
# ---------------------------------------------------------------------------
def test_synthetic_dicom_series_and_file_are_read_as_synthetic(tmp_path, ct_small_path):
    series = _synthetic_dicom_series(tmp_path / "series", ct_small_path)
    assert read_volume(series).metadata.get("synthetic") is True
    assert read_volume(series / "IM000.dcm").metadata.get("synthetic") is True
    assert not read_volume(ct_small_path).metadata.get("synthetic")


@pytest.mark.parametrize("command", [
    ["simulate-low-dose", "--dose", "0.5", "--seed", "2"],
    ["degrade-resolution"],
    ["enhance", "--device", "cpu", "--adapt-steps", "0"],
])
def test_cli_outputs_of_a_synthetic_series_are_marked(tmp_path, ct_small_path, command):
    series = _synthetic_dicom_series(tmp_path / "series", ct_small_path)
    extra = []
    if command[0] == "enhance":
        extra = ["--model", _model("enhance", "no-circuit-enhance")]
    for out in (tmp_path / "out.nii.gz", tmp_path / "out.nrrd"):
        assert main([command[0], str(series), str(out), *command[1:], *extra, "--quiet"]) == 0
        derived = read_volume(out)
        assert derived.metadata.get("synthetic") is True, f"{command[0]} -> {out.name} lost the mark"


def test_cli_synthesize_dicom_then_enhance_keeps_the_mark(tmp_path):
    """The whole chain a user would run: synthesize a DICOM series, enhance it, read the result."""
    series = tmp_path / "fake_synthetic"
    assert main(["synthesize", str(series), "--dicom", "--model", _model("synthesize", "dcgan-synth"),
                 "--n", "2", "--device", "cpu", "--quiet"]) == 0
    assert read_volume(series, force=True).metadata.get("synthetic") is True
    out = tmp_path / "enhanced.nii.gz"
    assert main(["enhance", str(series), str(out), "--force", "--device", "cpu", "--adapt-steps", "0",
                 "--model", _model("enhance", "no-circuit-enhance"), "--quiet"]) == 0
    enhanced = read_volume(out, force=True)
    assert enhanced.metadata.get("synthetic") is True
    # and exporting the enhanced result as DICOM marks it again
    files = export_dicom_series(enhanced, tmp_path / "enhanced_dicom")
    assert pydicom.dcmread(str(files[0])).SyntheticData == "YES"


def test_derived_volumes_keep_the_mark():
    volume = _synthetic_volume()
    assert volume.with_array(volume.array + 1, note="x").metadata["synthetic"] is True
    assert volume.with_geometry(volume.array[:2], (1, 1, 1), (0, 0, 0)).metadata["synthetic"] is True
    assert volume.copy().metadata["synthetic"] is True
    from QHQGANLib.physics.lowdose import simulate_low_dose

    assert simulate_low_dose(volume, 0.5, seed=0, photons=1e5).metadata["synthetic"] is True


# ---------------------------------------------------------------------------
# (3) no API call writes a synthetic volume as non-synthetic
# ---------------------------------------------------------------------------
def test_export_refuses_synthetic_false_for_a_synthetic_volume(tmp_path, ct_small_path):
    volume = _synthetic_volume()
    with pytest.raises(ValueError, match="synthetic"):
        export_dicom_series(volume, tmp_path / "real_looking", synthetic=False)
    with pytest.raises(ValueError, match="synthetic"):
        export_dicom_series(volume, tmp_path / "kept", synthetic=False, keep_patient=True,
                            source=pydicom.dcmread(str(ct_small_path)))
    assert not (tmp_path / "real_looking").exists() and not (tmp_path / "kept").exists()
    # read back from a synthetic series: still refused
    series = _synthetic_dicom_series(tmp_path / "series", ct_small_path)
    read = read_volume(series)
    with pytest.raises(ValueError, match="synthetic"):
        export_dicom_series(read, tmp_path / "again", synthetic=False)
    # an unmarked volume whose source is synthetic (a data set saying SyntheticData YES) too
    plain = Volume(read.array, read.spacing, read.origin, read.direction, {})
    with pytest.raises(ValueError, match="synthetic"):
        export_dicom_series(plain, tmp_path / "src", synthetic=False,
                            source=pydicom.dcmread(str(series / "IM000.dcm")))
    assert not any((tmp_path / n).exists() for n in ("again", "src"))
    # the default marks it
    files = export_dicom_series(volume, tmp_path / "ok")
    assert all(pydicom.dcmread(str(f)).SyntheticData == "YES" for f in files)
    assert read_volume(tmp_path / "ok").metadata.get("synthetic") is True


def test_real_volume_still_exports_as_non_synthetic(tmp_path, ct_small_path):
    ct = read_volume(ct_small_path)
    files = export_dicom_series(ct, tmp_path / "denoised", source=ct, synthetic=False)
    assert pydicom.dcmread(str(files[0])).SyntheticData == "NO"
    assert not read_volume(tmp_path / "denoised").metadata.get("synthetic")
    shutil.rmtree(tmp_path / "denoised")


# ---------------------------------------------------------------------------
# the Slicer module's way in: a synthetic node's results are synthetic nodes
# ---------------------------------------------------------------------------
def test_results_of_a_synthetic_node_are_marked(ct_small_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
    from QHQGANLib.apps import scene as bridge
    from QHQGANLib.apps.node_task import process_node
    from QHQGANLib.apps.request import TaskRequest
    from QHQGANLib.core.naming import is_synthetic_node

    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    try:
        series = read_volume(ct_small_path)
        real = bridge.node_from_volume(series, mrml, "CT_small")
        assert not is_synthetic_node(real)
        fake = bridge.node_from_volume(Volume(series.array, series.spacing, series.origin, series.direction,
                                              {"synthetic": True}), mrml, "SYNTHETIC_test")
        assert is_synthetic_node(fake) and bridge.volume_from_node(fake).metadata["synthetic"] is True
        # in the Slicer process
        low = bridge.simulate_low_dose_node(fake, 0.5, seed=0, photons=1e5)
        assert is_synthetic_node(low)
        assert not is_synthetic_node(bridge.simulate_low_dose_node(real, 0.5, seed=0, photons=1e5))
        # in a child process (the module panel's way): the temporary files carry the mark
        out = process_node(fake, TaskRequest("simulate-low-dose", dose=0.5, seed=1))
        assert is_synthetic_node(out)
    finally:
        mrml.Clear(True)
