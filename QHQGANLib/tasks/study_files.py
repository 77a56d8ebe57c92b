"""The files of a reader study checked: the unblinding key kept out, one genuine answer file per reader.

* :func:`check_blind`: a study folder that holds an unblinding key (``unblinding_key.json``, or any
  file that begins like a key, anywhere in the folder) is refused for reading: move the key out.
* :func:`read_responses`: the rows of one reader's CSV whose CRC32 checks; a row torn short by a crash
  is skipped, a whole row whose CRC32 does not match (changed after it was written) is refused.
* :func:`reader_files`: the response files of a study, one genuine file per reader: no copies (byte
  for byte, or the same answers and reading times under another reader's name), each named by the
  reader ID its rows carry, rows of this study only, no two files of one reader.
  A genuine file also follows its reader's own seeded reading order (:func:`reader_order`).
* :func:`validate_answers`: answers checked against their questions (required, scale, choices).

Every refusal is one line naming the file(s) (``ReadingSession`` and ``load_readings`` in
:mod:`QHQGANLib.tasks.reading_session` use these).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .reader_study import (FORMAT, KEY_NAME, MANIFEST_NAME, RESPONSES_DIR, default_key_path, load_manifest, printable,
                           spread_cases)

PathLike = Any
#: Columns of a response CSV before the questions' own columns; ``crc32`` closes every row.
BASE_COLUMNS = ("study_id", "reader_id", "position", "item_id", "item_label", "status", "seconds", "recorded_utc")
READER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_WHOLE_CRC = re.compile(r"^[0-9a-f]{8}$")


class KeyInStudyError(ValueError):
    """A study folder holds an unblinding key: reading it would not be blind."""


#: Bytes of a file's beginning searched for the key's format tag (the key's first field).
_KEY_TAG = b'"' + (FORMAT + "-key").encode() + b'"'
_KEY_SNIFF_BYTES = 4096


def keys_inside(folder: PathLike) -> List[Path]:
    """Every unblinding key in a study folder: files named ``unblinding_key.json`` and files of any name
    that begin like a key (its format tag); the study's own images are not read."""
    folder = Path(folder).expanduser()
    images = set()
    manifest = folder / MANIFEST_NAME
    try:
        images = {str(Path(p)) for it in json.loads(manifest.read_text(encoding="utf-8")).get("items", [])
                  for p in it.get("images", [])}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if str(rel) in images or path == manifest or not path.is_file():
            continue
        if path.name == KEY_NAME:
            found.append(path)
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(_KEY_SNIFF_BYTES)
        except OSError:
            continue
        if _KEY_TAG in head:
            found.append(path)
    return found


def check_blind(folder: PathLike) -> None:
    """Refuse (:class:`KeyInStudyError`) a study folder that holds its unblinding key (see :func:`keys_inside`)."""
    folder = Path(folder).expanduser()
    found = keys_inside(folder)
    if found:
        shown = ", ".join(printable(p.relative_to(folder)) for p in found)
        raise KeyInStudyError(f"{printable(folder)} holds the unblinding key ({shown}): reading it would not be blind; "
                              f"move it out of the study folder (e.g. to {printable(default_key_path(folder))}) "
                              "and open the study again")


class ChangedResponsesError(ValueError):
    """A response file was changed after it was written (a whole row whose CRC32 does not match)."""


class ReaderFilesError(ValueError):
    """The response files of a study are not one genuine file per reader, or hold answers off their scale."""


def validate_answers(questions: List[Dict[str, Any]], answers: Mapping[str, Any]) -> Dict[str, str]:
    """The answers as CSV text, checked against the questions (required, range, choices)."""
    known = {q["key"] for q in questions}
    unknown = sorted(set(answers) - known)
    if unknown:
        raise ValueError(f"unknown question(s) {unknown}; the questions are {sorted(known)}")
    out: Dict[str, str] = {}
    for q in questions:
        value = answers.get(q["key"])
        if value is None or (isinstance(value, str) and not value.strip()):
            if q.get("required"):
                raise ValueError(f"{q['text']}: an answer is required")
            out[q["key"]] = ""
            continue
        kind = q["type"]
        if kind == "scale":
            try:
                number = int(value)
            except (TypeError, ValueError):
                number = None
            if number is None or isinstance(value, bool) or number != float(value) or not q["min"] <= number <= q["max"]:
                raise ValueError(f"{q['text']}: a whole number from {q['min']} to {q['max']}, got {value!r}")
            out[q["key"]] = str(number)
        elif kind == "yesno":
            text = {True: "yes", False: "no"}.get(value, str(value).strip().lower()) if isinstance(value, bool) \
                else str(value).strip().lower()
            if text not in ("yes", "no"):
                raise ValueError(f"{q['text']}: yes or no, got {value!r}")
            out[q["key"]] = text
        elif kind == "choice":
            if value not in q["choices"]:
                raise ValueError(f"{q['text']}: one of {q['choices']}, got {value!r}")
            out[q["key"]] = str(value)
        else:  # free text: one line
            out[q["key"]] = " ".join(str(value).split())
    return out


def read_responses(path: PathLike, columns: Optional[List[str]] = None) -> Tuple[List[Dict[str, str]], int, bool]:
    """(rows whose CRC checks, rows skipped as damaged, whether the file ends in a torn line)."""
    raw = Path(path).read_bytes()
    text = raw.decode("utf-8", errors="replace")
    lines = list(csv.reader(io.StringIO(text)))
    if not lines:
        raise ValueError(f"{path}: empty response file")
    header = lines[0]
    if columns is not None and header != list(columns):
        raise ValueError(f"{path}: its columns {header} are not this study's {list(columns)}")
    rows, skipped = [], 0
    for number, fields in enumerate(lines[1:], 2):
        if not fields:
            continue
        if len(fields) != len(header) or _crc(fields[:-1]) != fields[-1]:
            if len(fields) == len(header) and _WHOLE_CRC.match(fields[-1]):
                # a crash tears a row short; a whole row with a wrong checksum was edited
                raise ChangedResponsesError(
                    f"{printable(path)}: line {number} was changed after it was written (its CRC32 does not match "
                    "its fields); refusing these answers: restore the file as the reading session wrote it")
            skipped += 1
            continue
        rows.append(dict(zip(header[:-1], fields[:-1])))
    return rows, skipped, bool(raw) and not raw.endswith(b"\n")


def reader_files(folder: PathLike, manifest: Optional[Mapping[str, Any]] = None
                 ) -> List[Tuple[Path, List[Dict[str, str]], int]]:
    """The response files of a study, checked to be one genuine file per reader.

    Refused (:class:`ReaderFilesError`, one line naming the files): two files with the same bytes; a
    file whose rows name another reader than its file name (a copy or a renamed file), several
    readers, or another study; a file name that is not a reader ID; two files whose reader IDs differ
    only in case; two files with the same answers and the same reading times, item for item (a copy
    re-signed under another reader's name). Rows changed after they were written are refused by
    :func:`read_responses` (:class:`ChangedResponsesError`).

    Returns:
        ``[(path, rows whose CRC checks, rows skipped as torn)]`` sorted by file name.
    """
    folder = Path(folder).expanduser()
    manifest = manifest if manifest is not None else load_manifest(folder)
    columns = list(BASE_COLUMNS) + [q["key"] for q in manifest["questions"]] + ["crc32"]

    def shown(path: Path) -> str:
        return f"{RESPONSES_DIR}/{printable(path.name)}"

    paths = sorted(p for p in (folder / RESPONSES_DIR).glob("*.csv") if p.is_file())
    # a reader's own file (its name a reader ID) is named first in a message about a copy
    paths.sort(key=lambda p: (not READER_ID.match(p.stem), p.name))
    by_digest: Dict[str, Path] = {}
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in by_digest:
            raise ReaderFilesError(f"{shown(by_digest[digest])} and {shown(path)} are the same file byte for byte "
                                   "(a copy): one file per reader; remove the copy")
        by_digest[digest] = path
    names = {p.stem for p in paths}
    out = []
    for path in sorted(paths, key=lambda p: p.name):
        rows, skipped, _ = read_responses(path, columns)
        studies = sorted({r["study_id"] for r in rows} - {manifest["study_id"]})
        if studies:
            raise ReaderFilesError(f"{shown(path)} holds answers of another study ({printable(studies[0])}, not "
                                   f"{manifest['study_id']}); move it out of {RESPONSES_DIR}/")
        ids = sorted({r["reader_id"] for r in rows})
        if len(ids) > 1:
            raise ReaderFilesError(f"{shown(path)} holds the answers of several readers "
                                   f"({', '.join(printable(i) for i in ids)}): one file per reader")
        if ids and ids[0] != path.stem:
            owner = f"; {RESPONSES_DIR}/{printable(ids[0])}.csv is that reader's file" if ids[0] in names else ""
            raise ReaderFilesError(f"{shown(path)} holds the answers of reader {printable(ids[0])!r} under the name "
                                   f"{printable(path.stem)!r} (a copy or a renamed file){owner}: one file per "
                                   "reader, named by its reader ID; remove it")
        if not READER_ID.match(path.stem):
            raise ReaderFilesError(f"{shown(path)}: the name is not a reader ID (letters, digits, '.', '_', '-'); "
                                   "only reading sessions' files belong in "
                                   f"{RESPONSES_DIR}/")
        out.append((path, rows, skipped))
    folded: Dict[str, Path] = {}
    for path, _, _ in out:
        other = folded.setdefault(path.stem.casefold(), path)
        if other is not path:
            raise ReaderFilesError(f"{shown(other)} and {shown(path)}: two files of one reader (reader IDs that "
                                   "differ only in case); keep one file per reader")
    signatures: Dict[Tuple, Path] = {}
    for path, rows, _ in out:  # every field but the reader's ID (a copy re-signed under another name)
        answered = tuple(sorted(tuple(v for k, v in r.items() if k != "reader_id")
                                for r in rows if r["status"] == "answered"))
        other = signatures.setdefault(answered, path) if answered else path
        if other is not path:
            raise ReaderFilesError(f"{shown(other)} and {shown(path)} hold the same answers with the same reading "
                                   "times, item for item: a copy under another reader's name; one file per "
                                   "reader: remove the copy")
    for path, rows, _ in out:  # each reader reads in an own seeded order: the file must follow it
        order = reader_order(manifest, path.stem)
        for r in rows:
            position = int(r["position"]) if r["position"].isdigit() else 0
            if r["status"] == "answered" and not (0 < position <= len(order) and order[position - 1] == r["item_id"]):
                raise ReaderFilesError(f"{shown(path)}: item {printable(r['item_id'])} at position "
                                       f"{printable(r['position'])} is not where reader {path.stem}'s reading order "
                                       "puts it: not written by that reader's session (a copy of another reader's "
                                       "answers?); refusing it")
    return out


def reader_order(manifest: Mapping[str, Any], reader_id: str) -> List[str]:
    """The item ids in the order ``reader_id`` reads them: the manifest's order, or (``per-reader``) a
    permutation seeded by the study and the reader, with no two items of one case in a row where possible."""
    ids = [it["id"] for it in manifest["items"]]
    if manifest.get("reader_order", "per-reader") == "fixed":
        return ids
    seed = int.from_bytes(hashlib.sha256(f"{manifest['study_id']}/{reader_id}".encode()).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(len(ids))
    cases = [it["case"] for it in manifest["items"]]
    return [ids[i] for i in spread_cases(order, cases)]


def _csv_line(fields: List[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()


def _crc(fields: List[str]) -> str:
    return f"{zlib.crc32(chr(31).join(fields).encode('utf-8')):08x}"
