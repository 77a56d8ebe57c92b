"""export_dicom_series: a valid, de-identified CT Image Storage series with exact geometry.

The synthetic volume is derived from a real source (pydicom's CT_small.dcm, read with
read_volume so that metadata["dicom"] holds its patient and study attributes); the
series is read back with pydicom, SimpleITK and read_volume.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from QHQGANLib import Volume, read_volume  # noqa: E402
from QHQGANLib.core.dicom_export import CT_IMAGE_STORAGE, export_dicom_series  # noqa: E402

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-50.3, 20.125, 100.7)


def _oblique_direction() -> np.ndarray:
    a, b = 0.3, 0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture
def source(ct_small_path):
    return read_volume(ct_small_path)


@pytest.fixture
def source_ds(ct_small_path):
    return pydicom.dcmread(str(ct_small_path))


@pytest.fixture
def synthetic(source):
    """3 non-square (96x120) slices of real CT, with fractional HU and out-of-int16 values."""
    base = source.array[0, 10:106, 4:124]
    array = np.stack([base + 10.3 * k for k in range(3)]).astype(np.float32)
    array[0, 0, 0] = 40000.0   # clipped to 32767
    array[0, 0, 1] = -40000.0  # clipped to -32768
    array[1, 0, 0] = 12.5      # rounds half to even
    return Volume(array, SPACING, ORIGIN, _oblique_direction(), source.metadata)


def _expected(volume: Volume) -> np.ndarray:
    return np.clip(np.rint(volume.array.astype(np.float64)), -32768, 32767)


def _strings(ds) -> list:
    """Every string value in the data set (file meta and nested sequences included)."""
    out = []

    def walk(dataset):
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                             "ST", "TM", "UC", "UI", "UR", "UT"):
                values = elem.value if elem.VM > 1 else [elem.value]
                out.extend(str(v) for v in values if v is not None)
    walk(ds.file_meta)
    walk(ds)
    return out


def test_synthetic_series_tags_and_deidentification(tmp_path, synthetic, source, source_ds):
    folder = tmp_path / "synthetic"
    files = export_dicom_series(synthetic, folder, source=source)
    assert [f.name for f in files] == ["IMG0001.dcm", "IMG0002.dcm", "IMG0003.dcm"]
    assert sorted(folder.iterdir()) == files
    datasets = [pydicom.dcmread(str(f)) for f in files]

    identifiers = [str(source_ds.PatientName), str(source_ds.PatientID), str(source_ds.StudyInstanceUID),
                   str(source_ds.SeriesInstanceUID), str(source_ds.SOPInstanceUID),
                   str(source_ds.FrameOfReferenceUID), str(source_ds.InstitutionName), "CompressedSamples"]
    sop_uids, direction = set(), _oblique_direction()
    for k, ds in enumerate(datasets):
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
        assert ds.SOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        sop_uids.add(ds.SOPInstanceUID)
        assert ds.Modality == "CT"
        assert ds.SyntheticData == "YES"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert "SYNTHETIC" in ds.SeriesDescription and "NOT FOR DIAGNOSIS" in ds.SeriesDescription
        assert str(ds.PatientName) == "SYNTHETIC^QHQGAN"
        assert ds.PatientID.startswith("SYNTHETIC-") and len(ds.PatientID) > len("SYNTHETIC-")
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod
        code = ds.DeidentificationMethodCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
        assert code.CodeMeaning == "Basic Application Confidentiality Profile"
        assert ds.Manufacturer == "QHQGAN" and ds.SoftwareVersions
        assert ds.ContentDate and ds.ContentTime
        assert ds.InstanceNumber == k + 1
        assert (ds.WindowCenter, ds.WindowWidth) == (40, 400)
        assert ds.BurnedInAnnotation == "NO"
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert (ds.Rows, ds.Columns) == (96, 120)
        assert np.allclose([float(v) for v in ds.PixelSpacing], [SPACING[1], SPACING[0]])
        assert float(ds.SliceThickness) == pytest.approx(SPACING[2])
        assert float(ds.SpacingBetweenSlices) == pytest.approx(SPACING[2])
        assert np.allclose(np.asarray(ds.ImageOrientationPatient, float),
                           np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-9)
        assert np.allclose(np.asarray(ds.ImagePositionPatient, float),
                           synthetic.index_to_physical((0, 0, k)), atol=1e-6)
        # patient/study module present (type 2) but with no source values
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                        "ReferringPhysicianName", "StudyID"):
            assert keyword in ds and not ds[keyword].value
        for keyword in ("InstitutionName", "StationName", "PatientAge", "OtherPatientIDsSequence",
                        "StudyDescription", "SourceImageSequence", "ReferencedImageSequence"):
            assert keyword not in ds
        assert not any(elem.tag.is_private for elem in ds)
        # no source identifier anywhere in the file
        text = "\n".join(_strings(ds))
        for identifier in identifiers:
            assert identifier not in text, f"{identifier!r} leaked into {files[k].name}"
        raw = files[k].read_bytes()
        for identifier in identifiers:
            assert identifier.encode() not in raw
        # non-identifying context that is allowed (and documented) to be kept
        assert ds.PatientPosition == source_ds.PatientPosition
        assert "KVP" in ds and not ds.KVP  # a synthetic image was acquired at no kVp
        assert np.array_equal(ds.pixel_array, _expected(synthetic)[k])

    assert len(sop_uids) == 3
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        values = {ds[keyword].value for ds in datasets}
        assert len(values) == 1, keyword
    assert datasets[0].StudyInstanceUID != source_ds.StudyInstanceUID
    assert datasets[0].SeriesInstanceUID != source_ds.SeriesInstanceUID
    assert datasets[0].FrameOfReferenceUID != source_ds.FrameOfReferenceUID

    # a second export: all new UIDs and a new random patient ID
    again = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "again", source=source_ds)[0]))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID",
                    "PatientID"):
        assert again[keyword].value != datasets[0][keyword].value, keyword
    assert str(source_ds.PatientID) not in "\n".join(_strings(again))


def test_read_back_with_simpleitk_and_read_volume(tmp_path, synthetic, source):
    sitk = pytest.importorskip("SimpleITK")
    folder = tmp_path / "series"
    export_dicom_series(synthetic, folder, source=source)
    expected = _expected(synthetic)

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    assert len(names) == 3
    reader.SetFileNames(names)
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.float64), expected)
    assert np.allclose(image.GetSpacing(), SPACING, atol=1e-4)
    assert np.allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), synthetic.direction, atol=1e-4)

    back = read_volume(folder)
    assert back.shape == synthetic.shape
    assert np.array_equal(back.array.astype(np.float64), expected)
    assert np.allclose(back.spacing, SPACING, atol=1e-4)
    assert np.allclose(back.origin, ORIGIN, atol=1e-4)
    assert np.allclose(back.direction, synthetic.direction, atol=1e-4)
    assert back.metadata["dicom"]["Modality"] == "CT"
    assert "SYNTHETIC" in back.metadata["dicom"]["SeriesDescription"]


def test_left_handed_direction_keeps_the_physical_image(tmp_path, synthetic):
    """Slices stacked against the normal: readers sort by position, the voxels stay in place."""
    flipped = synthetic.direction.copy()
    flipped[:, 2] *= -1
    volume = Volume(synthetic.array, SPACING, ORIGIN, flipped)
    export_dicom_series(volume, tmp_path / "lh")
    back = read_volume(tmp_path / "lh")
    assert np.allclose(back.direction[:, 2], -flipped[:, 2], atol=1e-4)
    assert np.allclose(back.origin, volume.index_to_physical((0, 0, 2)), atol=1e-4)
    assert np.array_equal(back.array[::-1].astype(np.float64), _expected(volume))


def test_non_synthetic_export(tmp_path, synthetic, source_ds):
    files = export_dicom_series(synthetic, tmp_path / "enhanced", source=source_ds, synthetic=False,
                                series_description="QHQGAN denoised")
    ds = pydicom.dcmread(str(files[0]))
    assert ds.SyntheticData == "NO"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.SeriesDescription == "QHQGAN denoised"
    # the source does not say whether its pixels hold burned-in text: removal is not claimed
    assert "BurnedInAnnotation" not in source_ds and "BurnedInAnnotation" not in ds
    assert ds.PatientIdentityRemoved == "NO" and "DeidentificationMethod" not in ds
    assert str(source_ds.PatientID) not in "\n".join(_strings(ds))
    assert ds.StudyInstanceUID != source_ds.StudyInstanceUID
    assert float(ds.KVP) == float(source_ds.KVP)  # acquisition context kept for processed real images
    assert ds.ConvolutionKernel == source_ds.ConvolutionKernel

    kept = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "kept", source=source_ds,
                                                   synthetic=False, keep_patient=True)[0]))
    assert kept.PatientID == source_ds.PatientID
    assert str(kept.PatientName) == str(source_ds.PatientName)
    assert kept.StudyInstanceUID == source_ds.StudyInstanceUID
    assert kept.SeriesInstanceUID != source_ds.SeriesInstanceUID
    assert kept.PatientIdentityRemoved == "NO"
    with pytest.raises(ValueError, match="keep_patient"):
        export_dicom_series(synthetic, tmp_path / "never", source=source_ds, keep_patient=True)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("burned_in, removed", [("NO", "YES"), ("YES", "NO")])
def test_burned_in_annotation_follows_the_source(tmp_path, synthetic, source_ds, burned_in, removed):
    """Identity is claimed removed only when the source's pixels carry no burned-in text (#12)."""
    source_ds.BurnedInAnnotation = burned_in
    ds = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "d", source=source_ds, synthetic=False)[0]))
    assert ds.BurnedInAnnotation == burned_in
    assert ds.PatientIdentityRemoved == removed
    assert ("DeidentificationMethod" in ds) == (removed == "YES")
    # a synthetic image is drawn by a model: no burned-in text whatever the source had
    syn = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "s", source=source_ds)[0]))
    assert syn.BurnedInAnnotation == "NO" and syn.PatientIdentityRemoved == "YES"


@pytest.mark.parametrize("body_part, copied", [("ABDOMEN", "ABDOMEN"), ("liver", "LIVER"),
                                                ("SMITH J LIVER", None), ("ABDOMEN^J_DOE", None)])
def test_body_part_free_text_is_never_copied(tmp_path, synthetic, source_ds, body_part, copied):
    source_ds.BodyPartExamined = body_part
    ds = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "s", source=source_ds)[0]))
    assert ds.get("BodyPartExamined") == copied
    assert "SMITH" not in "\n".join(_strings(ds)) and "DOE" not in "\n".join(_strings(ds))


def test_series_description_always_says_synthetic(tmp_path, synthetic):
    ds = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "d", series_description="liver")[0]))
    assert ds.SeriesDescription == "SYNTHETIC liver - NOT FOR DIAGNOSIS"
    long = pydicom.dcmread(str(export_dicom_series(synthetic, tmp_path / "e", series_description="x" * 80)[0]))
    assert len(long.SeriesDescription) <= 64 and long.SeriesDescription.endswith("NOT FOR DIAGNOSIS")


def _leftovers(parent: Path, keep: str = "") -> list:
    return [p.name for p in parent.iterdir() if p.name != keep]


def test_refuses_nan_and_non_empty_folder(tmp_path, synthetic):
    bad = synthetic.copy()
    bad.array[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        export_dicom_series(bad, tmp_path / "nan")
    assert _leftovers(tmp_path) == []

    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_dicom_series(synthetic, folder)
    with pytest.raises(FileExistsError, match="did not write"):  # overwrite never deletes other data
        export_dicom_series(synthetic, folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert _leftovers(tmp_path) == ["busy"]

    # an existing empty folder is used; a previous export is replaced only with overwrite=True
    empty = tmp_path / "empty"
    empty.mkdir()
    first = export_dicom_series(synthetic, empty)
    uid = pydicom.dcmread(str(first[0])).SeriesInstanceUID
    with pytest.raises(FileExistsError):
        export_dicom_series(synthetic, empty)
    two = Volume(synthetic.array[:2], SPACING, ORIGIN, synthetic.direction)
    second = export_dicom_series(two, empty, overwrite=True)
    assert sorted(empty.iterdir()) == second and len(second) == 2
    assert pydicom.dcmread(str(second[0])).SeriesInstanceUID != uid
    assert sorted(_leftovers(tmp_path)) == ["busy", "empty"]


def test_no_partial_output_after_a_failure(tmp_path, synthetic, monkeypatch):
    calls = {"n": 0}
    original = pydicom.Dataset.save_as

    def failing_save_as(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save_as)
    with pytest.raises(OSError, match="simulated"):
        export_dicom_series(synthetic, tmp_path / "out")
    assert _leftovers(tmp_path) == []  # neither the target nor the temporary folder

    # a failed overwrite keeps the previous series untouched
    monkeypatch.setattr(pydicom.Dataset, "save_as", original)
    previous = export_dicom_series(synthetic, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in previous}
    calls["n"] = 0
    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save_as)
    with pytest.raises(OSError, match="simulated"):
        export_dicom_series(synthetic, tmp_path / "out", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert _leftovers(tmp_path) == ["out"]


def test_export_with_the_pydicom_2_4_save_as(tmp_path, synthetic, monkeypatch):
    """Slicer 5.6-5.10 bundle pydicom 2.4, whose ``Dataset.save_as`` knows ``write_like_original`` but not
    ``enforce_file_format`` (issue #29, item 5): the export works with that signature too."""
    def save_as_2_4(self, filename, write_like_original=True):
        pydicom.dcmwrite(filename, self, enforce_file_format=not write_like_original)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", save_as_2_4)
    files = export_dicom_series(synthetic, tmp_path / "old_pydicom")
    assert len(files) == synthetic.shape[0]
    first = pydicom.dcmread(str(files[0]))
    assert first.preamble == b"\x00" * 128 and first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    expected = np.clip(np.round(synthetic.array), -32768, 32767)  # the fixture holds values beyond int16
    np.testing.assert_allclose(read_volume(tmp_path / "old_pydicom").array, expected, atol=1.0)
