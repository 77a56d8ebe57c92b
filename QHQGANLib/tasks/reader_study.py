"""Blinded reader studies: cases x methods -> a study folder of neutral items, plus a separate unblinding key.

A study compares methods (low dose, HQGAN, RED-CNN, normal dose, ...) on the same cases as
radiologists see them. :func:`create_study` writes a NEW folder::

    study/
      study.json            the manifest readers see: items, questions, display window; no method names
      images/image_001.nrrd  ...  each (case, method) image once, numbered in a seeded random order
      responses/             one CSV per reader (QHQGANLib.tasks.reading_session.ReadingSession)
    study-unblinding-key.json   which method each image is: never inside the study folder (``key_path``;
                            default beside the folder, see :func:`default_key_path`)

A study folder that holds an unblinding key (anywhere in it, under any name) is refused for reading
(:func:`QHQGANLib.tasks.study_files.check_blind`): move the key out before readers get the folder.

Blinding: cases become "Case 01", "Case 02" ... in a seeded random order, the methods of a case become
"image A", "image B" ... in a per-case random order, images are re-written from their voxels alone (no
metadata, no history, no names; the same grid for every method of a case, uncompressed so that every
image of a case has the same file size, and all files get the same modification time), and every arm
alike: rounded to whole HU, clipped to the CT range [-1024, 3071] and stored as int16, so that neither
the values a viewer's probe shows (whole numbers for a scanner's image, decimals for a network's) nor
the scanner's padding tells the arms apart (every arm made by the library keeps it, :mod:`QHQGANLib.core.padding`,
and the clip makes it -1024 in all; an arm from a file without it holds whatever was written there). Items are
single images (``mode="single"``: Likert questions) or two images of one case side by side
(``mode="pairs"``: two-alternative forced choice, left/right randomized). The same inputs and seed give
the same study.

Console usage::

    >>> from QHQGANLib.tasks.reader_study import create_study, produce_methods
    >>> cases = {"liver1": {"low-dose": "liver1_low.nrrd", "hqgan": "liver1_hqgan.nrrd"}}
    >>> create_study(cases, "study1", mode="pairs", seed=7)            # Path('study1'), key study1-unblinding-key.json
    >>> cases["ct_small"] = produce_methods(ct, ["low-dose", "hqgan-enhance", "redcnn-enhance"], dose=0.25)

or ``qhqgan reader-study create study1 --case liver1 --method low-dose=l.nrrd --method hqgan=h.nrrd``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.constants import HU_MAX, HU_MIN, WINDOWS
from ..core.file_checks import printable
from ..core.volume import Volume

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[Volume, PathLike]

MANIFEST_NAME = "study.json"
KEY_NAME = "unblinding_key.json"
IMAGES_DIR = "images"
RESPONSES_DIR = "responses"
FORMAT = "blinded-reader-study"
MODES = ("single", "pairs")

#: Display windows (low, high) in HU a study can name; any (low, high) pair is accepted too.
DISPLAY_WINDOWS: Dict[str, Tuple[float, float]] = {
    "abdomen": WINDOWS["abdomen"],  # W400 L40
    "liver": (-25.0, 175.0),  # W200 L75
    "mediastinum": (-125.0, 225.0),  # W350 L50
    "lung": (-1350.0, 150.0),  # W1500 L-600
    "bone": (-500.0, 1300.0),  # W1800 L400
    "brain": (0.0, 80.0),  # W80 L40
}

_SCALE = {"type": "scale", "min": 1, "max": 5, "required": True}
#: The questions of a single-image item (each answer higher = better, except artefacts: yes = present).
SINGLE_QUESTIONS: Tuple[Dict[str, Any], ...] = (
    dict(_SCALE, key="acceptability", text="Diagnostic acceptability",
         labels=["unacceptable", "poor", "acceptable", "good", "excellent"]),
    dict(_SCALE, key="noise", text="Image noise",
         labels=["severe, non-diagnostic", "marked", "moderate", "slight", "none perceptible"]),
    dict(_SCALE, key="sharpness", text="Sharpness of edges and fine detail",
         labels=["very blurred", "blurred", "adequate", "sharp", "very sharp"]),
    {"key": "artefacts", "text": "Artefacts that could affect the diagnosis", "type": "yesno", "required": True},
    {"key": "comment", "text": "Comment", "type": "text", "required": False},
)
#: The questions of a pair item (two-alternative forced choice).
PAIR_QUESTIONS: Tuple[Dict[str, Any], ...] = (
    {"key": "preference", "text": "Which image is better for diagnosis?", "type": "choice",
     "choices": ["left", "right"], "required": True},
    {"key": "comment", "text": "Comment", "type": "text", "required": False},
)


def questions_for(mode: str) -> List[Dict[str, Any]]:
    """The questions a reader answers for each item of a ``mode`` study (copies)."""
    _check_mode(mode)
    return json.loads(json.dumps(SINGLE_QUESTIONS if mode == "single" else PAIR_QUESTIONS))


def resolve_window(window: Union[str, Sequence[float]]) -> Dict[str, Any]:
    """``"abdomen"``, ``"-160,240"`` or ``(-160, 240)`` -> ``{"name", "low", "high", "center", "width"}``."""
    name = "custom"
    if isinstance(window, str):
        if window in DISPLAY_WINDOWS:
            name, window = window, DISPLAY_WINDOWS[window]
        else:
            try:
                window = tuple(float(v) for v in window.split(","))
            except ValueError:
                window = ()
    low_high = tuple(float(v) for v in window)
    if len(low_high) != 2 or not all(np.isfinite(low_high)) or low_high[1] <= low_high[0]:
        raise ValueError(f"window: a name ({', '.join(DISPLAY_WINDOWS)}) or LOW,HIGH in HU with LOW < HIGH, "
                         f"got {window!r}")
    low, high = low_high
    return {"name": name, "low": low, "high": high, "center": (low + high) / 2, "width": high - low}


def produce_methods(normal: Volume, methods: Sequence[str], dose: float = 0.25, seed: int = 0,
                    device: Optional[str] = None,
                    progress: Optional[Callable[[float, str], None]] = None) -> Dict[str, Volume]:
    """The images of one case made by the library from its normal-dose scan.

    Args:
        normal: the normal-dose CT.
        methods: ``"normal-dose"`` (the input), ``"low-dose"`` (``simulate_low_dose`` at ``dose``), or an
            enhancement model name (``"hqgan-enhance"``, ``"redcnn-enhance"``, a weights file) applied to
            that low-dose image; ``"MODEL@0.5"`` sets the enhancement strength.
        dose: the simulated dose fraction; seed: the noise seed (the same low-dose image for every model).

    Returns:
        ``{method: Volume}`` in the order given.
    """
    from ..physics.lowdose import simulate_low_dose

    methods = list(dict.fromkeys(m.strip() for m in methods if m.strip()))
    if not methods:
        raise ValueError("produce_methods: name at least one method (normal-dose, low-dose or a model)")
    out: Dict[str, Volume] = {}
    low = None
    for n, method in enumerate(methods):
        if progress:
            progress(n / len(methods), f"making {method}")
        if method == "normal-dose":
            out[method] = normal
            continue
        if low is None:
            low = simulate_low_dose(normal, dose, seed=seed)
        if method == "low-dose":
            out[method] = low
            continue
        from .enhance import enhance

        model, _, strength = method.partition("@")
        try:
            kwargs = {"strength": float(strength)} if strength else {}
        except ValueError:
            raise ValueError(f"{method}: write a strength as MODEL@0.5") from None
        out[method] = enhance(low, model=model, device=device, **kwargs)
    if progress:
        progress(1.0, "methods made")
    return out


def create_study(cases: Mapping[str, Mapping[str, Source]], folder: PathLike, *, mode: str = "single",
                 seed: int = 0, window: Union[str, Sequence[float]] = "abdomen", pairs: str = "all",
                 reference: Optional[str] = None, title: str = "", key_path: Optional[PathLike] = None,
                 reader_order: str = "per-reader", compress: bool = False,
                 progress: Optional[Callable[[float, str], None]] = None) -> Path:
    """Write a new blinded study folder (see the module docstring) and its unblinding key.

    Args:
        cases: ``{case name: {method name: Volume or volume file}}``; every method of a case on one grid.
        folder: the study folder: new, or an empty folder (a non-empty one is refused).
        mode: ``"single"`` (one image per item, Likert questions) or ``"pairs"`` (2AFC).
        seed: the seed of every random choice (case numbers, image letters, item order, left/right).
        window: display window name (:data:`DISPLAY_WINDOWS`) or (low, high) HU.
        pairs: ``"all"`` (every pair of methods of a case) or ``"reference"`` (each method vs
            ``reference``); pairs mode only.
        title: shown to readers; must not name the methods.
        key_path: where the unblinding key goes: outside the study folder (a path inside it is
            refused); default :func:`default_key_path` (``<folder>-unblinding-key.json`` beside it).
        reader_order: ``"per-reader"`` (each reader gets their own seeded order) or ``"fixed"``.
        compress: gzip the images (smaller, but file sizes then differ with the noise of each method).

    Returns:
        The study folder.
    """
    from ..core.io import read_volume, write_volume
    from ..core.outputs import check_output_path, claim_output, make_temp_folder

    _check_mode(mode)
    if reader_order not in ("per-reader", "fixed"):
        raise ValueError(f"reader_order must be 'per-reader' or 'fixed', got {reader_order!r}")
    table = _normalized_cases(cases, mode)
    methods = sorted({m for _, ms in table for m, _ in ms})
    leaked = [m for m in methods if m.lower() in title.lower()]
    if leaked:
        raise ValueError(f"the title {title!r} names the method {leaked[0]!r}; readers see the title")
    pair_list = _pair_plan(table, mode, pairs, reference)
    display = resolve_window(window)
    folder = check_output_path(folder, folder=True)
    key = check_key_path(folder, key_path)

    rng = np.random.default_rng(seed)
    case_numbers = rng.permutation(len(table))
    width = max(2, len(str(len(table))))
    case_label = {name: f"Case {case_numbers[i] + 1:0{width}d}" for i, (name, _) in enumerate(table)}
    letters = {}
    for name, ms in table:
        order = rng.permutation(len(ms))
        letters[name] = {ms[j][0]: _letter(k) for k, j in enumerate(order)}
    images = [(name, m) for name, ms in table for m, _ in ms]
    image_files = {}
    for k, i in enumerate(rng.permutation(len(images))):
        image_files[images[i]] = f"{IMAGES_DIR}/image_{k + 1:03d}.nrrd"

    units = [(name, (m,)) for name, m in images] if mode == "single" else pair_list
    items = []
    for n, i in enumerate(spread_cases(rng.permutation(len(units)), [units[i][0] for i in range(len(units))])):
        name, ms = units[i]
        if mode == "pairs" and rng.random() < 0.5:
            ms = (ms[1], ms[0])
        item_id = f"item_{n + 1:03d}"
        shown = " vs ".join(f"image {letters[name][m]}" for m in ms)
        items.append({"id": item_id, "label": f"{case_label[name]} / {shown}", "case": case_label[name],
                      "images": [image_files[(name, m)] for m in ms], "_methods": list(ms), "_case": name})

    study_id = uuid.uuid4().hex
    manifest = {"format": FORMAT, "version": 1, "study_id": study_id, "title": title, "mode": mode,
                "window": display, "reader_order": reader_order, "questions": questions_for(mode),
                "n_items": len(items), "n_cases": len(table),
                "items": [{k: v for k, v in it.items() if not k.startswith("_")} for it in items]}
    key_doc = {"format": FORMAT + "-key", "study_id": study_id, "seed": int(seed), "mode": mode,
               "methods": methods, "reference": reference,
               "cases": {case_label[name]: name for name, _ in table},
               "images": {image_files[(name, m)]: {"case": name, "method": m} for name, m in images},
               "items": {it["id"]: {"case": it["_case"], "methods": it["_methods"]} for it in items}}

    with claim_output(folder):
        tmp = make_temp_folder(folder.parent)
        wrote_key = committed = False
        try:
            (tmp / IMAGES_DIR).mkdir()
            (tmp / RESPONSES_DIR).mkdir()
            for n, (name, ms) in enumerate(table):
                if progress:
                    progress(n / len(table), f"writing {case_label[name]}")
                grid = None
                for m, source in sorted(ms, key=lambda pair: letters[name][pair[0]]):
                    volume = source if isinstance(source, Volume) else read_volume(source)
                    if grid is None:
                        grid = volume
                    elif not volume.same_geometry(grid, tol=1e-3):
                        raise ValueError(f"case {name!r}: {m} is on another grid than the other methods "
                                         f"({volume.shape} vs {grid.shape}); a study compares images of one grid")
                    neutral = Volume(neutral_voxels(volume.array), grid.spacing, grid.origin, grid.direction, {})
                    write_volume(neutral, tmp / image_files[(name, m)], compress=compress, pixel_type="int16")
            _write_json(tmp / MANIFEST_NAME, manifest)
            stamp = time.time()
            for path in tmp.rglob("*"):
                os.utime(path, (stamp, stamp))
            key_doc["manifest_sha256"] = hashlib.sha256((tmp / MANIFEST_NAME).read_bytes()).hexdigest()
            # the key first: a study is never left without its key
            _write_json(key, key_doc)
            wrote_key = True
            if folder.exists():
                folder.rmdir()  # empty (checked): the finished study takes its place
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; readers may be other users
            os.replace(tmp, folder)
            committed = True
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if wrote_key and not committed and key.exists():
                key.unlink()  # no key without its study
            raise
    if progress:
        progress(1.0, "study written")
    return folder


def neutral_voxels(array: np.ndarray) -> np.ndarray:
    """Every arm stored alike: whole HU, clipped to [-1024, 3071], int16 (module docstring)."""
    return np.clip(np.rint(np.nan_to_num(array, nan=HU_MIN)), HU_MIN, HU_MAX).astype(np.int16)


def load_manifest(folder: PathLike) -> Dict[str, Any]:
    """The manifest of a study folder, checked (format, items, image files present)."""
    path = Path(folder).expanduser() / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a reader study (no {MANIFEST_NAME})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("mode") not in MODES or not manifest.get("items"):
        raise ValueError(f"{path}: not a QHQGAN reader-study manifest")
    for item in manifest["items"]:
        for image in item["images"]:
            if not (path.parent / image).is_file():
                raise FileNotFoundError(f"{path.parent / image}: an image of {item['label']} is missing")
    return manifest


def default_key_path(folder: PathLike) -> Path:
    """Where a study's unblinding key goes when no path is given: beside the study folder, never in it
    (``studies/liver1`` -> ``studies/liver1-unblinding-key.json``)."""
    folder = Path(folder).expanduser()
    if folder.name in ("", ".", ".."):  # "." or "..": its parent is only known from the absolute path
        folder = Path(os.path.abspath(folder))
    return folder.parent / f"{folder.name}-unblinding-key.json"


def check_key_path(folder: PathLike, key_path: Optional[PathLike] = None) -> Path:
    """The path the key of a new study at ``folder`` will be written to, checked before any work: outside
    the study folder, a new ``.json`` file in an existing folder. Returns it (default :func:`default_key_path`)."""
    from ..core.outputs import check_output_path

    folder = Path(folder).expanduser()
    key = Path(key_path).expanduser() if key_path else default_key_path(folder)
    if _inside(key, folder):
        raise ValueError(f"{printable(key)}: the unblinding key must be written outside the study folder "
                         "(readers get the folder); give another path, or leave the key path out")
    try:
        return check_output_path(key, suffixes=(".json",))
    except FileExistsError:
        raise FileExistsError(f"{printable(key)} exists (the unblinding key of an earlier study?); it is never "
                              "replaced: move it away or give the key another path") from None


def load_key(folder: PathLike, key_path: Optional[PathLike] = None) -> Dict[str, Any]:
    """The unblinding key of a study, checked against its manifest (same study, manifest unchanged).

    Without ``key_path``: the key beside the folder (:func:`default_key_path`), else (a study made
    before keys were kept out of the folder) ``folder/unblinding_key.json``.
    """
    folder = Path(folder).expanduser()
    if key_path:
        key = Path(key_path).expanduser()
    else:
        key = default_key_path(folder)
        if not key.exists() and (folder / KEY_NAME).is_file():
            key = folder / KEY_NAME
    if not key.is_file():
        raise FileNotFoundError(f"{key}: no unblinding key (pass the path of the study's key file)")
    doc = json.loads(key.read_text(encoding="utf-8"))
    manifest = load_manifest(folder)
    if doc.get("study_id") != manifest["study_id"]:
        raise ValueError(f"{key} is the key of another study ({doc.get('study_id')}, not {manifest['study_id']})")
    if doc.get("manifest_sha256") != hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest():
        raise ValueError(f"{folder / MANIFEST_NAME} was changed after the study was created; refusing to unblind")
    return doc


def spread_cases(order: Sequence[int], case_of: Sequence[str]) -> List[int]:
    """``order`` re-arranged (deterministically) so that no two neighbours show the same case, where possible.

    Seeing two images of one case in a row invites a comparison the single-image design does not want.
    """
    remaining = [int(i) for i in order]
    out: List[int] = []
    while remaining:
        pick = next((k for k, i in enumerate(remaining) if not out or case_of[i] != case_of[out[-1]]), 0)
        out.append(remaining.pop(pick))
    return out


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def _letter(k: int) -> str:
    return chr(ord("A") + k) if k < 26 else f"A{k - 25}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _normalized_cases(cases: Mapping[str, Mapping[str, Source]], mode: str) -> List[Tuple[str, List[Tuple[str, Source]]]]:
    """Cases sorted by name, methods by name (the input's order never changes the study), checked."""
    if not cases:
        raise ValueError("a study needs at least one case")
    table = []
    for name in sorted(cases):
        methods = cases[name]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"case names must be non-empty text, got {name!r}")
        if len(methods) < (2 if mode == "pairs" else 1):
            raise ValueError(f"case {name!r} has {len(methods)} method(s); "
                             f"{'pairs need at least 2' if mode == 'pairs' else 'give at least 1'}")
        for method, source in methods.items():
            if not isinstance(method, str) or not method.strip():
                raise ValueError(f"case {name!r}: method names must be non-empty text, got {method!r}")
            if not isinstance(source, Volume) and not Path(source).expanduser().exists():
                raise FileNotFoundError(f"case {name!r}, method {method!r}: {source} does not exist")
        table.append((name, sorted(methods.items())))
    return table


def _pair_plan(table, mode: str, pairs: str, reference: Optional[str]) -> List[Tuple[str, Tuple[str, str]]]:
    if mode != "pairs":
        return []
    if pairs not in ("all", "reference"):
        raise ValueError(f"pairs must be 'all' or 'reference', got {pairs!r}")
    plan = []
    for name, ms in table:
        names = [m for m, _ in ms]
        if pairs == "reference":
            if reference not in names:
                raise ValueError(f"case {name!r} has no {reference!r} image for pairs='reference'")
            plan += [(name, (reference, m)) for m in names if m != reference]
        else:
            plan += [(name, p) for p in itertools.combinations(names, 2)]
    return plan


def _write_json(path: Path, doc: Dict[str, Any]) -> None:
    """Write JSON next to its target, then rename (never a half-written file; never over an existing one)."""
    from ..core.outputs import commit_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    try:
        commit_file(tmp, path, overwrite=False)
    finally:
        if tmp.exists():
            tmp.unlink()
