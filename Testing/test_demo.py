"""``qhqgan demo`` (issue #31): ``--model``, a slice where the effect shows, a readable figure, and the series
options of enhance. On real CT from ../shared/data (skipped without it) and pydicom's CT_small.dcm.

(The demo's folder, its staging and its refusal of a non-empty folder: Testing/test_cli.py; that it names no
patient: Testing/test_output_safety.py.)
"""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from conftest import shared_path

from QHQGANLib import read_volume, write_volume
from QHQGANLib.apps.cli import main
from QHQGANLib.apps.demo import SLICE_RULE, pick_slice
from QHQGANLib.core import figures
from QHQGANLib.core.constants import HU_MAX, HU_MIN
from QHQGANLib.metrics.image import uniform_region_mask

from test_uneven_positions import move_z, real_files, tilt, write_series  # real slices, uneven and tilted

#: The quickest shipped enhancer (no circuit to simulate).
FAST_MODEL = "no-circuit-enhance"


@pytest.fixture
def drawn(monkeypatch):
    """What the demo asks the figure to show (titles, windows, footer), recorded."""
    calls = []
    real = figures.save_panels_png

    def spy(panels, path, *args, **kwargs):
        calls.append({"titles": [title for title, _ in panels], "images": [image for _, image in panels], **kwargs})
        return real(panels, path, *args, **kwargs)

    monkeypatch.setattr(figures, "save_panels_png", spy)
    return calls


@pytest.fixture(scope="module")
def abdomen(tmp_path_factory):
    """The 20-slice Siemens abdomen series (NIfTI copy), cropped to 96 x 96 pixels: liver, kidney, spine."""
    ct = read_volume(shared_path("abdomen-ct-totalseg/example_ct_dicom_20slices.nii.gz"))
    crop = ct.with_geometry(ct.array[:, 210:306, 200:296].copy(), ct.spacing, ct.index_to_physical((200, 210, 0)))
    return write_volume(crop, tmp_path_factory.mktemp("abdomen") / "crop.nrrd")


def test_the_demo_shows_the_slice_with_the_most_uniform_soft_tissue(abdomen, tmp_path, drawn, capsys):
    source = read_volume(abdomen)
    mask = uniform_region_mask(np.clip(source.array, HU_MIN, HU_MAX))  # the metric's own uniform windows
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    expected = max(range(20), key=lambda k: (counts[k], -abs(k - 9.5)))
    assert pick_slice(source) == expected

    folder = tmp_path / "demo"
    assert main(["demo", "--input", str(abdomen), "--model", FAST_MODEL, "--max-slices", "3",
                 "--output-dir", str(folder), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"figure: slice {expected + 1} of 20 (the most uniform soft tissue), enhanced by {FAST_MODEL}" in out
    report = json.loads((folder / "metrics.json").read_text())
    assert report["model"] == FAST_MODEL and report["slices_processed"] == 3
    assert report["figure_slice"] == {"number": expected + 1, "of": 20, "counted": "from 1 along the input's "
                                      "slice axis", "rule": SLICE_RULE}
    normal = read_volume(folder / "normal_dose.nrrd")
    assert normal.shape[0] == 3 and any(np.array_equal(s, source.array[expected]) for s in normal.array)

    (call,) = drawn
    assert call["titles"] == ["normal dose", "simulated low dose at 25 %", f"enhanced by {FAST_MODEL}",
                              "difference: enhanced minus normal dose"]
    assert np.array_equal(call["images"][0], source.array[expected])  # the slice the footer names
    assert call["window_names"] == ["soft-tissue window W 400 / L 40 HU"] * 3 + ["difference window W 200 / L 0 HU"]
    assert call["colorbar"] is True
    assert f"slice {expected + 1} of 20 (the slice with the most uniform soft tissue)" in call["footer"]
    text = repr(call["titles"]) + call["footer"] + repr(call["window_names"])
    assert "crop" not in text and str(tmp_path) not in text and ".nrrd" not in text  # no file names or paths


def test_the_figure_is_readable(tmp_path):
    """Titles wrap inside their panel, a colour bar in HU runs under each, and the footer wraps to the figure."""
    from PIL import Image, ImageDraw, ImageFont

    slice_hu = np.linspace(-300, 300, 64 * 64, dtype=np.float32).reshape(64, 64)
    long_title = "difference: enhanced by a model with a rather long name minus normal dose"
    names = ["soft-tissue window W 400 / L 40 HU", "difference window W 200 / L 0 HU"]
    path = figures.save_panels_png([("normal dose", slice_hu), (long_title, slice_hu)], tmp_path / "f.png",
                                   windows=[(-160, 240), (-100, 100)], colorbar=True, window_names=names,
                                   footer="a footer " * 40)
    image = np.asarray(Image.open(path))
    font = ImageFont.load_default(size=14)
    measure = ImageDraw.Draw(Image.new("L", (1, 1))).textlength
    lines = figures.wrap(long_title, 256, lambda s: measure(s, font=font))
    assert len(lines) >= 2 and all(measure(line, font=font) <= 256 for line in lines)
    assert image.shape[1] == 2 * 256 + 3 * figures.GAP  # two panels of 256 pixels: nothing drawn beyond them
    bar_rows = [y for y in range(image.shape[0]) if np.all(np.diff(image[y, figures.GAP:figures.GAP + 256].astype(int))
                                                           >= 0) and image[y, figures.GAP] < 5
                and image[y, figures.GAP + 255] > 250]
    assert len(bar_rows) >= figures.BAR_HEIGHT  # the grey ramp from the window's low to its high end
    assert figures.window_name((-160, 240), "soft-tissue window") == "soft-tissue window W 400 / L 40 HU"


def test_the_model_option(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert main(["demo", "--model", FAST_MODEL, "--output-dir", str(folder), "--quiet"]) == 0
    report = json.loads((folder / "metrics.json").read_text())
    assert report["model"] == FAST_MODEL and (folder / f"enhanced_{FAST_MODEL}.nrrd").exists()
    assert report["figure_slice"]["number"] == 1 and report["figure_slice"]["of"] == 1  # CT_small: one slice
    assert main(["demo", "--model", "hqgan-sr2", "--output-dir", str(tmp_path / "sr"), "--quiet"]) == 2
    assert "hqgan-sr2 is a super-resolve model, not a enhance model" in capsys.readouterr().err
    assert not (tmp_path / "sr").exists()


def test_the_demo_takes_the_series_options(tmp_path, capsys):
    real = real_files()
    uneven = write_series(tmp_path / "uneven", real[60:66], lambda k, ds: move_z(ds, -1.0) if k == 5 else None)
    z0 = float(pydicom.dcmread(str(real[60]), stop_before_pixels=True).ImagePositionPatient[2])
    tilted = write_series(tmp_path / "tilted", real[60:63], tilt(z0))
    base = ["demo", "--model", FAST_MODEL, "--max-slices", "2", "--quiet"]
    assert main(base + ["--input", str(uneven), "--output-dir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err  # it writes NRRD: one regular grid, so the reader's ways out
    assert "gaps 3.0 mm except 2.0 mm" in err and "--resample-z MM" in err and "--series-block N" in err
    runs = [(uneven, ["--resample-z", "1"], "input resampled along z to 1.0 mm from 6 slices", 15),
            (uneven, ["--series-block", "1"], "input block 1 of 2 read alone", 5),
            (tilted, ["--regularize-tilt"], "input gantry tilt of 15.00 degrees regularized", 3)]
    for number, (folder, options, note, n_input) in enumerate(runs):
        out = tmp_path / f"demo{number}"
        assert main(base + ["--input", str(folder), "--output-dir", str(out), *options]) == 0, options
        report = json.loads((out / "metrics.json").read_text())
        assert any(n.startswith(note) for n in report["notes"]), report["notes"]
        assert report["figure_slice"]["of"] == n_input and report["slices_processed"] == 2
    assert main(base + ["--input", str(tilted), "--output-dir", str(tmp_path / "tilt-refused")]) == 2
    assert "--regularize-tilt" in capsys.readouterr().err


def test_a_used_output_folder_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """The demo's --output-dir is checked before the input is read or any dose simulated: a folder holding
    anything, or a file, is refused at once and left as it was."""
    import QHQGANLib.physics.lowdose as lowdose

    def never(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(lowdose, "simulate_low_dose", never)
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["demo", "--output-dir", str(used), "--quiet"]) != 0
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert main(["demo", "--output-dir", str(a_file), "--quiet"]) != 0
    assert "not a folder" in capsys.readouterr().err and a_file.read_text() == "mine"
