"""Reader studies against bad input (issue #28 item 7, issue #29 item 3).

* The analysis counts each reader once: a copied answer file (byte for byte, renamed to another
  reader, or re-signed under another reader's ID), two files of one reader, a file whose rows name
  another reader or another study, and rows changed after they were written are refused with one
  line naming the files.
* Every answer is checked against its question's scale (99 on a 1-5 scale is refused, naming the
  file, the item and the value), in the analysis of answer files and of readings given to the API.
* The unblinding key is written outside the study folder by default, and a study folder that holds
  a key is refused for reading (the reader would be unblinded) with a message to move the key out.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib.apps.cli import main
from QHQGANLib.core.volume import Volume
from QHQGANLib.tasks.reader_study import KEY_NAME, create_study, load_key
from QHQGANLib.tasks.reading_session import BASE_COLUMNS, ReadingSession, _crc, _csv_line, read_responses

METHODS = ("low-dose", "hqgan-enhance")


def _volume(seed: int) -> Volume:
    array = np.random.default_rng(seed).normal(40.0, 10.0, (1, 8, 8)).astype(np.float32)
    array[:, :, :2] = -1000.0  # air: CT in HU
    return Volume(array, spacing=(0.7, 0.7, 2.5))


def _cases(n_cases: int = 4) -> dict:
    return {f"patient-{c}": {m: _volume(10 * c + k) for k, m in enumerate(METHODS)} for c in range(n_cases)}


@pytest.fixture
def study(tmp_path):
    """A single-image study of 4 cases x 2 methods, its key beside it, and two readers' complete answers."""
    folder = create_study(_cases(), tmp_path / "study", seed=1, key_path=tmp_path / "key.json")
    key = load_key(folder, tmp_path / "key.json")
    for reader, bonus in (("reader-01", 1), ("reader-02", 0)):
        with ReadingSession(folder, reader) as s:
            while s.current() is not None:
                item = s.current()
                score = 3 + (bonus if key["items"][item.id]["methods"] == ["hqgan-enhance"] else 0)
                s.answer(item.id, {"acceptability": score, "noise": 3, "sharpness": 3, "artefacts": "no"})
    return folder


def _analyze(study: Path, tmp_path: Path, capsys, name: str = "analysis"):
    """``qhqgan reader-study analyze``: (exit status, stderr, results.json or None)."""
    out = tmp_path / name
    status = main(["reader-study", "analyze", str(study), "--key", str(tmp_path / "key.json"), "--reference",
                   "low-dose", "--output-dir", str(out), "--resamples", "100", "--quiet"])
    err = capsys.readouterr().err
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    return status, err, results


def _rewrite(path: Path, target: Path, change) -> None:
    """Rewrite a response file row by row through ``change(row) -> row`` and sign each row again (a
    forger who knows the CRC: the row checksums alone cannot catch this)."""
    header = path.read_text().splitlines()[0].split(",")
    rows, _, _ = read_responses(path)
    lines = [_csv_line(header)]
    for row in rows:
        row = change(dict(row))
        fields = [row[c] for c in header[:-1]]
        lines.append(_csv_line(fields + [_crc(fields)]))
    target.write_text("".join(lines))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qhqgan: error: "), err
    return lines[0]


def _acceptability(results) -> dict:
    return {r["method"]: r for r in results["questions"]["acceptability"]["summary"]}


# ---------------------------------------------------------------------------
# one file per reader
# ---------------------------------------------------------------------------
def test_the_baseline_analysis_counts_each_reading_once(study, tmp_path, capsys):
    status, err, results = _analyze(study, tmp_path, capsys)
    assert status == 0, err
    assert results["readers"] == ["reader-01", "reader-02"] and results["n_readings"] == 16
    assert _acceptability(results)["hqgan-enhance"]["n_readings"] == 8


def test_a_byte_copy_of_a_reader_file_is_refused(study, tmp_path, capsys):
    responses = study / "responses"
    shutil.copy(responses / "reader-01.csv", responses / "reader-01 (copy).csv")
    status, err, results = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and results is None  # today: exit 0, reader-01 counted twice (24 readings)
    assert "reader-01 (copy).csv" in line and "reader-01.csv" in line and "copy" in line
    assert not (tmp_path / "analysis").exists()


def test_a_copy_under_another_readers_name_is_refused(study, tmp_path, capsys):
    responses = study / "responses"
    (responses / "reader-02.csv").unlink()
    shutil.copy(responses / "reader-01.csv", responses / "reader-02.csv")  # the file says reader-01
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "reader-02.csv" in line and "reader-01" in line


def test_a_file_whose_rows_name_another_reader_is_refused(study, tmp_path, capsys):
    responses = study / "responses"
    shutil.copy(responses / "reader-01.csv", responses / "reader-03.csv")
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "reader-03.csv" in line and "reader-01" in line


def test_an_answer_identical_copy_signed_as_another_reader_is_refused(study, tmp_path, capsys):
    responses = study / "responses"
    _rewrite(responses / "reader-01.csv", responses / "reader-03.csv", lambda row: dict(row, reader_id="reader-03"))
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "reader-01.csv" in line and "reader-03.csv" in line and "same answers" in line


def test_a_copy_re_signed_with_new_times_is_refused_by_the_reading_order(study, tmp_path, capsys):
    """Each reader reads in an own seeded order: another reader's answers do not follow it."""
    responses = study / "responses"
    _rewrite(responses / "reader-01.csv", responses / "reader-03.csv",
             lambda row: dict(row, reader_id="reader-03", seconds="7.250", recorded_utc="2030-01-01T00:00:00+00:00"))
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "reader-03.csv" in line and "reading order" in line


def test_two_files_of_one_reader_are_refused(study, tmp_path, capsys):
    responses = study / "responses"
    with ReadingSession(study, "reader-04") as s:  # a genuine third reading, then renamed: Reader-01
        while s.current() is not None:
            s.answer(s.current().id, {"acceptability": 2, "noise": 2, "sharpness": 2, "artefacts": "yes"})
    _rewrite(responses / "reader-04.csv", responses / "Reader-01.csv", lambda row: dict(row, reader_id="Reader-01"))
    (responses / "reader-04.csv").unlink()
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "Reader-01.csv" in line and "reader-01.csv" in line
    # and a reading session does not start a second file for one reader in the first place
    with pytest.raises(ValueError, match="reader-01"):
        ReadingSession(study, "READER-01")


def test_a_file_of_another_study_is_refused(study, tmp_path, capsys):
    other = create_study(_cases(), tmp_path / "other", seed=1, key_path=tmp_path / "other-key.json")
    with ReadingSession(other, "reader-03") as s:
        while s.current() is not None:
            s.answer(s.current().id, {"acceptability": 5, "noise": 5, "sharpness": 5, "artefacts": "no"})
    shutil.copy(other / "responses" / "reader-03.csv", study / "responses" / "reader-03.csv")
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "reader-03.csv" in line and "another study" in line  # today: silently dropped


def test_a_row_changed_after_it_was_written_is_refused(study, tmp_path, capsys):
    path = study / "responses" / "reader-02.csv"
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    column = lines[0].split(",").index("acceptability")
    fields[column] = "5"  # its CRC32 no longer matches: today the row is silently dropped
    lines[1] = ",".join(fields)
    path.write_text("".join(lines))
    status, err, _ = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and "reader-02.csv" in line and "changed" in line


# ---------------------------------------------------------------------------
# answers on their question's scale
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("question,value", [("acceptability", "99"), ("noise", "0"), ("sharpness", "3.5"),
                                            ("acceptability", "four"), ("artefacts", "maybe")])
def test_an_answer_off_its_scale_is_refused(study, tmp_path, capsys, question, value):
    responses = study / "responses"
    changed = {}

    def forge(row):
        if row["status"] == "answered" and not changed:
            changed["item"] = row["item_id"]
            row[question] = value
        return row

    _rewrite(responses / "reader-01.csv", responses / "reader-01.tmp", forge)
    (responses / "reader-01.tmp").replace(responses / "reader-01.csv")
    status, err, results = _analyze(study, tmp_path, capsys)
    line = _one_error_line(err)
    assert status == 2 and results is None  # today (99): exit 0 and a mean difference of +23.75
    assert "reader-01.csv" in line and changed["item"] in line and repr(value) in line


def test_the_api_refuses_readings_off_the_scale():
    from QHQGANLib.metrics.reader_stats import analyze_readings

    questions = [{"key": "acceptability", "text": "Diagnostic acceptability", "type": "scale", "min": 1, "max": 5}]
    readings = [{"reader": r, "case": f"c{c}", "item": f"i{c}{m}", "method": m, "seconds": 1.0,
                 "acceptability": 3} for r in ("r1", "r2") for c in range(4) for m in ("A", "B")]
    data = {"mode": "single", "questions": questions, "methods": ["A", "B"], "readings": readings}
    analyze_readings(data, reference="B", n_resamples=100)
    readings[0]["acceptability"] = 99
    with pytest.raises(ValueError, match=r"reader r1, item i0A: Diagnostic acceptability: .*99"):
        analyze_readings(data, reference="B", n_resamples=100)
    readings[0]["acceptability"] = 3
    readings.append(dict(readings[1]))
    with pytest.raises(ValueError, match="twice"):
        analyze_readings(data, reference="B", n_resamples=100)


# ---------------------------------------------------------------------------
# the unblinding key stays out of the study folder
# ---------------------------------------------------------------------------
def _cases_on_disk(tmp_path: Path) -> list:
    from QHQGANLib.core.io import write_volume

    argv = []
    for c, methods in _cases(3).items():
        argv += ["--case", c]
        for m, v in methods.items():
            write_volume(v, tmp_path / f"{c}_{m}.nrrd")
            argv += [f"--method={m}={tmp_path / f'{c}_{m}.nrrd'}"]
    return argv


def test_the_key_is_written_outside_the_study_by_default(tmp_path, capsys):
    argv = ["reader-study", "create", str(tmp_path / "study"), "--seed", "2"] + _cases_on_disk(tmp_path)
    assert main(argv) == 0
    out = capsys.readouterr().out
    study = tmp_path / "study"
    assert {p.name for p in study.iterdir()} == {"study.json", "images", "responses"}  # today: the key too
    key = load_key(study)  # found beside the study
    assert not key_is_inside(key_path_of(study), study)
    assert str(key_path_of(study)) in out
    with ReadingSession(study, "reader-01") as s:  # the folder as handed to readers opens
        assert s.current() is not None
    # the analysis finds the key beside the study with no --key
    with ReadingSession(study, "reader-01") as s:
        while s.current() is not None:
            s.answer(s.current().id, {"acceptability": 3, "noise": 3, "sharpness": 3, "artefacts": "no"})
    assert main(["reader-study", "analyze", str(study), "--output-dir", str(tmp_path / "a"), "--resamples",
                 "100", "--quiet"]) == 0
    # a second study of the same name would need the same key file: refused before any work
    shutil.rmtree(study)
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err and not study.exists()
    # a key inside the study is refused (explicitly given)
    assert main(["reader-study", "create", str(tmp_path / "s2"), "--key", str(tmp_path / "s2" / "k.json")]
                + argv[5:]) == 2
    assert "outside the study folder" in capsys.readouterr().err


def key_path_of(study: Path) -> Path:
    from QHQGANLib.tasks.reader_study import default_key_path

    return default_key_path(study)


def key_is_inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


@pytest.mark.parametrize("where", [KEY_NAME, "responses/notes.json", "images/.k"])
def test_a_study_folder_holding_its_key_is_refused_for_reading(tmp_path, where):
    study = create_study(_cases(2), tmp_path / "study", seed=0, key_path=tmp_path / "key.json")
    shutil.copy(tmp_path / "key.json", study / where)
    with pytest.raises(ValueError, match=r"unblinding key.*move it out of the study folder") as caught:
        ReadingSession(study, "reader-01")  # today: opens without a word
    assert "\n" not in str(caught.value) and where.split("/")[-1] in str(caught.value)
    assert not (study / "responses" / "reader-01.csv").exists()
    (study / where).unlink()
    ReadingSession(study, "reader-01").close()


def test_the_reader_module_refuses_a_study_holding_its_key(tmp_path):
    """The Slicer module opens studies through ReadingLogic and shows its ValueError in a dialog."""
    from QHQGANLib.apps.reading import ReadingLogic

    study = create_study(_cases(2), tmp_path / "study", seed=0, key_path=tmp_path / "key.json")
    shutil.copy(tmp_path / "key.json", study / KEY_NAME)  # the old default place
    with pytest.raises(ValueError, match="unblinding key"):
        ReadingLogic(None, study, "reader-01")
    module = (Path(__file__).resolve().parents[1] / "QHQGANReader" / "QHQGANReader.py").read_text()
    assert "except (ValueError, OSError)" in module and "errorDisplay" in module
