"""The background runner of the Slicer panel: the real ``qhqgan`` CLI in a child process."""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib import Volume, read_volume
from QHQGANLib.apps.background import (BackgroundTask, TaskFailed, TaskRequest, TemporaryWorkspace, build_command,
                                       child_environment, default_output_name, ensure_requirements,
                                       missing_requirements, move_volume_into, process_node, read_requirements,
                                       run_task, slicer_constraints, task_unavailable_reason)
from QHQGANLib.core.kinds import MODEL_TASKS, TASKS, default_model, models_for_task
from QHQGANLib.core.progress import OperationCancelled

PY = sys.executable


def phantom_volume(n_slices: int = 40, size: int = 256) -> Volume:
    """A water disc in air, ``n_slices`` slices: slow enough (~0.25 s/slice) to cancel midway."""
    _, y, x = np.mgrid[0:n_slices, 0:size, 0:size]
    c = (size - 1) / 2
    array = np.where((y - c) ** 2 + (x - c) ** 2 < (0.4 * size) ** 2, 40.0, -1000.0).astype(np.float32)
    return Volume(array, (0.7, 0.7, 2.5), (-90.0, -90.0, 0.0), np.eye(3))


# ---------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------
def test_build_command_for_each_task():
    head = [PY, "-m", "QHQGANLib"]
    argv = build_command(TaskRequest("simulate-low-dose", dose=0.1, seed=3), "in.nrrd", "out.nrrd", PY)
    assert argv == head + ["simulate-low-dose", "in.nrrd", "out.nrrd", "--dose", "0.1", "--seed", "3",
                           "--output-type", "auto", "--progress", "lines"]

    request = TaskRequest("enhance", model="hqgan-ldct", quantum_backend="pennylane:lightning.qubit",
                          device="cpu", tile_size=128, overlap=0.5, tile_batch=16)
    assert build_command(request, "in.nrrd", "out.nrrd", PY) == head + [
        "enhance", "in.nrrd", "out.nrrd", "--model", "hqgan-ldct", "--device", "cpu",
        "--quantum-backend", "pennylane:lightning.qubit", "--tile-size", "128", "--overlap", "0.5",
        "--tile-batch", "16", "--strength", "1.0", "--adapt-steps", "0", "--adapt-time-limit", "600.0",
        "--output-type", "auto", "--progress", "lines"]
    argv = build_command(TaskRequest("enhance", adapt_steps=300), "in.nrrd", "out.nrrd", PY)  # "Adapt to this scan"
    assert argv[argv.index("--adapt-steps") + 1] == "300" and argv[argv.index("--adapt-time-limit") + 1] == "600.0"

    argv = build_command(TaskRequest("super-resolve", device="cuda"), "in.nrrd", "out.nrrd", PY)
    assert argv == head + ["super-resolve", "in.nrrd", "out.nrrd", "--device", "cuda", "--quantum-backend",
                           "torch", "--axis", "in-plane", "--scale", "2", "--fine-tune-steps", "0", "--tile-size",
                           "512", "--overlap", "0.0", "--tile-batch", "4", "--output-type", "auto", "--progress",
                           "lines"]
    argv = build_command(TaskRequest("super-resolve", axis="z", scale=3), "in.nrrd", "out.nrrd", PY)
    assert argv[argv.index("--axis") + 1] == "z" and argv[argv.index("--scale") + 1] == "3"

    argv = build_command(TaskRequest("synthesize", model="/w/gen.safetensors", n_samples=4, seed=7),
                         None, "out.nrrd", PY)
    assert argv == head + ["synthesize", "out.nrrd", "--model", "/w/gen.safetensors", "--device", "auto",
                           "--quantum-backend", "torch", "--n", "4", "--seed", "7", "--progress", "lines"]


def test_requests_are_checked():
    for bad, words in ((dict(task="denoise"), "unknown task 'denoise'"), (dict(device="tpu"), "device must be"),
                       (dict(quantum_backend="qiskit"), "quantum_backend"),
                       (dict(quantum_backend="pennylane:"), "quantum_backend"), (dict(dose=0.0), "dose must be in"),
                       (dict(overlap=1.0), "overlap must be in"), (dict(n_samples=0), "n_samples must be in"),
                       (dict(task="super-resolve", scale=4), "scale must be 2 for in-plane"), (dict(tile_size=8), "tile_size must be in"),
                       (dict(tile_batch=0), "tile_batch must be in"), (dict(seed=-1), "seed must be in"),
                       (dict(tile_size=256.0), "tile_size must be an integer")):
        with pytest.raises(ValueError, match=re.escape(words)):
            TaskRequest(**bad)
    assert TaskRequest(dose=1).dose == 1.0 and isinstance(TaskRequest(dose=1).dose, float)
    with pytest.raises(ValueError, match="needs an input"):
        build_command(TaskRequest("enhance"), None, "out.nrrd", PY)
    assert TaskRequest("simulate-low-dose", dose=0.25).output_suffix() == "dose25pct"
    assert TaskRequest("synthesize").attributes()["synthetic"] == "true"
    assert default_output_name(TaskRequest("super-resolve")) == "QHQGAN_SRx2"


def test_child_environment_finds_this_qhqganlib():
    env = child_environment({"PYTHONPATH": "/elsewhere"})
    first, second = env["PYTHONPATH"].split(":")[:2]
    assert (Path(first) / "QHQGANLib" / "apps" / "background.py").is_file()
    assert second == "/elsewhere" and env["PYTHONUNBUFFERED"] == "1"


def test_every_task_is_available_with_the_shipped_models():
    from QHQGANLib.apps.request import NO_LABEL_MODEL
    from QHQGANLib.core.kinds import LABEL_SYNTH_TASK

    for task in TASKS:
        if task == LABEL_SYNTH_TASK and not models_for_task(task):  # none ships yet: the panel says how to get one
            assert task_unavailable_reason(task) == NO_LABEL_MODEL
            continue
        assert task_unavailable_reason(task) is None, task
    assert task_unavailable_reason("denoise") == (
        "unknown task 'denoise'; expected one of enhance, super-resolve, synthesize, simulate-low-dose, "
        "insert-lesion, synthesize-from-labels")


def test_a_task_without_an_installed_model_says_so(tmp_path, monkeypatch):
    from QHQGANLib.apps.request import NO_LABEL_MODEL
    from QHQGANLib.core.kinds import LABEL_SYNTH_TASK

    monkeypatch.setenv("QHQGAN_MODELS_DIR", str(tmp_path))
    for task in MODEL_TASKS:
        expected = (NO_LABEL_MODEL if task == LABEL_SYNTH_TASK
                    else f"no trained model for '{task}' is installed (in {tmp_path})")
        assert task_unavailable_reason(task) == expected
    for task in ("simulate-low-dose", "insert-lesion"):  # physics only: no model needed
        assert task_unavailable_reason(task) is None


def test_the_panel_lists_each_tasks_default_model_first(tmp_path, monkeypatch):
    import json

    for name, task in (("ablation-synth", "synthesize"), ("dcgan-synth", "synthesize"),
                       ("hqgan-synth", "synthesize"), ("mlp-control-enhance", "enhance"), ("hqgan-enhance", "enhance"),
                       ("hqgan-film-enhance", "enhance")):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "task": task}))
    monkeypatch.setenv("QHQGAN_MODELS_DIR", str(tmp_path))
    assert [c["name"] for c in models_for_task("synthesize")] == ["hqgan-synth", "ablation-synth", "dcgan-synth"]
    assert [c["name"] for c in models_for_task("enhance")] == [default_model("enhance"), "hqgan-enhance",
                                                               "mlp-control-enhance"]
    assert models_for_task("super-resolve") == []


# ---------------------------------------------------------------------------
# the real CLI as a child process
# ---------------------------------------------------------------------------
def test_run_task_simulates_low_dose_on_ct_small(ct_small_path, tmp_path):
    out = tmp_path / "low.nrrd"
    argv = build_command(TaskRequest("simulate-low-dose", dose=0.25, seed=0), ct_small_path, out, PY)
    seen = []
    task = run_task(argv, progress=lambda f, m: seen.append((f, m)), poll_interval=0.02)
    fractions = [f for f, _ in seen]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert any("slice" in m for _, m in seen)
    assert any("wrote" in line for line in task.stdout_lines)
    normal, low = read_volume(ct_small_path), read_volume(out, force=True)
    assert low.same_geometry(normal, tol=1e-4)
    noise = np.std(low.array - normal.array)
    assert 1.0 < noise < 200.0, f"added noise {noise:.1f} HU is implausible for 25 % dose"


def test_cancel_stops_the_child_and_leaves_nothing(tmp_path):
    with TemporaryWorkspace(phantom_volume()) as ws:
        folder = ws.folder
        argv = build_command(TaskRequest("simulate-low-dose"), ws.input_path, ws.output_path, PY)
        stop = threading.Event()
        seen, stopped_at = [], {}

        def progress(fraction, message):
            seen.append(fraction)
            if "slice" in message and not stop.is_set():
                stop.set()
                stopped_at["t"] = time.monotonic()

        with pytest.raises(OperationCancelled):
            run_task(argv, progress=progress, cancel=stop, poll_interval=0.02, output_path=ws.output_path)
        assert time.monotonic() - stopped_at["t"] < 2.0, "the child did not stop within 2 s"
        assert max(seen) < 1.0
        assert not ws.output_path.exists()
    assert not folder.exists(), "the temporary folder was left behind"


def test_failing_child_reports_its_one_line_error(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a CT")
    argv = build_command(TaskRequest("simulate-low-dose"), bad, tmp_path / "out.nrrd", PY)
    with pytest.raises(TaskFailed) as info:
        run_task(argv)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "\n" not in message and message.startswith("qhqgan: error:") and "notes.txt" in message
    assert "exit status 2" in message and not (tmp_path / "out.nrrd").exists()


def test_build_command_matches_the_cli_parser():
    """Every flag build_command emits is accepted by the qhqgan parser (values: Testing/test_options.py)."""
    from QHQGANLib.apps.cli import build_parser

    parser = build_parser()
    requests = [TaskRequest("simulate-low-dose"), TaskRequest("enhance", model="m", device="cpu"),
                TaskRequest("super-resolve", quantum_backend="pennylane:default.qubit"), TaskRequest("synthesize")]
    for request in requests:
        argv = build_command(request, "in.nrrd", "out.nrrd", PY)[3:]
        args = parser.parse_args(argv)
        assert args.command == request.task and args.progress == "lines" and args.output == "out.nrrd"


def test_missing_model_fails_in_one_line(ct_small_path, tmp_path):
    """Without an installed model the child fails with one clear line naming it, not a traceback."""
    empty = tmp_path / "no-models"
    empty.mkdir()
    env = {**os.environ, "QHQGAN_MODELS_DIR": str(empty)}
    for task in ("enhance", "synthesize"):
        out = tmp_path / "out_synthetic.nrrd"
        argv = build_command(TaskRequest(task), ct_small_path, out, PY)
        with pytest.raises(TaskFailed) as info:
            run_task(argv, env=env, output_path=out)
        message = str(info.value)
        assert "\n" not in message and message.startswith("qhqgan: error:")
        assert f"no model named '{default_model(task)}'" in message and "exit status 2" in message
        assert not out.exists()


def test_background_task_polls_without_blocking(ct_small_path, tmp_path):
    argv = build_command(TaskRequest("simulate-low-dose"), ct_small_path, tmp_path / "o.nrrd", PY)
    task = BackgroundTask(argv)
    updates = []
    t0 = time.monotonic()
    while task.running and time.monotonic() - t0 < 60:
        updates += task.poll()  # what the panel's QTimer does
        time.sleep(0.02)
    assert task.finish() == 0
    updates += task.poll()
    assert task.fraction == 1.0 and (tmp_path / "o.nrrd").is_file()


def test_workspace_is_removed_on_error():
    with pytest.raises(KeyError):
        with TemporaryWorkspace(phantom_volume(2, 32)) as ws:
            folder = ws.folder
            assert ws.input_path.is_file()
            raise KeyError("boom")
    assert not folder.exists()


# ---------------------------------------------------------------------------
# MRML nodes (the slicer-core wheels)
# ---------------------------------------------------------------------------
def test_process_node_adds_a_new_node_and_keeps_the_input(ct_small_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML as wheels) is a test dependency")
    import slicer.util

    from QHQGANLib.apps import scene as bridge

    mrml = slicer.vtkMRMLScene()
    slicer.mrmlScene = mrml
    try:
        node = bridge.node_from_volume(read_volume(ct_small_path), mrml, "CT_small")
        before = slicer.util.arrayFromVolume(node).copy()
        n_nodes = mrml.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        seen = []
        out = process_node(node, TaskRequest("simulate-low-dose", dose=0.5, seed=1), progress=lambda f, m: seen.append(f))
        assert out is not node and out.GetName() == "CT_small_dose50pct"
        assert mrml.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_nodes + 1
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        assert out.GetAttribute("QHQGAN.task") == "simulate-low-dose"
        assert out.GetAttribute("QHQGAN.dose_fraction") == "0.5"
        assert out.GetAttribute("QHQGAN.source_node") == node.GetID()
        np.testing.assert_allclose(out.GetSpacing(), node.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(out.GetOrigin(), node.GetOrigin(), atol=1e-4)
        assert seen[-1] == 1.0
        # cancelled: the scene is unchanged
        stop = threading.Event()
        stop.set()
        with pytest.raises(OperationCancelled):
            process_node(node, TaskRequest("simulate-low-dose"), cancel=stop)
        assert mrml.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_nodes + 1
        # the output volume the user picked receives the result
        target = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "picked")
        kept = move_volume_into(out, target)
        assert kept is target and out.GetScene() is None
        assert target.GetAttribute("QHQGAN.task") == "simulate-low-dose"
        np.testing.assert_allclose(target.GetSpacing(), node.GetSpacing(), atol=1e-5)
        assert slicer.util.arrayFromVolume(target).shape == before.shape
    finally:
        mrml.Clear(True)


def test_requirements_for_slicer(tmp_path):
    """Resources/requirements.txt: ranges only, no torch, nothing Slicer bundles."""
    path = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
    lines = read_requirements(path)
    names = [line.split(">=")[0].lower() for line in lines]
    assert lines and all(">=" in line and "==" not in line for line in lines)
    assert not {"torch", "simpleitk", "vtk", "numpy"} & set(names)
    assert missing_requirements(path) == [], "the test environment should satisfy the Slicer requirements"
    (tmp_path / "r.txt").write_text("# c\npydicom>=1.0\nno-such-package-qhqgan>=1\npytest>=999\n")
    assert missing_requirements(tmp_path / "r.txt") == ["no-such-package-qhqgan>=1", "pytest>=999"]
    text = Path(slicer_constraints(["numpy", "no-such-package-qhqgan"], tmp_path / "c.txt")).read_text()
    assert text.startswith("numpy==") and "no-such" not in text


def test_requirements_cover_the_runtime_dependencies():
    """Every runtime dependency of pyproject.toml is in Resources/requirements.txt, except Slicer's own."""
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    name = lambda req: re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()  # noqa: E731
    wanted = {name(r) for r in project["dependencies"]} - {"torch", "simpleitk", "vtk", "numpy"}
    listed = {name(r) for r in read_requirements(repo / "Resources" / "requirements.txt")}
    assert wanted <= listed, f"add to Resources/requirements.txt (with >= ranges): {sorted(wanted - listed)}"


def test_ensure_requirements_asks_then_installs(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pydicom>=1.0\nno-such-package-qhqgan>=1\n")
    installed, asked = [], []
    # declined: nothing installed
    assert ensure_requirements(req, lambda text: asked.append(text) or False, installed.append) is False
    assert installed == [] and "no-such-package-qhqgan" in asked[0]
    # accepted: only the missing one, with Slicer's own packages held at their versions
    assert ensure_requirements(req, lambda text: True, installed.append, constraints_path=tmp_path / "c.txt")
    assert installed == [["-c", str(tmp_path / "c.txt"), "no-such-package-qhqgan>=1"]]
    assert "numpy==" in (tmp_path / "c.txt").read_text()
    # nothing missing: no question
    req.write_text("pydicom>=1.0\n")
    assert ensure_requirements(req, lambda text: pytest.fail("asked for nothing"), installed.append)

    class FakePydeps:  # Slicer >= 5.11
        calls = []

        def load_requirements(self, path):
            return read_requirements(path)

        def pip_check(self, reqs):
            return False

        def pip_ensure(self, reqs, skip_packages, requester):
            self.calls.append((reqs, skip_packages, requester))

    pydeps = FakePydeps()
    assert ensure_requirements(req, lambda text: True, installed.append, pydeps, keep=["SimpleITK", "numpy"])
    assert pydeps.calls == []  # pydicom imports: nothing is installed, whatever pip_check says (#29 item 2)
