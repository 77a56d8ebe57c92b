"""The job queue of the long benchmarks (``Testing/Benchmarks/run_queue.py``): workers in separate
processes never train the same run, a claim left by a process that is gone is taken over (a
session ended mid-run), and the kept budget of a run is read from its model card."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "Testing" / "Benchmarks"))
import run_queue  # noqa: E402

CLAIM = ("import sys; sys.path.insert(0, {bench!r}); import run_queue, pathlib, time; "
         "ok = run_queue.claim(pathlib.Path({run!r})); print(ok, flush=True); time.sleep({hold})")


def _claim_in_process(run: Path, hold: float) -> subprocess.Popen:
    code = CLAIM.format(bench=str(REPO / "Testing" / "Benchmarks"), run=str(run), hold=hold)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_live_claim_excludes_other_processes_and_a_dead_ones_is_taken_over(tmp_path):
    run = tmp_path / "hqgan" / "seed0"
    holder = _claim_in_process(run, hold=30)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert (run / "worker.pid").read_text() == str(holder.pid)
        other = _claim_in_process(run, hold=0)
        assert other.communicate(timeout=60)[0].strip() == "False"  # held by a live process
        assert not run_queue.claim(run)  # nor this one
        assert run_queue.claim(tmp_path / "hqgan" / "seed1")
    finally:
        holder.kill()
        holder.wait()
    assert run_queue.claim(run)  # its process is gone: the stale claim is taken over
    assert (run / "worker.pid").read_text() == str(__import__("os").getpid())
    assert run_queue.claim(run)  # claiming again from the holder itself is fine


def test_trained_steps_reads_the_kept_models_card(tmp_path):
    run = tmp_path / "run"
    assert run_queue.trained_steps(run) == 0
    run.mkdir()
    run_queue.save_json(run / "model.json", {"training": {"steps": 2000}})
    assert run_queue.trained_steps(run) == 2000
    assert json.loads((run / "model.json").read_text())["training"]["steps"] == 2000
    assert not list(run.glob("*.tmp"))  # written atomically: no temporary file left


def test_keep_budget_copies_the_finished_model_once(tmp_path):
    run = tmp_path / "hqgan" / "seed0"
    run_queue.keep_budget(run)  # nothing trained yet: nothing kept
    assert not run.exists()
    run.mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({"training": {"steps": 2000}}))
    (run / "model.safetensors").write_bytes(b"weights at 2000")
    run_queue.keep_budget(run)
    assert (run / "model-2000.safetensors").read_bytes() == b"weights at 2000"
    assert json.loads((run / "model-2000.json").read_text())["training"]["steps"] == 2000
    # the run is extended and its model replaced; keeping again never overwrites the kept copy
    (run / "model.safetensors").write_bytes(b"half-written")
    run_queue.keep_budget(run)
    assert (run / "model-2000.safetensors").read_bytes() == b"weights at 2000"
    assert sorted(p.name for p in run.iterdir()) == ["model-2000.json", "model-2000.safetensors", "model.json",
                                                     "model.safetensors"]


def test_weights_of_finds_each_budget_after_an_extension(tmp_path):
    """``ship`` and the tuning-patient budget check read a budget's weights through ``weights_of``: the
    run's own model while it holds that budget, the copy ``keep_budget`` made once it was extended."""
    run = tmp_path / "wgan-gp" / "seed1"
    run.mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({"training": {"steps": 1000}}))
    (run / "model.safetensors").write_bytes(b"weights at 1000")
    assert run_queue.weights_of(run, 1000).read_bytes() == b"weights at 1000"
    assert not run_queue.weights_of(run, 4000).exists()  # not trained that far yet
    run_queue.keep_budget(run)  # extended to 4,000 updates: the model is replaced
    (run / "model.json").write_text(json.dumps({"training": {"steps": 4000}}))
    (run / "model.safetensors").write_bytes(b"weights at 4000")
    assert run_queue.weights_of(run, 1000).read_bytes() == b"weights at 1000"
    assert run_queue.weights_of(run, 4000).read_bytes() == b"weights at 4000"
