"""The benchmark's patient-level split (``Testing/Benchmarks/protocol.json``) against the data and its README.

The README of ../shared/data is parsed independently here (its markdown table of patients with
the ``use`` column), every file and DICOM series folder of the data folder is enumerated, and
every slice is read: the manifest must list each file once, follow the README's patients and
uses, and put no identical or near-identical slice in two splits. Negative controls build
leaking manifests (a file duplicated into another split, a crop of a training volume relabelled
as a new patient, a slightly noisy copy) and show the same check reports them.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Set

import numpy as np
import pytest

from conftest import REPO, shared_path
from QHQGANLib import read_volume, write_volume
from QHQGANLib.physics.image_noise import add_ct_noise

sys.path.insert(0, str(REPO / "Testing" / "Benchmarks"))
import protocol as P  # noqa: E402

pytestmark = pytest.mark.shared_data
TEXT_FILES = re.compile(r"(readme|citation|copyright|licen[cs]e)", re.I)


def _root() -> Path:
    return shared_path("README.md").parent


def _image_files(root: Path, folder: Path) -> Set[str]:
    """Every image under ``folder``: ``*.dcm`` and ``*.nii.gz`` files and extension-less DICOM files."""
    found = set()
    for p in sorted(folder.rglob("*")) if folder.is_dir() else [folder]:
        if p.is_dir() or TEXT_FILES.search(p.name):
            continue
        if not p.name.endswith((".dcm", ".nii.gz")):
            with open(p, "rb") as f:
                if f.read(132)[128:132] != b"DICM":
                    continue
        found.add(p.relative_to(root).as_posix())
    return found


def _expand(root: Path, folder: str, token: str) -> Set[str]:
    """Image files a README token names: a file, a folder, a glob (``CT*.dcm``) or a range (``01..03.dcm``)."""
    rel = token.rstrip("/") if "/" in token else f"{folder}/{token}"
    m = re.fullmatch(r"(.*?)(\d+)\.\.(\d+)(.*)", rel)
    if m:
        width = len(m.group(2))
        names = {f"{m.group(1)}{i:0{width}d}{m.group(4)}" for i in range(int(m.group(2)), int(m.group(3)) + 1)}
    elif "*" in rel:
        names = {p.relative_to(root).as_posix() for p in root.glob(rel)}
    else:
        names = {rel}
    assert names and all((root / n).exists() for n in names), f"README names {token!r}, which is not in {root}"
    return set().union(*(_image_files(root, root / n) for n in names))


def _readme_patients(root: Path) -> List[Dict]:
    """The README's patient table: image files, patient id and use of each row.

    A label map ``X_labels.nii.gz`` (named in the README's paragraph on organ label maps) joins
    the row of its image ``X.nii.gz``: the same patient, so the same split.
    """
    rows, header = [], None
    text = (root / "README.md").read_text()
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if not "".join(cells).strip("-: "):
            continue
        row = dict(zip(header, cells))
        tokens = re.findall(r"`([^`]+)`", row["folder"])
        folder = tokens[0].rstrip("/").rsplit("/", 1)[0]
        files = set().union(*(_expand(root, folder, t) for t in tokens))
        ids = re.findall(r"`([^`]+)`", row["patient"])
        patient = ids[0] if ids else row["patient"].split("(")[0].strip()
        rows.append({"files": files, "patient": patient, "use": row["use"].replace("*", "").strip()})
    assert {"folder", "patient", "use"} <= set(header or []), "the README's patient table changed its columns"
    assert len(rows) >= 12
    labels = sorted(set(re.findall(r"`([^`]+_labels\.nii\.gz)`", text)))
    assert len(labels) >= 2, "the README's label maps are not named"
    for label in labels:
        image = label.replace("_labels.nii.gz", ".nii.gz")
        owners = [r for r in rows if image in r["files"]]
        assert len(owners) == 1 and (root / label).exists(), f"label map {label}: its image is in {len(owners)} rows"
        owners[0]["files"].add(label)
    return rows


def _data_files(root: Path) -> Set[str]:
    """Every image file of the data folder."""
    return _image_files(root, root)


def _covered(entry: P.Entry, root: Path) -> Set[str]:
    """The image files a manifest entry stands for (a DICOM series folder: all its files)."""
    return _image_files(root, entry.location(root))


@pytest.fixture(scope="module")
def protocol() -> P.Protocol:
    return P.load_protocol()


def test_every_file_is_assigned_exactly_once(protocol):
    root = _root()
    files = _data_files(root)
    assert len(files) >= 200 and "abdomen-ct-totalseg/dicom/" + sorted(os.listdir(root / "abdomen-ct-totalseg/dicom"))[0] in files
    listed = [e.path for e in protocol.entries if not e.path.startswith(P.PYDICOM_PREFIX)]
    twice = [p for p, n in collections.Counter(listed).items() if n > 1]
    assert not twice, f"listed more than once: {twice}"
    assert sorted(set(listed) - {p for p in listed if (root / p).exists()}) == [], \
        "protocol.json lists files that are not in the data folder"
    coverage = collections.Counter(f for e in protocol.entries if not e.path.startswith(P.PYDICOM_PREFIX)
                                   for f in _covered(e, root))
    assert sorted(files - set(coverage)) == [], "files of the data folder missing from protocol.json"
    assert [f for f, n in coverage.items() if n > 1] == [], "files covered by two entries"
    assert all(_covered(e, root) for e in protocol.entries if not e.path.startswith(P.PYDICOM_PREFIX)), \
        "an entry that stands for no image file"
    tests_only = [e for e in protocol.entries if e.path.startswith(P.PYDICOM_PREFIX)]
    assert [(e.path, e.split, e.benchmark) for e in tests_only] == [("pydicom:CT_small.dcm", "tests", False)]
    labels = [e.path for e in protocol.entries if e.kind == "labels"]
    assert labels == [p for p in listed if p.endswith("_labels.nii.gz")] and len(labels) == 2


def test_splits_follow_the_readme_use_column(protocol):
    rows = _readme_patients(_root())
    split_of_patient: Dict[str, str] = {}
    for e in protocol.entries:
        if e.path.startswith(P.PYDICOM_PREFIX):
            continue
        covered = _covered(e, _root())
        matches = [r for r in rows if covered <= r["files"]]
        assert len(matches) == 1, f"{e.path} is in {len(matches)} README rows"
        row = matches[0]
        assert e.patient == row["patient"], f"{e.path}: patient {e.patient!r}, README says {row['patient']!r}"
        assert e.readme_use == row["use"]
        if "evaluation" in row["use"] and "only" in row["use"]:
            assert e.split == "evaluation", f"{e.path}: an evaluation-only patient in {e.split}"
        if e.split == "train":
            assert "training" in row["use"]
        if e.split == "tune":
            assert "tuning" in row["use"]
        if e.split == "reference":
            assert "not a patient" in row["use"]
        assert split_of_patient.setdefault(e.patient, e.split) == e.split, f"{e.patient} is in two splits"
    # every README row's files (e.g. example_ct and its crop example_ct_sm) share one split
    for row in rows:
        assert len({e.split for e in protocol.entries if not e.path.startswith(P.PYDICOM_PREFIX)
                    and _covered(e, _root()) <= row["files"]}) == 1, row["patient"]
    evaluation_only = {r["patient"] for r in rows if "evaluation" in r["use"] and "only" in r["use"]}
    assert set(protocol.patients("evaluation")) == evaluation_only
    assert evaluation_only.isdisjoint(protocol.patients("train") + protocol.patients("tune"))
    assert protocol.patients("tune") == [protocol.tuning_patient] == ["Z-Missing-Slices-Lymphoma"]
    assert set(protocol.patients("train")) == {"TotalSegmentator example subject", "Siemens Biograph40 example series",
                                               'VTK "headsq" subject', "Pancreas-CT-CB_001", "Lung_Dx-A0001"}
    assert protocol.patients("reference") == ["none"]  # the water phantom: not a patient


def test_dicom_patient_ids_agree_with_the_manifest(protocol):
    checked = 0
    for e in protocol.entries:
        if e.kind == "labels" or e.split == "reference":
            continue  # a label map is not DICOM; the phantom's PatientID is its anonymizer's, and it is no patient
        volume = read_volume(e.location(_root()))
        pid = volume.metadata.get("dicom", {}).get("PatientID")
        if pid:
            assert pid == e.patient, f"{e.path}: DICOM PatientID {pid!r}, manifest {e.patient!r}"
            checked += 1
    assert checked >= 21  # KiTS 10, dcmqi 3, LCTSC, Pancreas, CQ500, CT_small, Pancreas-CB, Lung_Dx 2 x 2


def test_no_identical_or_near_identical_slice_in_two_splits(protocol):
    assert P.find_leaks(protocol, _root()) == []


def test_load_split_reads_the_patients_of_each_split(protocol):
    root = _root()
    tune = P.load_split("tune", root)
    assert len(tune) == 10 and all(v.shape == (1, 512, 512) for v in tune)
    assert {v.metadata["dicom"]["PatientID"] for v in tune} == {"Z-Missing-Slices-Lymphoma"}
    evaluation = P.load_split("evaluation", root)
    assert [v.metadata["protocol"]["patient"] for v in evaluation] == [
        "99000", "99000", "99000", "LCTSC-Test-S1-101", "PANCREAS_0001", "CQ500-CT-310", "Lung_Dx-A0002", "Lung_Dx-A0002"]
    assert [v.shape for v in evaluation[-2:]] == [(30, 512, 512)] * 2
    train = P.load_split("train", root)
    assert [v.shape[0] for v in train] == [112, 20, 93, 134, 64, 64]
    assert {v.metadata["dicom"]["PatientID"] for v in train[4:]} == {"Lung_Dx-A0001"}
    reference = P.load_split("reference", root)  # the two uniform-water images; the resolution module is not read
    assert [v.metadata["protocol"]["path"] for v in reference] == ["noise-phantom-ge/imgA.dcm", "noise-phantom-ge/imgB.dcm"]
    assert all(abs(float(np.median(v.array[0, 200:312, 200:312]))) < 20 for v in reference)  # water, about 0 HU
    assert all(v.metadata["protocol"]["split"] == "train" for v in train)
    assert "example_ct_sm" not in str([v.metadata["source"] for v in train])
    assert P.load_split("tests", root) == []
    with pytest.raises(ValueError, match="unknown split"):
        P.load_split("validation", root)


def test_describe_has_one_row_per_patient(protocol):
    table = P.describe(protocol, _root())
    lines = table.splitlines()
    assert lines[0].startswith("| split | patient | files |")
    assert len(lines) == 2 + len({e.patient for e in protocol.entries})
    assert "| tune | Z-Missing-Slices-Lymphoma |" in table and "| 10 |" in table
    assert "not read: `abdomen-ct-totalseg/example_ct_sm.nii.gz`" in table


# --- negative controls: the same checks on manifests that leak ---------------------------------
def _subset(protocol: P.Protocol, *patients: str) -> List[P.Entry]:
    return [e for e in protocol.entries if e.patient in patients]


def _with(protocol: P.Protocol, entries: List[P.Entry]) -> P.Protocol:
    return dataclasses.replace(protocol, entries=tuple(entries))


def test_a_file_duplicated_into_another_split_is_caught(protocol, tmp_path):
    root = _root()
    base = _subset(protocol, "Z-Missing-Slices-Lymphoma", "99000")
    assert P.find_leaks(_with(protocol, base), root) == []  # the control's clean half passes
    ct26 = next(e for e in base if e.path.endswith("CT26.dcm"))
    # the same file listed again under the evaluation split
    twice = _with(protocol, base + [dataclasses.replace(ct26, split="evaluation", readme_use="evaluation only")])
    problems = P.find_leaks(twice, root)
    assert any("listed twice" in p for p in problems)
    assert any("two splits" in p and "Z-Missing-Slices-Lymphoma" in p for p in problems)
    assert any(p.startswith("identical slice") and "CT26.dcm" in p for p in problems)
    # a byte copy under another name and a made-up patient: only the pixels give it away
    copy = tmp_path / "other_patient.dcm"
    shutil.copyfile(root / ct26.path, copy)
    disguised = dataclasses.replace(ct26, path=str(copy), patient="Somebody-Else", split="evaluation",
                                    readme_use="evaluation only")
    problems = P.find_leaks(_with(protocol, base + [disguised]), root)
    assert len(problems) == 1 and problems[0].startswith("identical slice") and "other_patient.dcm" in problems[0]


def test_a_relabelled_crop_of_a_training_volume_is_caught(protocol):
    root = _root()
    base = _subset(protocol, "TotalSegmentator example subject")
    crop = next(e for e in base if e.path.endswith("example_ct_sm.nii.gz"))
    leaky = [e for e in base if e is not crop] + [dataclasses.replace(crop, patient="New-Patient", split="evaluation")]
    problems = P.find_leaks(_with(protocol, leaky), root)
    assert len(problems) == 30 and all(p.startswith("identical slice") for p in problems)


def test_a_noisy_near_copy_is_caught_and_a_different_patient_is_not(protocol, tmp_path):
    root = _root()
    base = _subset(protocol, "Z-Missing-Slices-Lymphoma", "LCTSC-Test-S1-101")
    ct24 = next(e for e in base if e.path.endswith("CT24.dcm"))
    noisy = add_ct_noise(read_volume(root / ct24.path), 5.0, seed=0, nps="white")  # max |diff| >> 1 HU
    path = write_volume(noisy, tmp_path / "noisy_copy.nrrd")
    near = dataclasses.replace(ct24, path=str(path), patient="Noisy-Copy", split="evaluation")
    problems = P.find_leaks(_with(protocol, base + [near]), root)
    assert len(problems) == 1 and problems[0].startswith("near-identical slices")
    assert "CT24.dcm" in problems[0] and "noisy_copy.nrrd" in problems[0]
    corr = float(re.search(r"correlation ([\d.]+)", problems[0]).group(1))
    assert 0.999 <= corr < 1.0
    # the neighbour check is not simply "same shape": 10 KiTS slices vs the LCTSC slice (both 512x512) pass
    assert P.find_leaks(_with(protocol, base), root) == []


def test_a_split_against_the_readme_use_is_caught(protocol):
    moved = [dataclasses.replace(e, split="train") if e.patient == "PANCREAS_0001" else e
             for e in _subset(protocol, "PANCREAS_0001", "VTK \"headsq\" subject")]
    problems = P.find_leaks(_with(protocol, moved), _root())
    assert problems == ["abdomen-ct-pancreas/PANCREAS_0001.dcm: split 'train' but the README's use is 'evaluation only'"]


def test_manifest_refuses_unknown_splits_and_missing_fields():
    entry = {f: "x" for f in P.FIELDS}
    entry.update(split="validation", benchmark=True)
    with pytest.raises(ValueError, match="unknown split"):
        P.protocol_from_dict({"entries": [entry]})
    del entry["licence"]
    with pytest.raises(ValueError, match="lacks"):
        P.protocol_from_dict({"entries": [entry]})
    entry.update(licence="x", split="train", kind="labels")
    with pytest.raises(ValueError, match="never read as CT"):
        P.protocol_from_dict({"entries": [entry]})
    entry.update(kind="mask")
    with pytest.raises(ValueError, match="unknown kind"):
        P.protocol_from_dict({"entries": [entry]})
    entry.update(kind="labels", benchmark=False)
    assert P.protocol_from_dict({"entries": [entry]}).entries[0].kind == "labels"
