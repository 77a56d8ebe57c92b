"""DICOM pixel padding (issue #28, low item "PixelPaddingValue ignored"; #29 item 3's padding per arm).

Scanners fill the pixels outside the reconstruction circle with PixelPaddingValue (0028,0120),
compared with the stored values. In ../shared/data the GE series carry it: ``abdomen-ct-dcmqi``,
``head-ct-slice`` and ``noise-phantom-ge`` (SS -2000, 21.3 % of every 512 x 512 slice, -3024 HU);
``abdomen-ct-kits`` writes -2000 as US 63536 but its files hold no voxel of that value (the outside
of its circle is stored -1024: -2048 HU). The crafted series is pydicom's CT_small.dcm with the
outside of a circle padded and the tag written as KiTS writes it (US 63536, PixelRepresentation 1).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import QHQGANLib as q
from QHQGANLib.core.padding import PADDING_HU, nearest_mask, padding_mask
from QHQGANLib.physics.image_noise import add_ct_noise
from QHQGANLib.physics.lowdose import ScannerModel, simulate_low_dose
from QHQGANLib.physics.resolution import degrade_resolution
from QHQGANLib.tasks.enhance import enhance, super_resolve
from QHQGANLib.tasks.evaluate import evaluate_enhancement
from QHQGANLib.tasks.reader_study import neutral_voxels, produce_methods

from conftest import shared_path

PAD_STORED = -2000  # GE's value: -3024 HU after the intercept -1024
FAST = ScannerModel(n_views=180)


def _circle(n: int = 128, radius: float = 58.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return (yy - (n - 1) / 2.0) ** 2 + (xx - (n - 1) / 2.0) ** 2 > radius ** 2


def _write_series(folder: Path, n_slices: int = 3, *, tag=("US", 63536), limit=None, stored_pad=None,
                  positions=None, shift_x_mm: float = 0.0) -> Path:
    """CT_small.dcm as a series of ``n_slices`` files, the outside of a circle padded (stored values)."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    outside = _circle(base.Rows)
    positions = list(positions if positions is not None else np.arange(n_slices) * 5.0)
    for k, z in enumerate(positions):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = ds.pixel_array.astype(np.int16)
        pixels = np.roll(pixels, 3 * k, axis=1)  # slices differ a little
        fill = PAD_STORED if stored_pad is None else stored_pad
        pixels[outside] = fill[outside] if np.ndim(fill) else fill
        ds.PixelData = pixels.astype("<i2").tobytes()
        if (0x0028, 0x0120) in ds:
            del ds[(0x0028, 0x0120)]
        if tag is not None:
            ds.add_new((0x0028, 0x0120), tag[0], tag[1])
        if limit is not None:
            ds.add_new((0x0028, 0x0121), limit[0], limit[1])
        x0, y0, z0 = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x0 + k * shift_x_mm, y0, z0 + float(z)]
        ds.SliceThickness = 5.0
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(str(folder / f"slice{k:02d}.dcm"))
    return folder


@pytest.fixture(scope="module")
def padded_series(tmp_path_factory) -> Path:
    return _write_series(tmp_path_factory.mktemp("padded") / "series")


@pytest.fixture(scope="module")
def padded(padded_series) -> q.Volume:
    return q.read_volume(padded_series)


def _as_air(volume: q.Volume) -> q.Volume:
    """The same image with the padding set to air and no record of it."""
    mask = padding_mask(volume)
    air = volume.with_array(np.where(mask, np.float32(-1000.0), volume.array))
    air.metadata.pop("padding_hu")
    return air


# --- reading ---------------------------------------------------------------------------------

def test_crafted_series_padding_detected_and_recorded(padded):
    outside = _circle()
    assert padded.metadata["padding_hu"] == -3024.0  # US 63536 read as signed (PixelRepresentation 1): -2000 stored
    mask = padding_mask(padded)
    assert mask is not None and np.array_equal(mask, np.broadcast_to(outside, padded.shape))
    assert np.all(padded.array[~mask] > -1024.0)  # the patient is untouched (CT_small holds no value that low)
    reference = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array.astype(np.float32) - 1024.0
    assert np.array_equal(padded.array[0][~outside], reference[~outside])
    original = q.read_volume(get_testdata_file("CT_small.dcm"))
    assert original.metadata.get("padding_hu") is None  # its own tag (SS -2000) matches no voxel


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_padding_is_still_known_after_a_write_and_read(padded, tmp_path, suffix):
    """An enhanced NRRD/MHA of a padded series read back later: its padded voxels are still left out
    of the metrics and out of a second dose simulation (the mark is a header field)."""
    path = q.write_volume(padded, tmp_path / f"padded{suffix}")
    back = q.read_volume(path)
    assert back.metadata["padding_hu"] == padded.metadata["padding_hu"]
    assert np.array_equal(padding_mask(back), padding_mask(padded))
    plain = q.write_volume(_as_air(padded), tmp_path / f"air{suffix}")
    assert q.read_volume(plain).metadata.get("padding_hu") is None


def test_range_limit_and_a_padding_at_the_ct_floor_get_one_distinctive_value(tmp_path):
    rng = np.random.default_rng(0)
    ranged = q.read_volume(_write_series(tmp_path / "ranged", 2, tag=("SS", -2010), limit=("SS", -1990),
                                         stored_pad=rng.integers(-2010, -1989, size=(128, 128)).astype(np.int16)))
    floor = q.read_volume(_write_series(tmp_path / "floor", 2, tag=("US", 0), stored_pad=0))  # -1024 HU: air's value
    for volume in (ranged, floor):
        value = volume.metadata["padding_hu"]
        assert value == PADDING_HU and np.float32(value) == value
        mask = padding_mask(volume)
        assert np.array_equal(mask, np.broadcast_to(_circle(), volume.shape))
        assert np.all(volume.array[mask] == value) and np.all(volume.array[~mask] > -1024.0)


def test_padding_survives_tilt_regularization_and_z_resampling(tmp_path):
    tilted = q.read_volume(_write_series(tmp_path / "tilt", 3, shift_x_mm=0.4), regularize_tilt=True)
    uneven = q.read_volume(_write_series(tmp_path / "uneven", 3, positions=[0.0, 5.0, 15.0]), resample_z=5.0)
    for volume in (tilted, uneven):
        value = volume.metadata["padding_hu"]
        mask = padding_mask(volume)
        assert mask.mean() > 0.15
        between = (volume.array > value) & (volume.array < -1000.0)  # no padding smeared into the image
        assert not between.any(), f"{int(between.sum())} voxels mix the padding with the image"


def test_real_series_with_pixel_padding():
    for relative in ("abdomen-ct-dcmqi", "head-ct-slice/693_UNCR.dcm", "noise-phantom-ge/imgA.dcm"):
        ct = q.read_volume(shared_path(relative))
        assert ct.metadata["padding_hu"] == -3024.0, relative
        mask = padding_mask(ct)
        assert abs(mask.mean() - 0.2128) < 0.001, relative  # the corners outside the 512-pixel circle
        assert ct.array[~mask].min() >= -1024.0, relative
    kits = q.read_volume(shared_path("abdomen-ct-kits/CT20.dcm"))  # the tag says -2000, no voxel holds it
    assert "padding_hu" not in kits.metadata and kits.array.min() == -2048.0


# --- physics ---------------------------------------------------------------------------------

def test_low_dose_leaves_padding_unchanged_and_patient_noise_as_with_air():
    ct = q.read_volume(shared_path("head-ct-slice/693_UNCR.dcm"))
    mask = padding_mask(ct)
    low = simulate_low_dose(ct, 0.25, seed=3, scanner=FAST)
    low_air = simulate_low_dose(_as_air(ct), 0.25, seed=3, scanner=FAST)
    assert np.array_equal(low.array[mask], ct.array[mask])  # exactly -3024: no noise outside the patient
    assert np.array_equal(padding_mask(low), mask) and low.metadata["padding_hu"] == -3024.0
    assert np.array_equal(low.array[~mask], low_air.array[~mask])
    assert low.metadata["low_dose"]["inserted_noise_hu"] == low_air.metadata["low_dose"]["inserted_noise_hu"] > 1.0


def test_low_dose_of_the_crafted_series_keeps_padding(padded):
    mask = padding_mask(padded)
    low = simulate_low_dose(padded, 0.25, seed=0, scanner=FAST, reference_noise_hu=10.0)
    assert np.array_equal(low.array[mask], padded.array[mask])
    assert float(np.std(low.array[~mask] - padded.array[~mask])) > 5.0


def test_image_noise_skips_padding(padded):
    mask = padding_mask(padded)
    noisy, noisy_air = add_ct_noise(padded, 40, seed=1), add_ct_noise(_as_air(padded), 40, seed=1)
    assert np.array_equal(noisy.array[mask], padded.array[mask])
    assert np.array_equal(noisy.array[~mask], noisy_air.array[~mask])


def test_degraded_resolution_blurs_padding_as_air(padded):
    coarse = degrade_resolution(padded, 2)
    value = coarse.metadata["padding_hu"]
    mask = padding_mask(coarse)
    assert abs(mask.mean() - _circle().mean()) < 0.01  # the coarse voxels mostly outside the circle
    assert not ((coarse.array > value) & (coarse.array < -1000.0)).any()


# --- tasks -----------------------------------------------------------------------------------

class _Scrambler:
    """A stand-in network that writes arbitrary values everywhere (torch module built lazily)."""

    @staticmethod
    def make(scale: int = 1):
        import torch

        torch.manual_seed(0)
        conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        layers = [torch.nn.Upsample(scale_factor=scale)] if scale > 1 else []
        net = torch.nn.Sequential(*layers, conv)
        net.scale = scale
        return net


def test_enhanced_and_super_resolved_outputs_keep_padding_exactly(padded):
    mask = padding_mask(padded)
    out = enhance(padded, model=_Scrambler.make(), device="cpu")
    assert np.array_equal(padding_mask(out), mask) and np.all(out.array[mask] == -3024.0)
    half = enhance(padded, model=_Scrambler.make(), device="cpu", strength=0.5)
    assert np.array_equal(padding_mask(half), mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # CT_small's pixels are finer than the x2 training range
        sr = super_resolve(padded, 2, model=_Scrambler.make(2), device="cpu")
    fine = nearest_mask(mask, sr.shape)
    assert sr.shape == (3, 256, 256) and int(fine.sum()) == 4 * int(mask.sum())
    assert np.array_equal(padding_mask(sr), fine)


def test_evaluate_scores_ignore_padding(padded):
    mask = padding_mask(padded)

    def scribble(v: q.Volume) -> q.Volume:  # a method that writes soft tissue into the padding
        return v.with_array(np.where(mask, np.float32(40.0), v.array))

    rows = evaluate_enhancement({"same": lambda v: v.copy(), "scribbled": scribble}, [padded], doses=(0.25,),
                                include_input=False)
    same, scribbled = rows
    for key in ("psnr_abdomen", "ssim_abdomen", "psnr_full", "ssim_full", "noise_hu"):
        assert same[key] == scribbled[key], key
    low = simulate_low_dose(padded, 0.25, seed=1234, scanner=FAST, reference_noise_hu=10.0)
    diff = np.clip(low.array, -1024, 3071)[~mask] - np.clip(padded.array, -1024, 3071)[~mask]
    expected = 10 * np.log10(4095.0 ** 2 / np.mean(diff.astype(np.float64) ** 2))
    assert q.psnr(low, padded) == pytest.approx(expected, rel=1e-9)
    other = padded.with_array(np.where(mask, np.float32(-5000.0), padded.array))  # another padding value
    other.metadata["padding_hu"] = -5000.0
    assert q.psnr(low, other) == q.psnr(low, padded) and q.ssim(low, other) == q.ssim(low, padded)


def test_reader_study_arms_keep_the_padding_alike(padded):
    mask = padding_mask(padded)
    arms = produce_methods(padded, ["normal-dose", "low-dose", "redcnn-enhance"], dose=0.25, seed=2, device="cpu")
    for name, arm in arms.items():
        assert np.all(arm.array[mask] == -3024.0), name
        assert np.all(neutral_voxels(arm.array)[mask] == -1024), name


def test_padding_is_still_known_after_a_dicom_export(padded, tmp_path):
    """A derived DICOM series of a padded volume writes PixelPaddingValue: read back, its padded voxels are
    known again (left out of metrics and dose simulation)."""
    from QHQGANLib.core.dicom_export import export_dicom_series

    export_dicom_series(padded, tmp_path / "series")
    back = q.read_volume(tmp_path / "series")
    assert back.metadata["padding_hu"] == padded.metadata["padding_hu"]
    assert np.array_equal(padding_mask(back), padding_mask(padded))
