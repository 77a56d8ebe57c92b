"""A derived DICOM series for enhanced and super-resolved results (issue #31): identity and geometry.

The source is real CT (abdomen-ct-pancreas-cb, 4 slices cropped to 64 x 80 to stay fast), written as a
small DICOM series that keeps the patient, study and frame of reference of the original; results are
written with export_derived_series and with ``qhqgan enhance|super-resolve --dicom`` and read back with
pydicom and SimpleITK.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from conftest import shared_path  # noqa: E402

from QHQGANLib import Volume, read_volume  # noqa: E402
from QHQGANLib.apps.cli import main  # noqa: E402
from QHQGANLib.core.constants import __version__  # noqa: E402
from QHQGANLib.core.dicom_derived import export_derived_series, plan_derived_series  # noqa: E402
from QHQGANLib.core.dicom_export import export_dicom_series  # noqa: E402
from QHQGANLib.core.dicom_read import read_dicom_files  # noqa: E402
from QHQGANLib.core.resources import model_cards  # noqa: E402

SLICES = slice(60, 64)
ROWS, COLUMNS = slice(200, 264), slice(170, 250)  # 64 x 80: rows and columns cannot be swapped unnoticed
ENHANCED_NOTE = "enhanced by hqgan-enhance at strength 0.50"


def _model(task: str, preferred: str) -> str:
    names = [c["name"] for c in model_cards() if c.get("task") == task]
    if preferred not in names:
        pytest.skip(f"the shipped {task} model {preferred} is not installed")
    return preferred


@pytest.fixture(scope="module")
def original():
    """The first of the real files used: the identity every kept series must carry."""
    folder = shared_path("abdomen-ct-pancreas-cb")
    return pydicom.dcmread(str(sorted(folder.glob("*.dcm"))[SLICES][0]), stop_before_pixels=True)


@pytest.fixture(scope="module")
def dicom_input(tmp_path_factory, original):
    """A 4-slice DICOM series of the real patient (same patient, study, frame of reference, series 201)."""
    folder = shared_path("abdomen-ct-pancreas-cb")
    real = read_dicom_files(sorted(folder.glob("*.dcm"))[SLICES], source=folder, force=False, max_voxels=10**8)
    small = Volume(real.array[:, ROWS, COLUMNS], real.spacing,
                   real.index_to_physical((COLUMNS.start, ROWS.start, 0)), real.direction, real.metadata)
    out = tmp_path_factory.mktemp("input") / "ct_series"
    export_dicom_series(small, out, source=real, synthetic=False, keep_patient=True, series_number=201,
                        frame_of_reference_uid=str(original.FrameOfReferenceUID))
    return out


@pytest.fixture(scope="module")
def source(dicom_input):
    return read_volume(dicom_input)


def _enhanced(source: Volume) -> Volume:
    result = source.with_array(source.array * 0.5 + 20.37, note=ENHANCED_NOTE)
    result.metadata["enhancement"] = {"strength": 0.5, "target_noise_hu": None}
    return result


def _series(folder: Path) -> list:
    return [pydicom.dcmread(str(f)) for f in sorted(folder.glob("*.dcm"))]


def _hu(ds) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _check_geometry_and_pixels(folder: Path, result: Volume, datasets: list) -> None:
    """pydicom: pixels are the rounded result, positions per slice; SimpleITK: spacing, origin, direction."""
    sitk = pytest.importorskip("SimpleITK")
    expected = np.clip(np.rint(result.array.astype(np.float64)), -32768, 32767)
    assert len(datasets) == result.shape[0]
    for k, ds in enumerate(datasets):
        assert np.array_equal(_hu(ds), expected[k])
        assert np.allclose(np.asarray(ds.ImagePositionPatient, float), result.index_to_physical((0, 0, k)), atol=1e-3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float64), expected)
    assert np.allclose(image.GetSpacing(), result.spacing, atol=1e-3)
    assert np.allclose(image.GetOrigin(), result.origin, atol=1e-3)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), result.direction, atol=1e-3)


def _check_kept(datasets: list, original, source: Volume) -> None:
    """Same patient, study and frame of reference as the real source; a new series of new instances."""
    input_sops = {ds.SOPInstanceUID for ds in _series(Path(source.metadata["source"]))}
    for ds in datasets:
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert str(ds[keyword].value) == str(original[keyword].value), keyword
        assert ds.SeriesInstanceUID not in (original.SeriesInstanceUID, source.metadata["dicom"]["SeriesInstanceUID"])
        assert ds.SOPInstanceUID not in input_sops
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.SyntheticData == "NO" and ds.PatientIdentityRemoved == "NO"
        assert "NOT FOR DIAGNOSIS" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
        assert ds.SeriesNumber == 1201
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def _check_not_kept(datasets: list, original) -> None:
    for ds in datasets:
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert str(ds[keyword].value) != str(original[keyword].value), keyword
        raw = "\n".join(str(e.value) for e in ds if e.VR != "OW")
        for keyword in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID"):
            assert str(original[keyword].value) not in raw, keyword


# ---------------------------------------------------------------------------
# the library function
# ---------------------------------------------------------------------------
def test_enhanced_series_keeps_patient_study_and_frame(tmp_path, source, original):
    result = _enhanced(source)
    files = export_derived_series(result, tmp_path / "enhanced", source)
    datasets = _series(tmp_path / "enhanced")
    assert [f.name for f in files] == [f"IMG{k:04d}.dcm" for k in range(1, 5)]
    _check_kept(datasets, original, source)
    ds = datasets[0]
    assert ds.SeriesDescription == "QHQGAN ENHANCED hqgan-enhance S0.50 - NOT FOR DIAGNOSIS"
    assert ENHANCED_NOTE in ds.DerivationDescription and __version__ in ds.DerivationDescription
    assert "Not for diagnostic use" in ds.DerivationDescription
    _check_geometry_and_pixels(tmp_path / "enhanced", result, datasets)


def test_through_plane_result_has_exact_geometry(tmp_path, source, original):
    """x2 along z: 7 slices at half the spacing, between the input's; positions come from the volume."""
    array = np.repeat(source.array, 2, axis=0)[:-1] + 0.4
    spacing = (source.spacing[0], source.spacing[1], source.spacing[2] / 2)
    result = source.with_geometry(array, spacing, source.origin, note="super-resolved x2 along z by hqgan-srz2")
    export_derived_series(result, tmp_path / "thin", source)
    datasets = _series(tmp_path / "thin")
    _check_kept(datasets, original, source)
    assert datasets[0].SeriesDescription == "QHQGAN SR X2 Z hqgan-srz2 - NOT FOR DIAGNOSIS"
    assert float(datasets[0].SliceThickness) == pytest.approx(1.5)
    _check_geometry_and_pixels(tmp_path / "thin", result, datasets)


def test_deidentified_series_is_a_new_patient_and_study(tmp_path, source, original):
    result = _enhanced(source)
    assert plan_derived_series(result, source, deidentify=True).note is None  # asked for: nothing to explain
    export_derived_series(result, tmp_path / "shared", source, deidentify=True)
    datasets = _series(tmp_path / "shared")
    _check_not_kept(datasets, original)
    for ds in datasets:
        assert ds.SyntheticData == "NO" and ds.PatientID.startswith("ANON-")
        # the exporter claims removal only where the pixels cannot hold burned-in text
        assert ds.PatientIdentityRemoved == ("YES" if original.get("BurnedInAnnotation") == "NO" else "NO")
    _check_geometry_and_pixels(tmp_path / "shared", result, datasets)


def test_a_non_dicom_source_has_no_patient_to_keep(tmp_path, source, original):
    from QHQGANLib.core.io import write_volume

    write_volume(source, tmp_path / "ct.nrrd")
    nrrd = read_volume(tmp_path / "ct.nrrd")
    plan = plan_derived_series(_enhanced(nrrd), nrrd)
    assert plan.mode == "deidentified" and "not DICOM" in plan.note
    export_derived_series(_enhanced(nrrd), tmp_path / "out", nrrd)
    _check_not_kept(_series(tmp_path / "out"), original)


def test_synthetic_images_never_go_into_a_real_study(tmp_path, source, original):
    marked = _enhanced(source)
    marked.metadata["synthetic"] = True
    synthetic_source = source.copy()
    synthetic_source.metadata["synthetic"] = True
    for k, (result, src) in enumerate([(marked, source), (_enhanced(source), synthetic_source)]):
        plan = plan_derived_series(result, src)
        assert plan.mode == "synthetic" and "synthetic" in plan.note
        export_derived_series(result, tmp_path / f"s{k}", src)
        datasets = _series(tmp_path / f"s{k}")
        _check_not_kept(datasets, original)
        for ds in datasets:
            assert ds.SyntheticData == "YES" and str(ds.PatientName) == "SYNTHETIC^QHQGAN"
            assert ds.SeriesDescription.startswith("SYNTHETIC") and "NOT FOR DIAGNOSIS" in ds.SeriesDescription


def test_a_result_of_another_series_is_not_filed_in_the_source_study(tmp_path, source):
    result = _enhanced(source)
    result.metadata["dicom"] = dict(result.metadata["dicom"], SeriesInstanceUID="1.2.3.4")
    with pytest.raises(ValueError, match="another DICOM series"):
        export_derived_series(result, tmp_path / "wrong", source)
    assert not (tmp_path / "wrong").exists()


def test_frame_of_reference_only_with_the_patient(tmp_path, source):
    with pytest.raises(ValueError, match="keep_patient"):
        export_dicom_series(source, tmp_path / "a", synthetic=False, frame_of_reference_uid="1.2.3")
    with pytest.raises(ValueError, match="UID"):
        export_dicom_series(source, tmp_path / "b", source=source, synthetic=False, keep_patient=True,
                            frame_of_reference_uid="1.2.abc")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------
def test_cli_enhance_dicom_keeps_the_patient(tmp_path, dicom_input, source, original, capsys):
    from QHQGANLib.tasks.enhance import enhance

    model = _model("enhance", "no-circuit-enhance")
    out = tmp_path / "ct_enhanced_dicom"
    assert main(["enhance", str(dicom_input), str(out), "--dicom", "--model", model, "--strength", "0.5",
                 "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # the patient was kept as asked: no note
    datasets = _series(out)
    _check_kept(datasets, original, source)
    assert model in datasets[0].SeriesDescription and "S0.50" in datasets[0].SeriesDescription
    expected = enhance(source, model=model, device="cpu", strength=0.5)
    assert np.abs(np.stack([_hu(ds) for ds in datasets]) - np.rint(expected.array)).max() <= 1
    _check_geometry_and_pixels(out, expected.with_array(np.stack([_hu(ds) for ds in datasets])), datasets)


def test_cli_super_resolve_through_plane_dicom(tmp_path, dicom_input, source, original):
    from QHQGANLib.tasks.enhance import super_resolve

    model = _model("super-resolve", "hqgan-srz2")
    out = tmp_path / "thin_dicom"
    assert main(["super-resolve", str(dicom_input), str(out), "--dicom", "--axis", "z", "--scale", "2",
                 "--model", model, "--device", "cpu", "--quiet"]) == 0
    datasets = _series(out)
    _check_kept(datasets, original, source)
    expected = super_resolve(source, scale=2, model=model, device="cpu", axis="z")
    assert len(datasets) == expected.shape[0] and expected.spacing[2] == pytest.approx(source.spacing[2] / 2)
    assert "SR X2 Z" in datasets[0].SeriesDescription and model in datasets[0].SeriesDescription
    _check_geometry_and_pixels(out, expected.with_array(np.stack([_hu(ds) for ds in datasets])), datasets)


def test_cli_deidentify(tmp_path, dicom_input, source, original, capsys):
    out = tmp_path / "for_sharing"
    assert main(["enhance", str(dicom_input), str(out), "--dicom", "--deidentify", "--strength", "0",
                 "--device", "cpu", "--quiet"]) == 0
    datasets = _series(out)
    _check_not_kept(datasets, original)
    _check_geometry_and_pixels(out, source, datasets)  # strength 0: the input's values


def test_cli_non_dicom_and_synthetic_inputs_say_so_in_one_line(tmp_path, source, original, capsys):
    from QHQGANLib.core.io import write_volume

    write_volume(source, tmp_path / "ct.nrrd")
    assert main(["enhance", str(tmp_path / "ct.nrrd"), str(tmp_path / "a"), "--dicom", "--strength", "0",
                 "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not DICOM" in err[0] and "de-identified" in err[0]
    _check_not_kept(_series(tmp_path / "a"), original)

    export_dicom_series(source, tmp_path / "synthetic_ct", source=source)  # a synthetic series of this anatomy
    assert main(["enhance", str(tmp_path / "synthetic_ct"), str(tmp_path / "b"), "--dicom", "--strength", "0",
                 "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "synthetic" in err[0] and "never in a real patient's study" in err[0]
    datasets = _series(tmp_path / "b")
    _check_not_kept(datasets, original)
    assert all(ds.SyntheticData == "YES" for ds in datasets)


def test_cli_deidentify_needs_dicom(tmp_path, dicom_input, capsys):
    out = tmp_path / "out.nrrd"
    assert main(["enhance", str(dicom_input), str(out), "--deidentify", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--deidentify" in err[0] and "--dicom" in err[0]
    assert not out.exists()


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cli_output_folder_is_checked_before_any_work(tmp_path, dicom_input, monkeypatch, capsys):
    import QHQGANLib.core.io as io

    def no_work(*args, **kwargs):
        raise AssertionError("the input was read although the output is refused")

    monkeypatch.setattr(io, "read_volume", no_work)
    before = _digest(dicom_input)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra, message in (([], "not empty"), (["--overwrite"], "did not write")):
        assert main(["enhance", str(dicom_input), str(out), "--dicom", "--strength", "0", "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert _digest(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    assert main(["enhance", str(dicom_input), str(dicom_input), "--dicom", "--strength", "0", "--quiet"]) == 2
    assert "never overwrites its input" in capsys.readouterr().err
    assert _digest(dicom_input) == before


def test_cli_overwrite_replaces_an_earlier_derived_series(tmp_path, dicom_input, capsys):
    out = tmp_path / "again"
    args = ["enhance", str(dicom_input), str(out), "--dicom", "--strength", "0", "--quiet"]
    assert main(args) == 0
    first = {ds.SeriesInstanceUID for ds in _series(out)}
    assert main(args) == 2 and "not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert {ds.SeriesInstanceUID for ds in _series(out)}.isdisjoint(first)


def test_a_storage_note_after_the_step_keeps_the_description(source):
    """A result written as int16 and read back carries '; stored as int16, ...' on its processing step
    (core.pixel_types): the series description still names the model and the strength, nothing more."""
    from QHQGANLib.core.pixel_types import for_writing

    result = _enhanced(source)
    typed, pixel_type = for_writing(result)
    assert pixel_type == "int16" and "; stored as int16" in typed.metadata["history"][-1]
    plan = plan_derived_series(typed, source)
    assert plan.series_description == "QHQGAN ENHANCED hqgan-enhance S0.50 - NOT FOR DIAGNOSIS"
