"""One DICOM series is one patient, one study, one modality, one frame of reference (issue #28, item 6).

Files are grouped by SeriesInstanceUID; a file of another patient, study or modality that shares
the UID (a copy, a mislabelled export) used to be stacked into the volume. Now the series is
refused with one line that names a few of the disagreeing files and no patient identifier.
The crafted series are copies of real DICOM files (pydicom's CT_small.dcm, and real series
from ../shared/data) with tags changed by pydicom.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import pytest

pydicom = pytest.importorskip("pydicom")

from QHQGANLib import read_volume  # noqa: E402
from QHQGANLib.apps.cli import main  # noqa: E402
from QHQGANLib.core.file_checks import VolumeReadError  # noqa: E402

from conftest import shared_path  # noqa: E402

ORIGIN_Z = -75.699997


def _series(folder: Path, ct_small_path: Path, n: int = 4) -> Path:
    """``n`` copies of CT_small.dcm stacked 5 mm apart (its slice thickness): one valid series."""
    folder.mkdir()
    for k in range(n):
        ds = pydicom.dcmread(str(ct_small_path))
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-158.135803, -179.035797, ORIGIN_Z + 5.0 * k]
        ds.save_as(str(folder / f"CT{k + 1:03d}.dcm"), enforce_file_format=True)
    return folder


def _retag(path: Path, keyword: str, value: Optional[str]) -> None:
    ds = pydicom.dcmread(str(path))
    if value is None:
        delattr(ds, keyword)
    else:
        setattr(ds, keyword, value)
    ds.save_as(str(path), enforce_file_format=True)


def test_the_crafted_series_reads(tmp_path, ct_small_path):
    volume = read_volume(_series(tmp_path / "s", ct_small_path))
    assert volume.shape == (4, 128, 128)
    assert volume.spacing[2] == pytest.approx(5.0, abs=1e-3)


CASES = [
    ("PatientID", "OTHER-PATIENT-778899", "patients"),
    ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1234567890", "studies"),
    ("Modality", "MR", "modalities"),
    ("FrameOfReferenceUID", "1.2.826.0.1.3680043.8.498.987654321", "frames of reference"),
]


@pytest.mark.parametrize("keyword, value, word", CASES, ids=[c[0] for c in CASES])
def test_cli_refuses_a_mixed_series_naming_the_file(tmp_path, ct_small_path, capsys, keyword, value, word):
    folder = _series(tmp_path / "s", ct_small_path)
    _retag(folder / "CT004.dcm", keyword, value)  # the last file: the first decides nothing any more
    out = tmp_path / "low.nrrd"
    argv = ["simulate-low-dose", str(folder), str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qhqgan: error:") and "\n" not in err and "Traceback" not in err
    assert f"mixes 2 {word}" in err and "CT004.dcm" in err
    assert "OTHER-PATIENT" not in err and "1CT1" not in err  # patient IDs are never printed
    assert not out.exists()
    # --force accepts a non-CT modality, never a mixed series
    assert main(argv + ["--force"]) == 2
    assert f"mixes 2 {word}" in capsys.readouterr().err
    with pytest.raises(VolumeReadError, match=f"mixes 2 {word}"):
        read_volume(folder, force=True)


def test_missing_patient_id_in_one_file_is_a_mix(tmp_path, ct_small_path):
    folder = _series(tmp_path / "s", ct_small_path)
    _retag(folder / "CT002.dcm", "PatientID", None)
    with pytest.raises(VolumeReadError, match=r"patients.*no PatientID: 1 file\(s\) \(CT002\.dcm\)"):
        read_volume(folder)


def test_frame_of_reference_is_compared_only_where_present(tmp_path, ct_small_path):
    folder = _series(tmp_path / "s", ct_small_path)
    _retag(folder / "CT003.dcm", "FrameOfReferenceUID", None)
    assert read_volume(folder).shape == (4, 128, 128)


def test_modality_is_read_from_every_file_not_the_first(tmp_path, ct_small_path):
    folder = _series(tmp_path / "s", ct_small_path)
    for name in ("CT002.dcm", "CT003.dcm"):
        _retag(folder / name, "Modality", "PT")
    with pytest.raises(VolumeReadError) as info:
        read_volume(folder, force=True)
    message = str(info.value)
    assert "modalities" in message and "CT: 2 file(s)" in message and "PT: 2 file(s)" in message


def test_a_large_mix_names_a_few_files_not_all(tmp_path, ct_small_path, capsys):
    folder = _series(tmp_path / "s", ct_small_path, n=40)
    for k in range(21, 41):
        _retag(folder / f"CT{k:03d}.dcm", "PatientID", "SOMEONE-ELSE")
    assert main(["degrade-resolution", str(folder), str(tmp_path / "o.nrrd"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 patients" in err and "and 17 more" in err and "patient 2: 20 file(s)" in err
    assert err.count(".dcm") == 6  # three names per group
    assert len(err) < 600


@pytest.mark.shared_data
def test_another_patients_real_file_with_the_same_series_uid_is_refused(tmp_path, capsys):
    """A file of a real chest CT (Lung_Dx-A0001) copied into a real abdomen series (Pancreas-CT-CB_001)
    and given its SeriesInstanceUID: refused for the patient, before any geometry check."""
    abdomen = sorted(shared_path("abdomen-ct-pancreas-cb").glob("*.dcm"))[:4]
    chest = sorted(shared_path("chest-ct-lungdx/A0001-kernel-B").glob("*.dcm"))[0]
    folder = tmp_path / "series"
    folder.mkdir()
    for f in abdomen:
        shutil.copy(f, folder / f.name)
    assert read_volume(folder).shape[0] == 4
    series_uid = pydicom.dcmread(str(abdomen[0]), stop_before_pixels=True).SeriesInstanceUID
    intruder = folder / "zz-chest.dcm"
    shutil.copy(chest, intruder)
    _retag(intruder, "SeriesInstanceUID", series_uid)
    assert main(["enhance", str(folder), str(tmp_path / "e.nii.gz"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mixes 2 patients" in err and "zz-chest.dcm" in err and "\n" not in err
    assert "Lung_Dx" not in err and "Pancreas-CT-CB" not in err
    assert not (tmp_path / "e.nii.gz").exists()
