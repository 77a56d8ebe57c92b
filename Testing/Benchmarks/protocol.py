"""The patient-level data protocol of the benchmarks: which CT of ../shared/data is train, tune, evaluation or reference.

The manifest ``protocol.json`` (beside this file) lists every file of the shared data folder
once, with its patient, split, anatomy, scanner, licence and the reason for its split. The
split is by **patient**, following the ``use`` column of the data folder's README.md: its
"evaluation only" patients are the evaluation set and are never trained or tuned on; the
tuning patient (KiTS, one GE patient) is a training row kept out of training; files of one
patient share a split; two reconstructions of one scan are one patient. The ``reference``
split holds a water phantom's real scanner noise (not a patient; never trained on). A DICOM
series folder is one entry. Files marked ``"benchmark": false`` are listed but not read (a
pixel-identical copy of a used file, a label map, or pydicom's ``CT_small.dcm``, which is for
unit tests); ``"kind": "labels"`` marks a label map on the grid of an image of its patient.

``find_leaks`` checks a protocol against the pixels: no patient in two splits, no split
against the README's use, and no axial slice in two splits that is identical (sha1 of its
float32 HU values) or nearly so (same shape and correlation >= 0.999 or max |difference| <= 1 HU).

Console usage::

    >>> import sys; sys.path.insert(0, "Testing/Benchmarks")
    >>> from protocol import load_protocol, load_split, find_leaks, describe
    >>> protocol = load_protocol()
    >>> protocol.patients("evaluation")          # ['99000', 'LCTSC-Test-S1-101', 'PANCREAS_0001', 'CQ500-CT-310', 'Lung_Dx-A0002']
    >>> volumes = load_split("tune")             # the 10 KiTS slices, one Volume each
    >>> find_leaks(protocol)                     # [] (a list of messages otherwise)
    >>> print(describe())                        # the markdown table for BENCHMARKS.md

    python Testing/Benchmarks/protocol.py            # prints the table
    python Testing/Benchmarks/protocol.py --check    # exits 1 when a leak is found
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from QHQGANLib import Volume, read_volume

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "protocol.json"
SPLITS = ("train", "tune", "evaluation", "reference", "tests")
KINDS = ("image", "labels")
#: the README's ``use`` words a split needs (evaluation and tests may take any patient)
REQUIRED_USE = {"train": "training", "tune": "tuning", "reference": "not a patient"}
PYDICOM_PREFIX = "pydicom:"
FIELDS = ("path", "patient", "split", "benchmark", "readme_use", "anatomy", "scanner", "licence", "why")
#: optional fields and their defaults
OPTIONAL = {"kind": "image"}


def data_root() -> Path:
    """``$QHQGAN_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("QHQGAN_SHARED_DATA", HERE.parents[2] / "shared" / "data"))


@dataclass(frozen=True)
class Entry:
    """One manifest row: a file or DICOM series folder of one patient (``kind`` "labels": a label map on an image's grid)."""

    path: str
    patient: str
    split: str
    benchmark: bool
    readme_use: str
    anatomy: str
    scanner: str
    licence: str
    why: str
    kind: str = "image"

    def location(self, root: Optional[Path] = None) -> Path:
        """Where the file is: under ``root`` (absolute paths kept), or inside pydicom for ``pydicom:`` paths."""
        if self.path.startswith(PYDICOM_PREFIX):
            from pydicom.data import get_testdata_file

            return Path(get_testdata_file(self.path[len(PYDICOM_PREFIX):]))
        return Path(root if root is not None else data_root()) / self.path


@dataclass(frozen=True)
class Protocol:
    """The manifest: its entries and the split descriptions."""

    entries: Tuple[Entry, ...]
    splits: Dict[str, str]
    tuning_patient: str
    description: str = ""

    def entries_of(self, split: str, benchmark_only: bool = True) -> List[Entry]:
        """The entries of ``split`` (only those the benchmark reads, by default)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        return [e for e in self.entries if e.split == split and (e.benchmark or not benchmark_only)]

    def files(self, split: str) -> List[str]:
        """Paths (relative to the data root) the benchmark reads for ``split``."""
        return [e.path for e in self.entries_of(split)]

    def patients(self, split: str) -> List[str]:
        """The patients of ``split``, in manifest order."""
        return list(dict.fromkeys(e.patient for e in self.entries_of(split, benchmark_only=False)))


def protocol_from_dict(data: Dict[str, Any]) -> Protocol:
    """A Protocol from the manifest's JSON object; refuses missing fields and unknown splits."""
    entries = []
    for i, row in enumerate(data["entries"]):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise ValueError(f"manifest entry {i} ({row.get('path')!r}) lacks {missing}")
        if row["split"] not in SPLITS:
            raise ValueError(f"manifest entry {row['path']!r}: unknown split {row['split']!r}; use one of {SPLITS}")
        kind = row.get("kind", OPTIONAL["kind"])
        if kind not in KINDS:
            raise ValueError(f"manifest entry {row['path']!r}: unknown kind {kind!r}; use one of {KINDS}")
        if kind == "labels" and row["benchmark"]:
            raise ValueError(f"manifest entry {row['path']!r}: a label map is never read as CT ('benchmark': false)")
        entries.append(Entry(**{f: row[f] for f in FIELDS}, kind=kind))
    return Protocol(tuple(entries), dict(data.get("splits", {})), data.get("tuning_patient", ""),
                    data.get("description", ""))


def load_protocol(path: Path = MANIFEST) -> Protocol:
    """Read the manifest (``protocol.json`` beside this file by default)."""
    return protocol_from_dict(json.loads(Path(path).read_text()))


def load_split(split: str, root: Optional[Path] = None, protocol: Optional[Protocol] = None) -> List[Volume]:
    """Read the volumes of ``split`` with ``QHQGANLib.read_volume``, one per manifest entry.

    Each volume's ``metadata["protocol"]`` records its path, patient and split.
    """
    protocol = protocol or load_protocol()
    root = Path(root) if root is not None else data_root()
    entries = protocol.entries_of(split)
    if any(not e.path.startswith(PYDICOM_PREFIX) for e in entries) and not root.exists():
        raise FileNotFoundError(f"{root} is absent: the benchmark data is ../shared/data (or set QHQGAN_SHARED_DATA)")
    volumes = []
    for e in entries:
        volume = read_volume(e.location(root))
        volume.metadata["protocol"] = {"path": e.path, "patient": e.patient, "split": e.split}
        volumes.append(volume)
    return volumes


# --- leak checks ------------------------------------------------------------
def _slices(protocol: Protocol, root: Path) -> Iterator[Tuple[Entry, int, np.ndarray]]:
    for e in protocol.entries:
        if e.kind != "image":
            continue  # a label map is not CT: its patient and split are checked, its pixels are not compared
        volume = read_volume(e.location(root))
        for k in range(volume.shape[0]):
            yield e, k, volume.array[k]


def _slice_hash(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def _near_duplicates(a: np.ndarray, b: np.ndarray, min_corr: float, max_hu: float) -> List[Tuple[int, int, float, float]]:
    """(i, j, correlation, max |a_i - b_j|) of every near-identical pair between two stacks of equal-shape slices."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype(np.float64)
        x = x - x.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)

    corr = unit(a) @ unit(b).T
    found = []
    for i in range(len(a)):
        max_diff = np.abs(b.astype(np.float64) - a[i].astype(np.float64)).reshape(len(b), -1).max(axis=1)
        for j in np.flatnonzero((corr[i] >= min_corr) | (max_diff <= max_hu)):
            found.append((i, int(j), float(corr[i, j]), float(max_diff[j])))
    return found


def find_leaks(protocol: Optional[Protocol] = None, root: Optional[Path] = None, min_corr: float = 0.999,
               max_hu: float = 1.0) -> List[str]:
    """Every way ``protocol`` lets a patient or an image into two splits; an empty list when none.

    Checks: a path listed twice; a patient in two splits; a split its README ``use`` does not
    allow (train needs "training", tune needs "tuning"); an axial slice of one split whose
    float32 HU values are identical (sha1) to a slice of another split; and near-identical
    slices of equal shape in two splits (correlation >= ``min_corr`` or max |difference|
    <= ``max_hu`` HU). Reads every listed file, ``"benchmark": false`` ones included.
    """
    protocol = protocol or load_protocol()
    root = Path(root) if root is not None else data_root()
    problems: List[str] = []
    seen: Dict[str, str] = {}
    split_of: Dict[str, str] = {}
    for e in protocol.entries:
        if e.path in seen:
            problems.append(f"{e.path} is listed twice ({seen[e.path]} and {e.split})")
        seen[e.path] = e.split
        if split_of.setdefault(e.patient, e.split) != e.split:
            problems.append(f"patient {e.patient!r} is in two splits: {split_of[e.patient]} and {e.split} ({e.path})")
        need = REQUIRED_USE.get(e.split)
        if need and need not in e.readme_use.lower():
            problems.append(f"{e.path}: split {e.split!r} but the README's use is {e.readme_use!r}")
    hashes: Dict[str, Tuple[Entry, int]] = {}
    stacks: Dict[Tuple[Tuple[int, ...], str], List[Tuple[Entry, int, np.ndarray]]] = {}
    for e, k, sl in _slices(protocol, root):
        h = _slice_hash(sl)
        if h in hashes and hashes[h][0].split != e.split:
            other, ok = hashes[h]
            problems.append(f"identical slice in two splits: {other.path}[{ok}] ({other.split}) == {e.path}[{k}] ({e.split})")
        hashes.setdefault(h, (e, k))
        stacks.setdefault((sl.shape, e.split), []).append((e, k, sl))
    keys = sorted(stacks, key=str)
    for n, (shape, split_a) in enumerate(keys):
        for shape_b, split_b in keys[n + 1:]:
            if shape_b != shape or split_b == split_a:
                continue
            a, b = stacks[(shape, split_a)], stacks[(shape_b, split_b)]
            for i, j, corr, diff in _near_duplicates(np.stack([s for _, _, s in a]), np.stack([s for _, _, s in b]),
                                                     min_corr, max_hu):
                if _slice_hash(a[i][2]) == _slice_hash(b[j][2]):
                    continue  # already reported as identical
                problems.append(f"near-identical slices in two splits: {a[i][0].path}[{a[i][1]}] ({split_a}) and "
                                f"{b[j][0].path}[{b[j][1]}] ({split_b}): correlation {corr:.5f}, max |diff| {diff:.2f} HU")
    return problems


# --- the table for BENCHMARKS.md ----------------------------------------------
def _files_cell(entries: Sequence[Entry]) -> str:
    used = [e.path for e in entries if e.benchmark]
    unused = [e.path for e in entries if not e.benchmark]
    cell = ", ".join(f"`{p}`" for p in used)
    if unused:
        cell += ("; " if cell else "") + "not read: " + ", ".join(f"`{p}`" for p in unused)
    return cell


def describe(protocol: Optional[Protocol] = None, root: Optional[Path] = None, count_slices: bool = True) -> str:
    """The split as a markdown table, one row per patient (slices counted from the files when they are there)."""
    protocol = protocol or load_protocol()
    root = Path(root) if root is not None else data_root()
    lines = ["| split | patient | files | slices read | anatomy | scanner / notes | licence | why |",
             "|---|---|---|---|---|---|---|---|"]
    for split in SPLITS:
        for patient in protocol.patients(split):
            group = [e for e in protocol.entries if e.patient == patient]
            used = [e for e in group if e.benchmark]
            n = "-"
            if used and count_slices and (root.exists() or all(e.path.startswith(PYDICOM_PREFIX) for e in used)):
                n = str(sum(read_volume(e.location(root)).shape[0] for e in used))
            first = used[0] if used else group[0]
            lines.append(f"| {split} | {patient} | {_files_cell(group)} | {n} | {first.anatomy} | {first.scanner} | "
                         f"{first.licence} | {first.why} |".replace("\n", " "))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if "--check" in argv:
        problems = find_leaks()
        for p in problems:
            print("LEAK:", p)
        print(f"{len(problems)} problem(s) in {MANIFEST.name}")
        return 1 if problems else 0
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
