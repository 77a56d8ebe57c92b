"""Reading a blinded study (:mod:`QHQGANLib.tasks.reader_study`): one item at a time, answers locked.

A :class:`ReadingSession` serves the items of a study to one reader, in that reader's own seeded
order (the same order every time the reader comes back), records each answer with the reading
time to ``responses/<reader>.csv`` and never lets an answer change:

* the CSV is append-only: every row is one ``write`` of one whole line, synced to disk, with a
  CRC32 of its fields (a row torn by a crash is recognised and ignored);
* an answered item is locked: answering it again raises :class:`LockedAnswerError`; items are
  answered in order (no going back, no skipping ahead);
* :meth:`ReadingSession.pause` records the time spent so far on the current item; a new session
  for the same reader (even after Slicer was closed) resumes at that item, and its time adds up.

Nothing in the CSV names a method: only item ids and their neutral labels. :func:`load_readings`
joins the answers of all readers with the unblinding key for the analysis
(:mod:`QHQGANLib.metrics.reader_stats`).

Console usage::

    >>> from QHQGANLib.tasks.reading_session import ReadingSession
    >>> with ReadingSession("study1", "reader-01") as session:
    ...     item = session.current()            # Item(id='item_004', label='Case 03 / image B', ...)
    ...     session.answer(item.id, {"acceptability": 4, "noise": 3, "sharpness": 4, "artefacts": "no"})
    ...     session.pause()                     # come back later: ReadingSession("study1", "reader-01")
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import os
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .reader_study import RESPONSES_DIR, load_key, load_manifest, spread_cases

PathLike = Any
#: Columns of a response CSV before the questions' own columns; ``crc32`` closes every row.
BASE_COLUMNS = ("study_id", "reader_id", "position", "item_id", "item_label", "status", "seconds", "recorded_utc")
#: Windows opens files in text mode unless told otherwise (it would write CR LF)
_BINARY = getattr(os, "O_BINARY", 0)
READER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class LockedAnswerError(ValueError):
    """The item was answered already: answers are locked and never changed."""


@dataclass(frozen=True)
class Item:
    """One item as the reader sees it: neutral id and label, its image files, where it is in the reading."""

    id: str
    label: str
    case: str
    images: Tuple[Path, ...]
    position: int  # 1-based, in this reader's order
    total: int


class ReadingSession:
    """The reading of one study by one reader (see the module docstring).

    Args:
        folder: the study folder. reader_id: letters, digits, ``.``, ``_``, ``-`` (the CSV's name).
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, folder: PathLike, reader_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        from contextlib import ExitStack

        from ..core.outputs import claim_output

        if not isinstance(reader_id, str) or not READER_ID.match(reader_id):
            raise ValueError(f"reader ID {reader_id!r}: use 1-64 letters, digits, '.', '_' or '-' "
                             "(no spaces), starting with a letter or digit")
        self.folder = Path(folder).expanduser()
        self.manifest = load_manifest(self.folder)
        self.reader_id = reader_id
        self.questions: List[Dict[str, Any]] = self.manifest["questions"]
        self.columns = list(BASE_COLUMNS) + [q["key"] for q in self.questions] + ["crc32"]
        self.path = self.folder / RESPONSES_DIR / f"{reader_id}.csv"
        self._clock = clock
        self._started: Optional[float] = None
        self._stack = ExitStack()
        self.path.parent.mkdir(exist_ok=True)
        self._stack.enter_context(claim_output(self.path))  # one live session per reader
        self.order = reader_order(self.manifest, reader_id)
        self._by_id = {it["id"]: it for it in self.manifest["items"]}
        self.answered: Dict[str, Dict[str, str]] = {}
        self._paused_seconds: Dict[str, float] = {}
        self.skipped_rows = 0
        self._open_csv()

    # --- state --------------------------------------------------------
    def _open_csv(self) -> None:
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o644)
            try:
                os.write(fd, _csv_line(self.columns).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        rows, self.skipped_rows, _ = read_responses(self.path, self.columns)
        for row in rows:
            if row["study_id"] != self.manifest["study_id"] or row["reader_id"] != self.reader_id:
                raise ValueError(f"{self.path} holds answers of another study or reader; move it away")
            item = row["item_id"]
            if row["status"] == "answered" and item not in self.answered:
                self.answered[item] = row
            elif row["status"] == "paused":
                self._paused_seconds[item] = self._paused_seconds.get(item, 0.0) + float(row["seconds"])

    @property
    def finished(self) -> bool:
        return len(self.answered) >= len(self.order)

    def progress(self) -> Tuple[int, int]:
        """(answered items, all items)."""
        return len(self.answered), len(self.order)

    def current(self) -> Optional[Item]:
        """The item to read now (its clock starts now if it is not running), or None when all are answered."""
        position = self._position()
        if position is None:
            return None
        if self._started is None:
            self._started = self._clock()
        entry = self._by_id[self.order[position - 1]]
        return Item(entry["id"], entry["label"], entry["case"],
                    tuple(self.folder / p for p in entry["images"]), position, len(self.order))

    def elapsed(self) -> float:
        """Seconds spent on the current item so far, earlier sessions and pauses included (starts no clock)."""
        position = self._position()
        if position is None:
            return 0.0
        running = self._clock() - self._started if self._started is not None else 0.0
        return self._paused_seconds.get(self.order[position - 1], 0.0) + running

    def _position(self) -> Optional[int]:
        return next((n for n, item_id in enumerate(self.order, 1) if item_id not in self.answered), None)

    # --- recording ----------------------------------------------------
    def answer(self, item_id: str, answers: Mapping[str, Any]) -> Dict[str, str]:
        """Record the answers to the current item and lock them; returns the row written.

        Raises:
            LockedAnswerError: the item was answered before. ValueError: not the current item, a
            missing required answer, a value out of range, an unknown question.
        """
        if item_id in self.answered:
            raise LockedAnswerError(f"{item_id} was answered already; answers are locked and never changed")
        item = self.current()
        if item is None or item.id != item_id:
            raise ValueError(f"{item_id} is not the current item ({item.id if item else 'none left'}); "
                             "items are read in order")
        values = validate_answers(self.questions, answers)
        row = self._row(item, "answered", self.elapsed(), values)
        self._write(row)
        self.answered[item_id] = row
        self._started = None
        return row

    def pause(self) -> float:
        """Stop the clock of the current item and record the time spent on it; returns those seconds."""
        item = self.current()
        if item is None or self._started is None:
            return 0.0
        spent = max(0.0, self._clock() - self._started)
        self._started = None
        if spent <= 0.0:
            return 0.0
        self._write(self._row(item, "paused", spent, {}))
        self._paused_seconds[item.id] = self._paused_seconds.get(item.id, 0.0) + spent
        return spent

    def close(self) -> None:
        """Pause (when an item is open) and release the reader's CSV for another session."""
        try:
            self.pause()
        finally:
            self._stack.close()

    def __enter__(self) -> "ReadingSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _row(self, item: Item, status: str, seconds: float, values: Dict[str, str]) -> Dict[str, str]:
        row = {"study_id": self.manifest["study_id"], "reader_id": self.reader_id, "position": str(item.position),
               "item_id": item.id, "item_label": item.label, "status": status, "seconds": f"{seconds:.3f}",
               "recorded_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        row.update({q["key"]: values.get(q["key"], "") for q in self.questions})
        return row

    def _write(self, row: Dict[str, str]) -> None:
        fields = [row[c] for c in self.columns[:-1]]
        _append(self.path, _csv_line(fields + [_crc(fields)]))


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
    for fields in lines[1:]:
        if not fields:
            continue
        if len(fields) != len(header) or _crc(fields[:-1]) != fields[-1]:
            skipped += 1
            continue
        rows.append(dict(zip(header[:-1], fields[:-1])))
    return rows, skipped, bool(raw) and not raw.endswith(b"\n")


def load_readings(folder: PathLike, key_path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Every reader's answers joined with the unblinding key, for :mod:`QHQGANLib.metrics.reader_stats`.

    Returns:
        ``{"mode", "questions", "methods", "readers", "n_items", "skipped_rows", "readings"}``; each
        reading is ``{"reader", "case", "item", "seconds", <answers>}`` plus ``"method"`` (single) or
        ``"left"``, ``"right"`` and ``"preferred"`` (the preferred method; pairs).
    """
    folder = Path(folder).expanduser()
    manifest, key = load_manifest(folder), load_key(folder, key_path)
    questions = manifest["questions"]
    columns = list(BASE_COLUMNS) + [q["key"] for q in questions] + ["crc32"]
    readings, readers, skipped = [], [], 0
    for csv_path in sorted((folder / RESPONSES_DIR).glob("*.csv")):
        rows, bad, _ = read_responses(csv_path, columns)
        skipped += bad
        seen = set()
        for row in rows:
            if row["status"] != "answered" or row["item_id"] in seen or row["study_id"] != manifest["study_id"]:
                continue
            seen.add(row["item_id"])
            unblinded = key["items"][row["item_id"]]
            reading: Dict[str, Any] = {"reader": row["reader_id"], "case": unblinded["case"], "item": row["item_id"],
                                       "seconds": float(row["seconds"])}
            for q in questions:
                value = row[q["key"]]
                reading[q["key"]] = int(value) if q["type"] == "scale" and value else value
            if manifest["mode"] == "single":
                reading["method"] = unblinded["methods"][0]
            else:
                reading["left"], reading["right"] = unblinded["methods"]
                side = row.get("preference")
                reading["preferred"] = reading[side] if side in ("left", "right") else None
            readings.append(reading)
        if seen:
            readers.append(csv_path.stem)
    return {"mode": manifest["mode"], "questions": questions, "methods": key["methods"], "readers": readers,
            "n_items": manifest["n_items"], "reference": key.get("reference"), "skipped_rows": skipped,
            "readings": readings}


def _csv_line(fields: List[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(fields)
    return buffer.getvalue()


def _crc(fields: List[str]) -> str:
    return f"{zlib.crc32(chr(31).join(fields).encode('utf-8')):08x}"


def _append(path: Path, text: str) -> None:
    """Append ``text`` in one ``write`` (O_APPEND: whole, after everything else), synced to disk."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | _BINARY)
    try:
        if os.fstat(fd).st_size:
            os.lseek(fd, -1, os.SEEK_END)
            if os.read(fd, 1) != b"\n":
                data = b"\n" + data  # an earlier write was cut short: never glue a row onto it
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: the answer could not be written whole (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)
