"""Issue #31: integer inputs give int16 outputs where the values allow (``--output-type``), and synthetic
samples carry the model's physical pixel size. On real CT from ../shared/data (skipped without it)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_path

from QHQGANLib import read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.nn.weights import list_models

#: The quickest shipped enhancer (no circuit to simulate).
FAST_MODEL = "no-circuit-enhance"
#: ``Volume.metadata`` key of the stored pixel type (``core.pixel_types.SOURCE_PIXEL_TYPE``).
SOURCE_PIXEL_TYPE = "source_pixel_type"


def pixel_type(path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return sitk.GetPixelIDValueAsString(reader.GetPixelID())


def history(path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetMetaData("QHQGAN_history")


@pytest.fixture(scope="module")
def crop():
    """3 slices, 144 x 144 pixels of the Siemens abdomen series (NIfTI copy, stored int16)."""
    ct = read_volume(shared_path("abdomen-ct-totalseg/example_ct_dicom_20slices.nii.gz"))
    return ct.with_geometry(ct.array[9:12, 200:344, 180:324].copy(), ct.spacing, ct.index_to_physical((180, 200, 9)))


@pytest.fixture(scope="module")
def enhanced(crop, tmp_path_factory):
    """The crop as an int16 and a float32 NRRD, each enhanced with the default and the forced output types."""
    folder = tmp_path_factory.mktemp("output-types")
    write_volume(crop, folder / "in_int16.nrrd", pixel_type="int16")
    write_volume(crop, folder / "in_float32.nrrd")
    runs = {"int16_auto": ("in_int16.nrrd", []), "int16_float32": ("in_int16.nrrd", ["--output-type", "float32"]),
            "float32_auto": ("in_float32.nrrd", []), "float32_int16": ("in_float32.nrrd", ["--output-type", "int16"])}
    for name, (source, options) in runs.items():
        assert main(["enhance", str(folder / source), str(folder / f"{name}.nrrd"), "--model", FAST_MODEL,
                     "--device", "cpu", "--quiet", *options]) == 0, name
    return folder


def test_the_reader_records_the_stored_pixel_type(crop, enhanced):
    assert crop.metadata.get(SOURCE_PIXEL_TYPE) == "int16"  # kept through with_geometry
    assert read_volume(enhanced / "in_int16.nrrd").metadata[SOURCE_PIXEL_TYPE] == "int16"
    assert read_volume(enhanced / "in_float32.nrrd").metadata[SOURCE_PIXEL_TYPE] == "float32"
    dicom = read_volume(shared_path("abdomen-ct-totalseg/dicom"))  # a DICOM series always stores integers
    assert dicom.metadata[SOURCE_PIXEL_TYPE] in ("int16", "uint16")
    assert read_volume(shared_path("abdomen-ct-totalseg/example_ct.nii.gz")).metadata[SOURCE_PIXEL_TYPE] == "int32"


def test_an_int16_input_gives_an_int16_enhanced_output_within_half_a_hu(enhanced):
    out = enhanced / "int16_auto.nrrd"
    assert pixel_type(out) == "16-bit signed integer"
    whole = read_volume(out).array
    exact = read_volume(enhanced / "int16_float32.nrrd").array
    assert np.abs(whole - exact).max() <= 0.5
    np.testing.assert_array_equal(whole, np.rint(exact))
    assert np.abs(whole - exact).max() > 0  # it was rounded, not a float copy
    assert history(out).split(" | ")[-1] == ("enhanced by no-circuit-enhance; stored as int16, whole HU (rounded; the "
                                             "input stored int16 pixels, output type auto)")


def test_the_int16_output_is_smaller_on_disk(enhanced):
    small, large = (enhanced / "int16_auto.nrrd").stat().st_size, (enhanced / "int16_float32.nrrd").stat().st_size
    assert small < 0.6 * large, (small, large)


def test_a_float32_input_keeps_a_float32_output(enhanced):
    out = enhanced / "float32_auto.nrrd"
    assert pixel_type(out) == "32-bit float"
    assert history(out).endswith("; stored as float32 (the input stored float32 pixels, output type auto)")


def test_output_type_forces_either_type(enhanced):
    forced_float = enhanced / "int16_float32.nrrd"
    assert pixel_type(forced_float) == "32-bit float"
    assert history(forced_float).endswith("; stored as float32 (output type float32)")
    forced_int = enhanced / "float32_int16.nrrd"
    assert pixel_type(forced_int) == "16-bit signed integer"
    assert history(forced_int).endswith("; stored as int16, whole HU (rounded; output type int16)")
    np.testing.assert_array_equal(read_volume(forced_int).array, read_volume(enhanced / "int16_auto.nrrd").array)


def test_simulate_low_dose_of_a_dicom_file_is_int16(tmp_path):
    """Another command, from a DICOM file (a GE slice stored int16)."""
    source = shared_path("abdomen-ct-kits/CT2.dcm")
    out = tmp_path / "low.nrrd"
    assert main(["simulate-low-dose", str(source), str(out), "--dose", "0.5", "--quiet"]) == 0
    assert pixel_type(out) == "16-bit signed integer"
    step = history(out).split(" | ")[-1]
    assert step.startswith("simulate_low_dose") and step.endswith("stored int16 pixels, output type auto)")


def test_values_beyond_int16_stay_float32_and_a_forced_int16_refuses_them(crop):
    from QHQGANLib.core.pixel_types import for_writing

    high = crop.with_array(crop.array + 40000.0)  # e.g. a uint16 source with a large offset
    high.metadata[SOURCE_PIXEL_TYPE] = "uint16"
    typed, kind = for_writing(high)
    assert kind == "float32" and "do not fit int16" in typed.metadata["history"][-1]
    with pytest.raises(ValueError, match="do not fit int16"):
        for_writing(high, "int16")


def test_dicom_output_refuses_output_type_float32_before_work(tmp_path, capsys):
    source = shared_path("abdomen-ct-kits/CT2.dcm")
    assert main(["enhance", str(source), str(tmp_path / "series"), "--dicom", "--output-type", "float32"]) == 2
    assert "--output-type float32 is for a volume file" in capsys.readouterr().err
    assert not (tmp_path / "series").exists()


def test_the_panel_worker_gives_an_integer_node_an_integer_result(crop):
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
    import slicer.util

    from QHQGANLib.apps import scene as bridge
    from QHQGANLib.apps.background import TaskRequest, process_node

    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    try:
        node = bridge.node_from_volume(crop, mrml, "CT")  # an int16 source: an int16 node, as Slicer loads it
        assert slicer.util.arrayFromVolume(node).dtype == np.int16
        out = process_node(node, TaskRequest("enhance", model=FAST_MODEL, device="cpu"))
        assert slicer.util.arrayFromVolume(out).dtype == np.int16
        floating_source = crop.with_array(crop.array + 0.25)  # a float volume: a float node, a float result
        floating_source.metadata[SOURCE_PIXEL_TYPE] = "float32"
        floating_node = bridge.node_from_volume(floating_source, mrml, "CTfloat32")
        assert slicer.util.arrayFromVolume(floating_node).dtype == np.float32
        out = process_node(floating_node, TaskRequest("enhance", model=FAST_MODEL, device="cpu"))
        assert slicer.util.arrayFromVolume(out).dtype == np.float32
    finally:
        mrml.Clear(True)


# ---------------------------------------------------------------------------
# synthesis: the model's physical pixel size
# ---------------------------------------------------------------------------
SYNTH_CARDS = [c for c in list_models() if c["task"] == "synthesize"]


@pytest.mark.parametrize("size", [64, 128])
def test_the_cards_pixel_size_is_that_of_the_training_crops(size):
    """The shipped models were trained on the abdomen volumes of the training patients of their time:
    the TotalSegmentator volume (3 mm) and the Siemens series (0.977 mm), body-cropped as training_slices does."""
    from QHQGANLib.training.slices import training_pixel_spacing

    volumes = [read_volume(shared_path("abdomen-ct-totalseg/example_ct.nii.gz")),
               read_volume(shared_path("abdomen-ct-totalseg/dicom"))]
    measured = training_pixel_spacing(volumes, size, min_body_fraction=0.0)
    cards = [c for c in SYNTH_CARDS if c["size"] == size]
    assert len(cards) == 4
    for card in cards:
        assert card["pixel_spacing_mm"] == measured["pixel_spacing_mm"], card["name"]
        assert card["pixel_spacing_range_mm"] == measured["pixel_spacing_range_mm"], card["name"]
    assert 5.5 < measured["pixel_spacing_mm"] * size / 64 < 6.5  # a 64-pixel sample is ~384 mm wide, not 64


def test_synthesized_samples_have_the_cards_pixel_size(tmp_path):
    shared_path("abdomen-ct-totalseg/dicom")  # the tests of this file run where the real data is
    card = next(c for c in SYNTH_CARDS if c["name"] == "hqgan-synth")
    out = tmp_path / "samples_synthetic.nrrd"
    assert main(["synthesize", str(out), "--model", "hqgan-synth", "--n", "2", "--quiet"]) == 0
    samples = read_volume(out, force=True)
    assert samples.spacing[:2] == pytest.approx((card["pixel_spacing_mm"],) * 2)
    assert f"pixel size {card['pixel_spacing_mm']:g} mm (the model's training crops (model card))" in history(out)
    assert samples.metadata.get("synthetic")

    from QHQGANLib.tasks.synthesize import synthesize

    given = synthesize("hqgan-synth", n=1, pixel_spacing=0.8)  # an explicit value wins
    assert given.spacing[:2] == (0.8, 0.8) and "pixel size 0.8 mm (given)" in given.metadata["history"][-1]


def test_train_synth_records_the_pixel_size_in_its_card(tmp_path):
    ct = read_volume(shared_path("abdomen-ct-totalseg/example_ct_sm.nii.gz"))
    small = ct.with_geometry(ct.array[10:14].copy(), ct.spacing, ct.index_to_physical((0, 0, 10)))
    write_volume(small, tmp_path / "ct.nrrd")
    assert main(["train-synth", "--input", str(tmp_path / "ct.nrrd"), "--method", "dcgan", "--steps", "2",
                 "--batch-size", "4", "--width", "8", "--device", "cpu", "--save-model", str(tmp_path / "mine"),
                 "--quiet"]) == 0
    card = json.loads((tmp_path / "mine.json").read_text())
    assert 4.0 < card["pixel_spacing_mm"] < 8.0 and len(card["pixel_spacing_range_mm"]) == 2
    from QHQGANLib.tasks.synthesize import synthesize

    samples = synthesize(str(tmp_path / "mine.safetensors"), n=1)
    assert samples.spacing[0] == pytest.approx(card["pixel_spacing_mm"])
