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
* a study folder that holds its unblinding key is refused (``study_files.check_blind``), and so is
  a reader ID that differs only in case from one that already has answers (one file per reader).

Nothing in the CSV names a method: only item ids and their neutral labels. :func:`load_readings`
joins the answers of all readers with the unblinding key for the analysis
(:mod:`QHQGANLib.metrics.reader_stats`), after checking them (:mod:`QHQGANLib.tasks.study_files`): one file per
reader, named by the reader ID its rows carry, no copies (byte for byte, or the same answers and
reading times under another reader's name), rows of this study only, no row changed after it was
written (a full row whose CRC32 does not match), and every answer on its question's scale. Each
refusal is one line naming the file (and the item and value).

Console usage::

    >>> from QHQGANLib.tasks.reading_session import ReadingSession
    >>> with ReadingSession("study1", "reader-01") as session:
    ...     item = session.current()            # Item(id='item_004', label='Case 03 / image B', ...)
    ...     session.answer(item.id, {"acceptability": 4, "noise": 3, "sharpness": 4, "artefacts": "no"})
    ...     session.pause()                     # come back later: ReadingSession("study1", "reader-01")
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .reader_study import RESPONSES_DIR, load_key, load_manifest, printable
from .study_files import (BASE_COLUMNS, READER_ID, ChangedResponsesError, ReaderFilesError,  # noqa: F401 (re-exported)
                          _crc, _csv_line, check_blind, read_responses, reader_files, reader_order, validate_answers)

PathLike = Any
#: Windows opens files in text mode unless told otherwise (it would write CR LF)
_BINARY = getattr(os, "O_BINARY", 0)


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
        check_blind(self.folder)  # readers never get a folder holding the unblinding key
        responses = self.folder / RESPONSES_DIR
        same = sorted(p.name for p in responses.glob("*.csv")
                      if p.stem != reader_id and p.stem.casefold() == reader_id.casefold())
        if same:
            raise ValueError(f"reader ID {reader_id!r}: this study already holds the answers of "
                             f"{', '.join(repr(Path(n).stem) for n in same)} ({RESPONSES_DIR}/{printable(same[0])}); "
                             "IDs that differ only in case are one reader: use that ID exactly")
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


def load_readings(folder: PathLike, key_path: Optional[PathLike] = None) -> Dict[str, Any]:
    """Every reader's answers joined with the unblinding key, for :mod:`QHQGANLib.metrics.reader_stats`.

    The response files are checked first (:func:`reader_files`), then every answered row: an item of
    this study, answered once, each answer on its question's scale, a reading time in seconds.

    Returns:
        ``{"mode", "questions", "methods", "readers", "n_items", "skipped_rows", "readings"}``; each
        reading is ``{"reader", "case", "item", "seconds", <answers>}`` plus ``"method"`` (single) or
        ``"left"``, ``"right"`` and ``"preferred"`` (the preferred method; pairs).

    Raises:
        ReaderFilesError, ChangedResponsesError: one line naming the file(s) (and item and value).
    """
    folder = Path(folder).expanduser()
    manifest, key = load_manifest(folder), load_key(folder, key_path)
    questions = manifest["questions"]
    items = {it["id"] for it in manifest["items"]}
    readings, readers, skipped = [], [], 0
    for csv_path, rows, bad in reader_files(folder, manifest):
        skipped += bad
        where = f"{RESPONSES_DIR}/{printable(csv_path.name)}"
        seen = set()
        for row in rows:
            if row["status"] != "answered":
                continue
            item_id = row["item_id"]
            if item_id not in items or item_id not in key["items"]:
                raise ReaderFilesError(f"{where}: item {printable(item_id)!r} is not an item of this study")
            if item_id in seen:
                raise ReaderFilesError(f"{where}: item {item_id} is answered twice (answers are locked: "
                                       "a reading session writes one answer per item)")
            seen.add(item_id)
            try:
                values = validate_answers(questions, {q["key"]: row[q["key"]] for q in questions})
            except ValueError as exc:
                raise ReaderFilesError(f"{where}: item {item_id}: {printable(exc)}") from None
            try:
                seconds = float(row["seconds"])
            except ValueError:
                seconds = float("nan")
            if not (np.isfinite(seconds) and seconds >= 0):
                raise ReaderFilesError(f"{where}: item {item_id}: reading time {row['seconds']!r} is not "
                                       "a number of seconds")
            unblinded = key["items"][item_id]
            reading: Dict[str, Any] = {"reader": row["reader_id"], "case": unblinded["case"], "item": item_id,
                                       "seconds": seconds}
            for q in questions:
                value = values[q["key"]]
                reading[q["key"]] = int(value) if q["type"] == "scale" and value else value
            if manifest["mode"] == "single":
                reading["method"] = unblinded["methods"][0]
            else:
                reading["left"], reading["right"] = unblinded["methods"]
                side = reading.get("preference")
                reading["preferred"] = reading[side] if side in ("left", "right") else None
            readings.append(reading)
        if seen:
            readers.append(csv_path.stem)
    return {"mode": manifest["mode"], "questions": questions, "methods": key["methods"], "readers": readers,
            "n_items": manifest["n_items"], "reference": key.get("reference"), "skipped_rows": skipped,
            "readings": readings}


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
