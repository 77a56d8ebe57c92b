"""Blinded reader studies: creation and blinding, seeded order, reading sessions, the analysis and the CLI."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib.core.io import read_volume, write_volume
from QHQGANLib.core.volume import Volume
from QHQGANLib.metrics.reader_stats import analyze_readings, reader_agreement
from QHQGANLib.tasks.reader_study import create_study, load_key, load_manifest, produce_methods
from QHQGANLib.tasks.reading_session import LockedAnswerError, ReadingSession, load_readings, read_responses

REPO = Path(__file__).resolve().parents[1]
METHODS = ("low-dose", "hqgan-enhance", "redcnn-enhance")
LIKERT = {"acceptability": 3, "noise": 3, "sharpness": 3, "artefacts": "no"}


def _volume(seed: int, noise: float, shape=(2, 12, 12), origin=(10.0, -5.0, 3.0)) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.normal(40.0, noise, shape).astype(np.float32)
    array[:, :, :3] = -1000.0  # air: CT in HU
    return Volume(array, spacing=(0.7, 0.7, 2.5), origin=origin)


def _cases_on_disk(tmp_path: Path, n_cases: int = 3, methods=METHODS) -> dict:
    """Files named after their method and case, with a history note naming the model (as enhance writes)."""
    src = tmp_path / "inputs"
    src.mkdir()
    cases = {}
    for c in range(n_cases):
        cases[f"patient-{c}"] = {}
        for k, method in enumerate(methods):
            v = _volume(100 * c + k, 5.0 + 10 * k)
            v.metadata["history"] = [f"enhanced by {method}"]
            path = src / f"patient-{c}_{method}.nrrd"
            write_volume(v, path)
            cases[f"patient-{c}"][method] = str(path)
    return cases


def _pixel_type(path: Path) -> str:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return sitk.GetPixelIDValueAsString(reader.GetPixelID())


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# ---------------------------------------------------------------------------
# creation and blinding
# ---------------------------------------------------------------------------
def test_nothing_in_the_study_folder_names_a_method_or_a_case(tmp_path):
    cases = _cases_on_disk(tmp_path)
    inputs = {p: Path(p).read_bytes() for ms in cases.values() for p in ms.values()}
    study = create_study(cases, tmp_path / "study", seed=5, key_path=tmp_path / "key.json")
    assert {p.name for p in study.iterdir()} == {"study.json", "images", "responses"}  # the key lives elsewhere
    forbidden = list(METHODS) + ["hqgan", "redcnn", "enhance", "low-dose", "patient", "history", str(tmp_path)]
    images = sorted((study / "images").iterdir())
    assert [p.name for p in images] == [f"image_{k:03d}.nrrd" for k in range(1, 10)]
    for path in [study / "study.json"] + images:
        data = path.read_bytes()
        text = (data.split(b"\n\n", 1)[0] if path.suffix == ".nrrd" else data).decode("latin-1").lower()
        for word in forbidden:
            assert word.lower() not in text, f"{path.name} reveals {word!r}"
    import SimpleITK as sitk

    for path in images:  # the NRRD header holds geometry only
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        keys = {k for k in reader.GetMetaDataKeys() if not k.startswith(("NRRD_space", "NRRD_kinds", "ITK_"))}
        assert keys <= {"NRRD_type", "NRRD_dimension", "NRRD_sizes", "NRRD_endian", "NRRD_encoding", "NRRD_space"}, keys
    # blinding of the files themselves: one size and one modification time for all
    assert len({p.stat().st_size for p in images}) == 1
    assert len({p.stat().st_mtime for p in images}) == 1
    # labels are neutral; the key maps every image back to its exact source
    manifest = load_manifest(study)
    for item in manifest["items"]:
        assert item["label"].startswith("Case 0") and " / image " in item["label"]
    key = load_key(study, tmp_path / "key.json")
    for image, origin in key["images"].items():
        source = read_volume(cases[origin["case"]][origin["method"]])
        written = read_volume(study / image)
        expected = np.clip(np.rint(source.array), -1024, 3071)  # every arm stored alike: whole HU, one range
        assert np.array_equal(written.array, expected) and written.same_geometry(source)
        assert _pixel_type(study / image) == "16-bit signed integer"
    assert {p: Path(p).read_bytes() for p in inputs} == inputs  # inputs untouched


def test_no_value_pattern_or_padding_tells_the_arms_apart(tmp_path, ct_small_path):
    """Issue #29 item 3: a scanner's image holds whole HU and its padding (-3024) outside the field of view;
    a network's output holds decimals and no padding. In the study every arm holds whole HU in one range, in
    one type, so hovering the probe over a voxel or the corner of the image says nothing about the arm."""
    from QHQGANLib.tasks.enhance import blend

    ct = read_volume(ct_small_path)
    scanner = ct.array.copy()
    scanner[:, :20, :20] = -3024.0  # the padding a scanner writes outside its reconstruction circle
    processed = blend(scanner, scanner + np.float32(0.37), 1.0)  # decimals, padding clipped as networks do
    cases = {"case": {"low-dose": ct.with_array(scanner), "hqgan": ct.with_array(processed)}}
    study = create_study(cases, tmp_path / "study", seed=1, key_path=tmp_path / "key.json")
    images = sorted((study / "images").iterdir())
    arrays = [read_volume(p).array for p in images]
    assert len(arrays) == 2 and {_pixel_type(p) for p in images} == {"16-bit signed integer"}  # one type for all
    for a in arrays:
        assert np.array_equal(a, np.rint(a)) and a.min() >= -1024 and a.max() <= 3071
        assert a[0, 0, 0] == -1024  # the padded corner reads the same in both arms
    assert np.abs(arrays[0].astype(int) - arrays[1].astype(int)).max() <= 1  # 0.37 HU apart, rounded


def test_the_same_seed_gives_the_same_study(tmp_path):
    vols = {f"c{c}": {m: _volume(c * 10 + k, 5.0) for k, m in enumerate(METHODS)} for c in range(6)}
    shuffled = {c: dict(reversed(list(ms.items()))) for c, ms in reversed(list(vols.items()))}

    def plan(name, cases, seed):
        study = create_study(cases, tmp_path / name, seed=seed)
        key = load_key(study)  # beside the study, never in it
        return [(it["label"], it["images"]) for it in load_manifest(study)["items"]], key["images"], key["items"]

    first = plan("a", vols, 11)
    assert plan("b", shuffled, 11) == first  # same seed, inputs in another order: the same study
    other = plan("c", vols, 12)
    assert other[0] != first[0] and other[1] != first[1]
    labels = [label for label, _ in first[0]]
    cases = [label.split(" / ")[0] for label in labels]
    assert all(a != b for a, b in zip(cases, cases[1:])), "two images of one case in a row"


def test_pairs_are_balanced_and_sides_randomized(tmp_path):
    vols = {f"c{c}": {m: _volume(c * 10 + k, 5.0) for k, m in enumerate(METHODS)} for c in range(8)}
    study = create_study(vols, tmp_path / "pairs", mode="pairs", seed=1)
    key = load_key(study)  # beside the study, never in it
    manifest = load_manifest(study)
    assert manifest["mode"] == "pairs" and len(manifest["items"]) == 8 * 3
    assert [q["key"] for q in manifest["questions"]] == ["preference", "comment"]
    sides = [tuple(key["items"][it["id"]]["methods"]) for it in manifest["items"]]
    assert {frozenset(s) for s in sides} == {frozenset(p) for p in [METHODS[:2], METHODS[1:], METHODS[::2]]}
    assert sum(s[0] == "low-dose" for s in sides if "low-dose" in s) not in (0, 16)  # low-dose on both sides
    assert all(len(it["images"]) == 2 and " vs image " in it["label"] for it in manifest["items"])
    ref = create_study(vols, tmp_path / "ref", mode="pairs", pairs="reference", reference="low-dose", seed=1)
    assert len(load_manifest(ref)["items"]) == 8 * 2


def test_refusals(tmp_path):
    vols = {"c": {"a": _volume(0, 5.0), "b": _volume(1, 5.0)}}
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        create_study(vols, busy)
    assert (busy / "x.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="another grid"):
        create_study({"c": {"a": _volume(0, 5.0), "b": _volume(1, 5.0, origin=(0, 0, 0))}}, tmp_path / "grid")
    assert not (tmp_path / "grid").exists()  # nothing half-written
    with pytest.raises(ValueError, match="names the method"):
        create_study(vols, tmp_path / "t", title="a versus b")
    with pytest.raises(ValueError, match="pairs need at least 2"):
        create_study({"c": {"a": _volume(0, 5.0)}}, tmp_path / "p", mode="pairs")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert create_study(vols, empty) == empty  # an empty folder is used


# ---------------------------------------------------------------------------
# reading sessions
# ---------------------------------------------------------------------------
@pytest.fixture
def study(tmp_path):
    vols = {f"pat_{c}": {m: _volume(c * 10 + k, 5.0) for k, m in enumerate(METHODS[:2])} for c in range(4)}
    return create_study(vols, tmp_path / "study", seed=3)


def test_reading_order_pause_resume_and_time(study):
    clock = FakeClock()
    s = ReadingSession(study, "reader-1", clock=clock)
    order = list(s.order)
    assert sorted(order) == sorted(it["id"] for it in load_manifest(study)["items"])
    first = s.current()
    assert first.position == 1 and first.total == 8 and first.images[0].is_file()
    clock.now += 12.0
    s.answer(first.id, dict(LIKERT, comment="fine,\n\"quoted\""))
    second = s.current()
    clock.now += 5.0
    assert s.pause() == pytest.approx(5.0)
    clock.now += 3600.0  # a coffee break is not reading time
    s.close()
    s = ReadingSession(study, "reader-1", clock=clock)  # resume
    assert s.order == order and s.current().id == second.id and s.progress() == (1, 8)
    clock.now += 7.0
    row = s.answer(second.id, LIKERT)
    assert float(row["seconds"]) == pytest.approx(5.0 + 7.0)
    s.close()
    rows, skipped, _ = read_responses(s.path)
    answered = [r for r in rows if r["status"] == "answered"]
    assert [r["item_id"] for r in answered] == [first.id, second.id] and skipped == 0
    assert answered[0]["seconds"] == "12.000" and answered[0]["comment"] == 'fine, "quoted"'
    assert ReadingSession(study, "reader-2").order != order  # each reader has an own, stable order
    assert ReadingSession(study, "reader-2").order == ReadingSession(study, "reader-2").order


def test_answers_are_locked_and_read_in_order(study):
    s = ReadingSession(study, "r1")
    item = s.current()
    later = s.order[3]
    with pytest.raises(ValueError, match="not the current item"):
        s.answer(later, LIKERT)
    with pytest.raises(ValueError, match="required"):
        s.answer(item.id, {"acceptability": 4})
    for bad in ({"acceptability": 6}, {"acceptability": 2.5}, {"artefacts": "maybe"}, {"colour": 1}):
        with pytest.raises(ValueError):
            s.answer(item.id, dict(LIKERT, **bad))
    s.answer(item.id, dict(LIKERT, acceptability=5))
    before = s.path.read_bytes()
    with pytest.raises(LockedAnswerError):
        s.answer(item.id, dict(LIKERT, acceptability=1))
    s.close()
    s = ReadingSession(study, "r1")  # still locked after a restart
    with pytest.raises(LockedAnswerError):
        s.answer(item.id, dict(LIKERT, acceptability=1))
    assert s.path.read_bytes().startswith(before)  # append-only
    s.answer(s.current().id, LIKERT)
    s.close()
    data = load_readings(study)
    assert [r["acceptability"] for r in data["readings"] if r["item"] == item.id] == [5]
    for name in METHODS + ("pat_0", "pat_1"):  # the CSV names no method and no case
        assert name not in s.path.read_text()
    with pytest.raises(ValueError, match="reader ID"):
        ReadingSession(study, "../evil")


def test_a_torn_row_is_ignored_and_the_reader_goes_on(study):
    s = ReadingSession(study, "r1")
    s.answer(s.current().id, LIKERT)
    s.close()
    with open(s.path, "ab") as fh:
        fh.write(b"deadbeef,r1,2,item_0")  # a crash in the middle of a row
    s = ReadingSession(study, "r1")
    assert s.skipped_rows == 1 and s.progress() == (1, 8)
    s.answer(s.current().id, LIKERT)
    s.close()
    rows, skipped, torn = read_responses(s.path)
    assert skipped == 1 and not torn and len([r for r in rows if r["status"] == "answered"]) == 2
    assert load_readings(study)["skipped_rows"] == 1


def test_one_live_session_per_reader(study):
    s = ReadingSession(study, "r1")
    probe = ("import sys; from QHQGANLib.tasks.reading_session import ReadingSession\n"
             "try:\n    ReadingSession(sys.argv[1], 'r1')\nexcept FileExistsError:\n    sys.exit(3)\n")
    busy = subprocess.run([sys.executable, "-c", probe, str(study)], cwd=REPO, timeout=120)
    s.close()
    free = subprocess.run([sys.executable, "-c", probe, str(study)], cwd=REPO, timeout=120)
    assert (busy.returncode, free.returncode) == (3, 0)


# ---------------------------------------------------------------------------
# the analysis on simulated readers
# ---------------------------------------------------------------------------
def _simulated(effect: float, seed: int, n_cases: int = 30, readers=("r1", "r2", "r3")):
    rng = np.random.default_rng(seed)
    readings = []
    for c in range(n_cases):
        base = int(rng.integers(1, 5))  # B's true score, 1-4; A's is base + effect
        for r in readers:
            for method, shift in (("A", effect), ("B", 0)):
                score = int(np.clip(base + shift + rng.choice([-1, 0, 0, 0, 1]), 1, 5))
                readings.append({"reader": r, "case": f"case{c}", "method": method, "item": f"{c}{method}",
                                 "seconds": 10.0, "acceptability": score})
    questions = [{"key": "acceptability", "text": "Diagnostic acceptability", "type": "scale", "min": 1, "max": 5}]
    return {"mode": "single", "questions": questions, "methods": ["A", "B"], "readings": readings}


def test_a_known_effect_is_found():
    results = analyze_readings(_simulated(1.0, seed=0), reference="B", n_resamples=2000)
    q = results["questions"]["acceptability"]
    (cmp,) = q["comparisons"]
    assert cmp["p_wilcoxon"] < 0.01 and cmp["n_cases"] == 30
    assert 0 < cmp["ci"][0] <= cmp["mean_difference"] <= cmp["ci"][1]
    assert 0.7 < cmp["mean_difference"] < 1.1 and cmp["verdict"] == "higher than the reference"
    a, b = q["summary"]
    assert a["mean_ci"][0] <= a["mean"] <= a["mean_ci"][1] and a["mean"] > b["mean"] + 0.7
    assert a["n_readings"] == 90 and a["n_cases"] == 30


def test_no_effect_is_not_claimed():
    results = analyze_readings(_simulated(0.0, seed=1), reference="B", n_resamples=2000)
    (cmp,) = results["questions"]["acceptability"]["comparisons"]
    assert cmp["p_wilcoxon"] > 0.05
    assert cmp["ci"][0] < 0 < cmp["ci"][1] and cmp["verdict"] == "no measurable difference"


def test_agreement_perfect_and_random():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 6, 200)
    for readers in (("r1", "r2"), ("r1", "r2", "r3")):
        same = [{"reader": r, "item": i, "acceptability": int(v)} for r in readers for i, v in enumerate(truth)]
        agreement = reader_agreement(same, "acceptability", "scale", list(range(1, 6)))
        assert agreement["kappa"] == pytest.approx(1.0) and agreement["alpha"] == pytest.approx(1.0)
        noise = [{"reader": r, "item": i, "acceptability": int(rng.integers(1, 6))} for r in readers for i in range(500)]
        agreement = reader_agreement(noise, "acceptability", "scale", list(range(1, 6)))  # sd about 0.045
        assert abs(agreement["kappa"]) < 0.15 and abs(agreement["alpha"]) < 0.15
        assert agreement["n_readers"] == len(readers) and agreement["n_units"] == 500
    yes_no = [{"reader": r, "item": i, "artefacts": "yes" if v > 3 else "no"} for r in ("a", "b") for i, v in
              enumerate(truth)]
    assert reader_agreement(yes_no, "artefacts", "nominal", ["no", "yes"])["kappa"] == pytest.approx(1.0)


def test_preference_rates():
    rng = np.random.default_rng(2)
    questions = [{"key": "preference", "text": "Which?", "type": "choice", "choices": ["left", "right"]}]

    def readings(p_a):
        out = []
        for c in range(30):
            left, right = ("A", "B") if c % 2 else ("B", "A")
            for r in ("r1", "r2", "r3"):
                preferred = "A" if rng.random() < p_a else "B"
                out.append({"reader": r, "case": f"c{c}", "item": f"i{c}", "left": left, "right": right,
                            "preferred": preferred, "preference": "left" if preferred == left else "right"})
        return {"mode": "pairs", "questions": questions, "methods": ["A", "B"], "readings": out}

    (strong,) = analyze_readings(readings(0.85), reference="B")["preferences"]
    assert strong["ci"][0] > 0.5 and strong["p_binomial"] < 0.01 and strong["verdict"] == "A preferred"
    assert strong["n_readings"] == 90
    (none,) = analyze_readings(readings(0.5), reference="B")["preferences"]
    assert none["ci"][0] < 0.5 < none["ci"][1] and none["verdict"] == "no measurable preference"


# ---------------------------------------------------------------------------
# the command line, end to end
# ---------------------------------------------------------------------------
def _main(argv):
    """``qhqgan`` with the reader-study commands (added here too until apps/cli.py registers them)."""
    from QHQGANLib.apps import cli
    from QHQGANLib.apps.reader_cli import add_reader_study_commands

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "reader-study" not in sub.choices:
        add_reader_study_commands(sub, cli._global_options(suppress=True))
    original = cli.build_parser
    cli.build_parser = lambda: parser
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = original


def test_cli_registers_reader_study():
    from QHQGANLib.apps.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "reader-study" in sub.choices, "add add_reader_study_commands(sub, common) to apps/cli.py build_parser"


def test_cli_create_read_analyze(tmp_path, capsys):
    cases = _cases_on_disk(tmp_path, n_cases=30, methods=("low-dose", "hqgan-enhance"))
    argv = ["reader-study", "create", str(tmp_path / "study"), "--seed", "4", "--quiet",
            "--key", str(tmp_path / "key.json"), "--window=-160,240"]
    for name, methods in cases.items():
        argv += ["--case", name] + [f"--method={m}={p}" for m, p in methods.items()]
    assert _main(argv) == 0
    study = tmp_path / "study"
    assert load_manifest(study)["window"]["width"] == 400
    key = json.loads((tmp_path / "key.json").read_text())
    for reader in ("r1", "r2", "r3"):  # simulated readers: HQGAN +1 on a 1-5 scale
        rng = np.random.default_rng(len(reader) + int(reader[1]))
        with ReadingSession(study, reader) as s:
            while s.current() is not None:
                item = s.current()
                base = 3 + int(rng.choice([-1, 0, 0, 1]))
                score = base + (1 if key["items"][item.id]["methods"] == ["hqgan-enhance"] else 0)
                s.answer(item.id, dict(LIKERT, acceptability=int(np.clip(score, 1, 5))))
    out = tmp_path / "analysis"
    assert _main(["reader-study", "analyze", str(study), "--key", str(tmp_path / "key.json"), "--reference",
                  "low-dose", "--output-dir", str(out), "--resamples", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "hqgan-enhance - low-dose" in printed
    report = (out / "report.md").read_text()
    assert "Diagnostic acceptability" in report and "hqgan-enhance" in report and "Krippendorff" in report
    results = json.loads((out / "results.json").read_text())
    (cmp,) = results["questions"]["acceptability"]["comparisons"]
    assert cmp["p_wilcoxon"] < 0.01 and cmp["ci"][0] > 0
    assert (out / "reader_study.png").read_bytes()[:4] == b"\x89PNG"
    # refusals: the analysis never goes inside the study, the study folder is never reused
    assert _main(["reader-study", "analyze", str(study), "--key", str(tmp_path / "key.json"), "--output-dir",
                  str(study / "analysis")]) == 2
    assert _main(argv) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_produces_the_methods_from_a_normal_dose_scan(tmp_path, ct_small_path):
    out = tmp_path / "made"
    assert _main(["reader-study", "create", str(out), "--quiet", "--mode", "pairs", "--normal-dose",
                  f"ct={ct_small_path}", "--produce", "normal-dose,low-dose,redcnn-enhance", "--dose", "0.25"]) == 0
    key = load_key(out)
    assert sorted(key["methods"]) == ["low-dose", "normal-dose", "redcnn-enhance"] and len(key["items"]) == 3
    normal = read_volume(ct_small_path)
    images = {v["method"]: read_volume(out / k) for k, v in key["images"].items()}
    assert np.array_equal(images["normal-dose"].array, normal.array)
    assert 10 < np.std(images["low-dose"].array - normal.array) < 200
    assert np.std(images["redcnn-enhance"].array - normal.array) < np.std(images["low-dose"].array - normal.array)
    patient = str(normal.metadata["dicom"].get("PatientName", "")).lower()
    for path in [out / "study.json"] + sorted((out / "images").iterdir()):
        head = path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1").lower()
        assert "redcnn" not in head and "dose" not in head and (not patient or patient not in head)


def test_produce_methods_keeps_one_low_dose_image(ct_small_path):
    normal = read_volume(ct_small_path)
    made = produce_methods(normal, ["low-dose", "normal-dose"], dose=0.5, seed=3)
    assert list(made) == ["low-dose", "normal-dose"] and made["normal-dose"] is normal
    assert made["low-dose"].same_geometry(normal)
    with pytest.raises(ValueError):
        produce_methods(normal, [" "])
