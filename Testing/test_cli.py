"""The ``qhqgan`` command line: commands, outputs, refusals and one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from QHQGANLib import read_volume
from QHQGANLib.apps.cli import main


def test_console_script_is_installed():
    exe = shutil.which("qhqgan")
    assert exe, "the qhqgan console script is not on PATH (pip install -e .)"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("qhqgan ")


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["qhqgan"]
    assert info["torch"] != "not installed"
    assert isinstance(info["models"], list)


def test_simulate_low_dose_command(tmp_path, ct_small_path, capsys):
    out = tmp_path / "quarter.nrrd"
    before = ct_small_path.read_bytes()
    assert main(["simulate-low-dose", str(ct_small_path), str(out), "--dose", "0.25", "--seed", "3", "--quiet"]) == 0
    low, normal = read_volume(out), read_volume(ct_small_path)
    assert low.same_geometry(normal)
    assert 1.0 < float(np.std(low.array - normal.array)) < 200.0
    assert ct_small_path.read_bytes() == before  # the input is never touched
    # the same output again is refused, the file kept
    written = out.read_bytes()
    assert main(["simulate-low-dose", str(ct_small_path), str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == written


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a CT")
    assert main(["simulate-low-dose", str(bad), str(tmp_path / "o.nrrd")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qhqgan: error:") and "not a supported volume" in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o.nrrd").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "QHQGANLib", "simulate-low-dose", "--debug",
                           str(tmp_path / "absent.nrrd"), str(tmp_path / "o.nrrd")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "VolumeReadError" in proc.stderr


def test_output_equal_to_input_refused(tmp_path, ct_small_path, capsys):
    target = tmp_path / "ct.nrrd"
    assert main(["degrade-resolution", str(ct_small_path), str(target), "--quiet"]) == 0
    assert main(["degrade-resolution", str(target), str(target), "--overwrite", "--quiet"]) == 2
    assert "never overwrites its input" in capsys.readouterr().err


def test_bad_dose_rejected_by_parser(capsys):
    with pytest.raises(SystemExit):
        main(["simulate-low-dose", "a.nrrd", "b.nrrd", "--dose", "1.5"])
    assert "argument --dose: dose must be in [0.01, 1], got 1.5" in capsys.readouterr().err


def test_training_commands_take_a_device_and_amp():
    from QHQGANLib.apps.cli import build_parser

    parser = build_parser()
    for command in (["train-enhance", "--input", "ct.nrrd"], ["train-synth", "--input", "ct.nrrd", "--save-model", "m"]):
        args = parser.parse_args(command)
        assert (args.device, args.amp) == ("auto", False)
        args = parser.parse_args(command + ["--device", "cuda", "--amp"])
        assert (args.device, args.amp) == ("cuda", True)
        with pytest.raises(SystemExit):
            parser.parse_args(command + ["--device", "tpu"])


def test_demo_writes_its_folder(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(folder), "--quiet"]) == 0
    from QHQGANLib.nn.weights import list_models

    names = sorted(p.name for p in folder.iterdir())
    report = json.loads((folder / "metrics.json").read_text())
    m = report["metrics"]
    assert 20.0 < m["psnr_low_vs_normal_db_full_window"] < 70.0
    assert 0.0 < m["ssim_low_vs_normal_full_window"] < 1.0
    assert m["added_noise_std_hu_in_body"] > 1.0
    if any(c["task"] == "enhance" for c in list_models()):
        assert report["model"]
        assert names == ["enhanced_%s.nrrd" % report["model"], "figure.png", "low_dose_25pct.nrrd",
                         "metrics.json", "normal_dose.nrrd"]
        assert 20.0 < m["psnr_enhanced_vs_normal_db_full_window"] < 80.0
    else:
        assert names == ["figure.png", "low_dose_25pct.nrrd", "metrics.json", "normal_dose.nrrd"]
        assert "no trained enhancement model" in capsys.readouterr().out
    # no staging folder left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    # a second run into the same, non-empty folder is refused
    assert main(["demo", "--output-dir", str(folder), "--quiet"]) == 2


def test_progress_lines_for_a_parent_process(tmp_path, ct_small_path):
    """`--progress lines` prints parseable, monotonic progress on stdout (what the Slicer panel reads)."""
    from QHQGANLib.core.progress import parse_progress_line

    proc = subprocess.run([shutil.which("qhqgan"), "simulate-low-dose", str(ct_small_path),
                           str(tmp_path / "low.nrrd"), "--progress", "lines"],
                          capture_output=True, text=True, check=True)
    fractions = [p[0] for p in map(parse_progress_line, proc.stdout.splitlines()) if p is not None]
    assert fractions, proc.stdout
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "%|" not in proc.stderr  # no progress bar drawn in this mode


def test_super_resolve_says_the_output_size_and_the_pixel_warning_before_the_work(ct_small_path, tmp_path, capsys,
                                                                                 monkeypatch):
    """Issue #31: the x2 output's size (406 MB for a chest) and the pixel-size warning came only after the
    work; now both come before it (the warning once), and an output above the voxel limit is refused then."""
    from QHQGANLib.apps.cli import main
    from QHQGANLib.core import io

    out = tmp_path / "sr.nrrd"
    assert main(["--progress", "lines", "super-resolve", str(ct_small_path), str(out)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert "output about 256 x 256 x 1 voxels" in stdout
    assert stdout.index("output about") < stdout.index("QHQGAN-PROGRESS")  # before the work
    assert captured.err.count("qhqgan: warning: the input's pixel size 0.66 mm") == 1
    monkeypatch.setattr(io, "DEFAULT_MAX_VOXELS", 256 * 256 - 1)
    assert main(["--progress", "lines", "super-resolve", str(ct_small_path), str(tmp_path / "big.nrrd")]) == 2
    captured = capsys.readouterr()
    assert "above the limit" in captured.err and "QHQGAN-PROGRESS" not in captured.out
    assert not (tmp_path / "big.nrrd").exists()
