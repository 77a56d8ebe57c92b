"""Nothing overwritten without asking, nothing that blocks, no patient information in outputs (#28).

Each test reproduces one finding of the second bad-input battery, through the CLI where the CLI is
the way in:

1. ``evaluate --json`` / ``evaluate-synth --json`` wrote over any file (the input CT included), and a
   missing folder was found only after the whole run;
2. a training run into a non-empty ``--output-dir`` without ``--resume`` replaced the earlier run's
   checkpoint, config and loss log; two runs into one folder mixed their files;
3. a FIFO as ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd`` input or as ``--model`` blocked for ever;
4. the demo wrote the input's path into ``metrics.json`` and its file name into ``figure.png``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from QHQGANLib.apps.cli import main
from QHQGANLib.core.io import read_volume, write_volume
from QHQGANLib.core.resources import models_dir


@pytest.fixture(scope="module")
def ct_nrrd(tmp_path_factory) -> Path:
    """pydicom's 128x128 CT slice as a NRRD (what a user would pass)."""
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("ct")
    return write_volume(read_volume(get_testdata_file("CT_small.dcm")), folder / "victim.nrrd")


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qhqgan: error:") and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _no_work(monkeypatch):
    """Make any volume read fail loudly: a check that passes the test ran before any work."""
    import QHQGANLib.core.io as io

    def refuse(*args, **kwargs):
        raise AssertionError("the command started its work before checking its outputs")

    monkeypatch.setattr(io, "read_volume", refuse)


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _holder(path: Path) -> subprocess.Popen:
    """Another process that claims ``path`` (as a second QHQGAN run writing it would) until killed."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from QHQGANLib.core.outputs import claim_output
        with claim_output({str(path)!r}):
            print("claimed", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "claimed"
    return holder


# ---------------------------------------------------------------------------
# 1. evaluate --json / evaluate-synth --json
# ---------------------------------------------------------------------------
def _evaluate(ct: Path, report: Path, *extra: str) -> int:
    return main(["evaluate", "--input", str(ct), "--models", "hqgan-enhance", "--doses", "0.25",
                 "--json", str(report), "--quiet", *extra])


@pytest.mark.parametrize("overwrite", [False, True])
def test_evaluate_json_never_replaces_the_input(ct_nrrd, tmp_path, capsys, monkeypatch, overwrite):
    victim = shutil.copy(ct_nrrd, tmp_path / "victim.nrrd")
    before = Path(victim).read_bytes()
    _no_work(monkeypatch)
    assert _evaluate(Path(victim), Path(victim), *(["--overwrite"] if overwrite else [])) == 2
    _one_line_error(capsys, "input")
    assert Path(victim).read_bytes() == before


def test_evaluate_json_never_replaces_a_model_file(ct_nrrd, tmp_path, capsys, monkeypatch):
    for suffix in (".safetensors", ".json"):
        shutil.copy(models_dir() / f"hqgan-enhance{suffix}", tmp_path / f"mine{suffix}")
    card = (tmp_path / "mine.json").read_bytes()
    _no_work(monkeypatch)
    code = main(["evaluate", "--input", str(ct_nrrd), "--models", str(tmp_path / "mine.safetensors"),
                 "--json", str(tmp_path / "mine.json"), "--overwrite", "--quiet"])
    assert code == 2
    _one_line_error(capsys, "input")
    assert (tmp_path / "mine.json").read_bytes() == card


def test_evaluate_json_is_checked_before_any_work(ct_nrrd, tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    # a missing folder: found at once, not after the whole evaluation
    assert _evaluate(ct_nrrd, tmp_path / "no-such-folder" / "rows.json") == 2
    _one_line_error(capsys, "no-such-folder", "does not exist")
    # an existing file without --overwrite
    earlier = tmp_path / "rows.json"
    earlier.write_text('{"earlier": true}')
    assert _evaluate(ct_nrrd, earlier) == 2
    _one_line_error(capsys, "rows.json", "--overwrite")
    assert json.loads(earlier.read_text()) == {"earlier": True}
    # a folder given as the report
    assert _evaluate(ct_nrrd, tmp_path) == 2
    _one_line_error(capsys, "folder")


def test_evaluate_json_is_claimed_and_written_atomically(ct_nrrd, tmp_path, capsys):
    report = tmp_path / "rows.json"
    holder = _holder(report)
    try:
        assert _evaluate(ct_nrrd, report) == 2
        _one_line_error(capsys, "another QHQGAN run")
        assert not report.exists()
    finally:
        holder.kill()
        holder.wait()
    report.write_text("earlier")
    assert _evaluate(ct_nrrd, report, "--overwrite") == 0  # replaced when asked
    rows = json.loads(report.read_text())
    assert {r["method"] for r in rows} == {"low-dose input", "hqgan-enhance"}
    assert _leftovers(tmp_path) == []  # no temporary folder, no claim file


@pytest.mark.parametrize("target", ["samples", "real", "train"])
def test_evaluate_synth_json_never_replaces_an_input(ct_nrrd, tmp_path, capsys, monkeypatch, target):
    files = {name: Path(shutil.copy(ct_nrrd, tmp_path / f"{name}.nrrd")) for name in ("samples", "real", "train")}
    before = {name: p.read_bytes() for name, p in files.items()}
    _no_work(monkeypatch)
    code = main(["evaluate-synth", str(files["samples"]), "--real", str(files["real"]), "--train",
                 str(files["train"]), "--json", str(files[target]), "--overwrite", "--no-c2st", "--quiet"])
    assert code == 2
    _one_line_error(capsys, "input")
    assert {name: p.read_bytes() for name, p in files.items()} == before


def test_evaluate_synth_json_checked_before_work(ct_nrrd, tmp_path, capsys, monkeypatch):
    _no_work(monkeypatch)
    code = main(["evaluate-synth", str(ct_nrrd), "--real", str(ct_nrrd), "--json",
                 str(tmp_path / "missing" / "r.json"), "--quiet"])
    assert code == 2
    _one_line_error(capsys, "does not exist")
    earlier = tmp_path / "r.json"
    earlier.write_text("earlier")
    code = main(["evaluate-synth", str(ct_nrrd), "--real", str(ct_nrrd), "--json", str(earlier), "--quiet"])
    assert code == 2
    _one_line_error(capsys, "--overwrite")
    assert earlier.read_text() == "earlier"


# ---------------------------------------------------------------------------
# 2. training into a non-empty output folder
# ---------------------------------------------------------------------------
def _train_enhance(ct: Path, out: Path, steps: int = 3, *extra: str) -> int:
    return main(["train-enhance", "--input", str(ct), "--arch", "redcnn", "--redcnn-width", "4", "--loss", "mse",
                 "--steps", str(steps), "--batch-size", "2", "--patch-size", "32", "--pool-size", "1",
                 "--checkpoint-every", "1", "--output-dir", str(out), "--device", "cpu", "--quiet", *extra])


def _losses(folder: Path) -> list:
    return [json.loads(line)["step"] for line in (folder / "losses.jsonl").read_text().splitlines()]


def test_train_enhance_refuses_a_non_empty_output_dir(ct_nrrd, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train_enhance(ct_nrrd, run) == 0
    assert _losses(run) == [1, 2, 3]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert _train_enhance(ct_nrrd, run, 1) == 2  # the case: 3 lines -> 1
    _one_line_error(capsys, str(run), "--resume")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # --resume continues the run; --overwrite replaces it, without the earlier run's files
    assert _train_enhance(ct_nrrd, run, 4, "--resume") == 0
    assert _losses(run) == [1, 2, 3, 4]
    (run / "notes.txt").write_text("mine")
    assert _train_enhance(ct_nrrd, run, 2, "--overwrite") == 0
    assert _losses(run) == [1, 2]
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert _leftovers(tmp_path) == []


def test_train_synth_refuses_a_non_empty_output_dir(ct_nrrd, tmp_path, capsys):
    run = tmp_path / "run"

    def train(model: str, *extra: str) -> int:
        return main(["train-synth", "--input", str(ct_nrrd), "--method", "dcgan", "--steps", "2", "--batch-size", "4",
                     "--width", "8", "--output-dir", str(run), "--save-model", str(tmp_path / model),
                     "--device", "cpu", "--quiet", *extra])

    assert train("a") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert train("b") == 2
    _one_line_error(capsys, str(run), "--resume")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert not (tmp_path / "b.safetensors").exists()


def test_a_second_concurrent_training_run_into_one_folder_is_refused(ct_nrrd, tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        assert _train_enhance(ct_nrrd, run) == 2
        _one_line_error(capsys, "another QHQGAN run")
        assert not run.exists() or not any(run.iterdir())
        from QHQGANLib.training.loop import run_loop

        with pytest.raises(FileExistsError, match="another QHQGAN run"):
            run_loop(_Toy(), 2, output_dir=str(run))
    finally:
        holder.kill()
        holder.wait()


class _Toy:
    """The smallest TrainStep: one number, no torch work."""

    def __init__(self):
        self.value = 0.0

    def train_step(self, step):
        self.value += 1.0
        return {"loss": self.value}

    def state_dict(self):
        import torch

        return {"value": torch.tensor(self.value)}

    def load_state_dict(self, state):
        self.value = float(state["value"])


def test_library_training_refuses_a_non_empty_output_dir(tmp_path):
    from QHQGANLib.training.enhancement import TrainConfig, train_enhancer
    from QHQGANLib.training.loop import run_loop
    from QHQGANLib.training.synthesis import SynthConfig, train_synth

    run = tmp_path / "run"
    run_loop(_Toy(), 3, output_dir=str(run), checkpoint_every=1)
    assert _losses(run) == [1, 2, 3]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError, match="not empty.*resume"):
        run_loop(_Toy(), 1, output_dir=str(run))
    # the trainers refuse before any work (no volumes are even needed to get there)
    with pytest.raises(ValueError, match="not empty.*resume"):
        train_enhancer(TrainConfig(output_dir=str(run), device="cpu"), [])
    with pytest.raises(ValueError, match="not empty.*resume"):
        train_synth(SynthConfig(output_dir=str(run), device="cpu"), slices=None)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # overwrite replaces the earlier run, and is not a key compared on resume
    run_loop(_Toy(), 2, output_dir=str(run), overwrite=True)
    assert _losses(run) == [1, 2]
    assert "overwrite" not in __import__("QHQGANLib.training.enhancement", fromlist=["RESUME_KEYS"]).RESUME_KEYS
    assert "overwrite" not in __import__("QHQGANLib.training.synthesis", fromlist=["RESUME_KEYS"]).RESUME_KEYS
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# 3. FIFOs are refused, never opened
# ---------------------------------------------------------------------------
def _main_with_timeout(args, timeout: float = 120.0) -> int:
    """``main(args)`` in a thread: a command that blocks fails the test instead of hanging it."""
    result = {}

    def target():
        try:
            result["code"] = main(args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"qhqgan {' '.join(map(str, args))} blocked for {timeout:.0f} s"
    if "error" in result:
        raise result["error"]
    return result["code"]


@pytest.mark.parametrize("name", ["pipe.nrrd", "pipe.nhdr", "pipe.mha", "pipe.mhd", "pipe.nii", "pipe.dcm"])
def test_a_fifo_input_is_refused_without_blocking(tmp_path, capsys, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    out = tmp_path / "out.nrrd"
    assert _main_with_timeout(["simulate-low-dose", str(fifo), str(out), "--quiet"]) == 2
    _one_line_error(capsys, "named pipe")
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "evaluate-synth", "train-enhance"])
def test_a_fifo_input_of_other_commands_is_refused(tmp_path, capsys, ct_nrrd, command):
    fifo = tmp_path / "pipe.nrrd"
    os.mkfifo(fifo)
    args = {"evaluate": ["evaluate", "--input", str(fifo), "--json", str(tmp_path / "r.json")],
            "evaluate-synth": ["evaluate-synth", str(ct_nrrd), "--real", str(fifo), "--json", str(tmp_path / "r.json")],
            "train-enhance": ["train-enhance", "--input", str(fifo), "--steps", "1", "--output-dir",
                              str(tmp_path / "run")]}[command]
    assert _main_with_timeout(args + ["--quiet"]) == 2
    _one_line_error(capsys, "named pipe")
    assert not (tmp_path / "r.json").exists()


def test_a_fifo_as_the_data_file_of_a_detached_header_is_refused(tmp_path, capsys, ct_nrrd):
    header = write_volume(read_volume(ct_nrrd), tmp_path / "v.nhdr")
    data = next(p for p in tmp_path.iterdir() if p.name.startswith("v.raw"))
    data.unlink()
    os.mkfifo(data)
    out = tmp_path / "out.nrrd"
    assert _main_with_timeout(["simulate-low-dose", str(header), str(out), "--quiet"]) == 2
    _one_line_error(capsys, "named pipe")
    assert not out.exists()


@pytest.mark.parametrize("fifo_name", ["m.safetensors", "m.json"])
def test_a_fifo_as_model_is_refused_without_blocking(tmp_path, ct_nrrd, fifo_name):
    """In a subprocess: the safetensors loader blocked on the FIFO while holding the GIL, which froze
    the whole process (a thread could not time out; Ctrl-C and SIGTERM went unanswered)."""
    shutil.copy(models_dir() / "hqgan-enhance.safetensors", tmp_path / "m.safetensors")
    (tmp_path / fifo_name).unlink(missing_ok=True)
    os.mkfifo(tmp_path / fifo_name)
    out = tmp_path / "out.nrrd"
    code = textwrap.dedent(f"""
        import sys
        from QHQGANLib.apps.cli import main
        code = main(["enhance", {str(ct_nrrd)!r}, {str(out)!r}, "--model", {str(tmp_path / fifo_name)!r}, "--quiet"])
        from QHQGANLib.core.file_checks import VolumeReadError
        from QHQGANLib.nn.weights import load_model
        try:
            load_model({str(tmp_path / "m.safetensors")!r})  # the library's loader checks too
        except VolumeReadError as exc:
            print("library:", exc)
        sys.exit(code)
    """)
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"qhqgan enhance --model <FIFO {fifo_name}> blocked for 120 s")
    assert run.returncode == 2, run.stderr
    err = run.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("qhqgan: error:") and "named pipe" in err, err
    assert "library:" in run.stdout and "named pipe" in run.stdout
    assert not out.exists()


# ---------------------------------------------------------------------------
# 4. the demo names no patient
# ---------------------------------------------------------------------------
def test_demo_writes_no_path_or_file_name(tmp_path, monkeypatch):
    from pydicom.data import get_testdata_file

    import QHQGANLib.core.figures as figures

    patient = tmp_path / "SMITH_JANE_DOB19700101"
    patient.mkdir()
    source = Path(shutil.copy(get_testdata_file("CT_small.dcm"), patient / "MRN778899.dcm"))
    drawn = []
    real = figures.save_panels_png

    def spy(panels, path, *args, **kwargs):
        drawn.append(repr(([title for title, _ in panels], args, kwargs.get("footer"), kwargs.get("windows"))))
        return real(panels, path, *args, **kwargs)

    monkeypatch.setattr(figures, "save_panels_png", spy)
    folder = tmp_path / "demo"
    assert main(["demo", "--input", str(source), "--output-dir", str(folder), "--quiet"]) == 0
    assert len(drawn) == 1
    secrets = ("SMITH", "JANE", "19700101", "MRN778899", "MRN778899.dcm", str(tmp_path))
    texts = {"metrics.json": (folder / "metrics.json").read_text(), "figure text": drawn[0],
             "figure.png": (folder / "figure.png").read_bytes().decode("latin-1")}
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}"
    assert json.loads(texts["metrics.json"])["input"]  # a neutral label instead
