"""The command line under mistakes and faults (#12): errors found before the work, never 'unexpected'.

Each test reproduces one finding: global options before the command were ignored; tampered
weights, an unknown PennyLane device and an output that is a folder printed "unexpected ...";
a synthesis model given to ``enhance`` failed with a tensor shape; output mistakes were found
only after the computation; SIGTERM left temporary files behind.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from QHQGANLib.apps.cli import main
from QHQGANLib.core.resources import model_cards, models_dir


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("qhqgan: error:"), err
    assert "unexpected" not in err and "Traceback" not in err and "\n" not in err
    return err


def _copy_of_a_shipped_enhancer(folder: Path) -> Path:
    """A shipped enhancement model's weights and card copied into ``folder`` (skips when none ships)."""
    card = next((c for c in model_cards() if c.get("task") == "enhance"), None)
    if card is None:
        pytest.skip("no enhancement model ships in this installation")
    weights = folder / card["weights"]
    shutil.copy(models_dir() / card["weights"], weights)
    shutil.copy(models_dir() / f"{Path(card['weights']).stem}.json", weights.with_suffix(".json"))
    return weights


def test_global_options_before_the_command_are_honoured(tmp_path, ct_small_path, capsys):
    out = tmp_path / "low.nrrd"
    assert main(["--quiet", "simulate-low-dose", str(ct_small_path), str(out)]) == 0
    assert capsys.readouterr().out == ""  # --quiet given before the command
    assert main(["--progress", "lines", "simulate-low-dose", str(ct_small_path), str(tmp_path / "b.nrrd")]) == 0
    assert "QHQGAN-PROGRESS" in capsys.readouterr().out
    assert main(["simulate-low-dose", str(ct_small_path), str(tmp_path / "c.nrrd"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # after the command still works


@pytest.mark.parametrize("output, message", [
    ("missing/out.nrrd", "does not exist"),
    ("out.txt", "must end with"),
    ("folder.nrrd", "is a folder"),
    ("existing.nrrd", "exists"),
])
def test_output_mistakes_are_found_before_any_work(tmp_path, ct_small_path, capsys, output, message):
    (tmp_path / "folder.nrrd").mkdir()
    (tmp_path / "existing.nrrd").write_bytes(b"earlier result")
    code = main(["--progress", "lines", "simulate-low-dose", str(ct_small_path), str(tmp_path / output)])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and "unexpected" not in captured.err
    assert "QHQGAN-PROGRESS" not in captured.out  # refused before the simulation started
    assert (tmp_path / "existing.nrrd").read_bytes() == b"earlier result"


def test_a_synthesis_model_is_refused_by_enhance(tmp_path, ct_small_path, capsys):
    synth = next((c["name"] for c in model_cards() if c.get("task") == "synthesize"), None)
    if synth is None:
        pytest.skip("no synthesis model ships in this installation")
    assert main(["enhance", str(ct_small_path), str(tmp_path / "e.nrrd"), "--model", synth, "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "is a synthesize model" in err and "enhance" in err and "shape" not in err


def test_tampered_weights_are_an_error_not_a_crash(tmp_path, ct_small_path, capsys):
    weights = _copy_of_a_shipped_enhancer(tmp_path)
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tensors
    weights.write_bytes(bytes(data))
    assert main(["enhance", str(ct_small_path), str(tmp_path / "e.nrrd"), "--model", str(weights), "--quiet"]) == 2
    assert "does not match the model card" in _one_line_error(capsys)
    # without a card (a bare file), a damaged header is still an error with the reason
    weights.with_suffix(".json").unlink()
    weights.write_bytes(b"\xff" * 64)
    assert main(["enhance", str(ct_small_path), str(tmp_path / "e.nrrd"), "--model", str(weights), "--quiet"]) == 2
    assert "not a valid QHQGAN weights file" in _one_line_error(capsys)
    assert not (tmp_path / "e.nrrd").exists()


def test_unknown_pennylane_device_names_the_installed_ones(tmp_path, ct_small_path, capsys):
    code = main(["enhance", str(ct_small_path), str(tmp_path / "e.nrrd"), "--quantum-backend",
                 "pennylane:no.such.device", "--quiet"])
    assert code == 2
    err = _one_line_error(capsys)
    assert "no.such.device" in err and "default.qubit" in err


def test_sigterm_removes_what_the_run_created(tmp_path):
    """A cancelled run (SIGTERM, as the Slicer panel sends) leaves no temporary file, claim or output."""
    from QHQGANLib.core.io import write_volume
    from QHQGANLib.core.volume import Volume
    import numpy as np

    big = Volume(np.random.default_rng(0).normal(0, 30, (40, 256, 256)).astype(np.float32) - 500, (0.8, 0.8, 1.0))
    source = write_volume(big, tmp_path / "in.nrrd")
    out = tmp_path / "out.nrrd"
    proc = subprocess.Popen([sys.executable, "-m", "QHQGANLib", "--progress", "lines", "simulate-low-dose",
                             str(source), str(out), "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()  # the simulation has started: the output is claimed
        assert line.startswith("QHQGAN-PROGRESS"), line + proc.stderr.read()
        assert (tmp_path / ".out.nrrd.qhqgan-claim").exists()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "terminated" in proc.stderr.read()
    time.sleep(0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]


def test_a_pt_file_is_refused_not_swapped_for_the_safetensors_beside_it(tmp_path, ct_small_path, capsys):
    """Issue #28 (low): ``--model X.pt`` loaded ``X.safetensors`` without a word: the user believed another
    model ran. Now the .pt file is refused by name, before any work, and nothing is written."""
    weights = _copy_of_a_shipped_enhancer(tmp_path)
    pt = weights.with_suffix(".pt")
    pt.write_bytes(b"a pickled checkpoint of another model")
    out = tmp_path / "e.nrrd"
    assert main(["enhance", str(ct_small_path), str(out), "--model", str(pt), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert ".pt" in err and "safetensors" in err and not out.exists()
    assert main(["enhance", str(ct_small_path), str(out), "--model", str(weights), "--quiet"]) == 0  # the real one


def test_control_characters_in_file_names_are_shown_escaped(tmp_path, capsys):
    """Issue #28 (low): a crafted file name's escape sequences and newlines reached the terminal raw (they
    can recolour or rewrite what the user sees, and broke the one-line error)."""
    name = "ct\x1b[31mRED\nfake line.nrrd"
    missing = tmp_path / name
    assert main(["simulate-low-dose", str(missing), str(tmp_path / "out.nrrd")]) == 2
    err = _one_line_error(capsys)  # one line, no raw newline
    assert "\x1b" not in err and "\\x1b[31mRED\\nfake line.nrrd" in err
