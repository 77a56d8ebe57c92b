"""README's API section and docs/architecture.md name things that exist in the code."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import QHQGANLib

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()


def _api_section() -> str:
    start = README.index("## Python API")
    return README[start:README.index("\n## ", start + 3)]


def _resolve(dotted: str):
    """``QHQGANLib.apps.scene.volume_from_node`` -> the object (importing modules as needed)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_name_in_the_api_table_exists():
    names = re.findall(r"^\| `([A-Za-z_][\w.]*)", _api_section(), flags=re.M)
    assert len(names) >= 15
    for name in names:
        if "." in name:
            _resolve(name)
        else:
            assert hasattr(QHQGANLib, name), f"README documents q.{name}, which QHQGANLib does not export"


def test_every_q_name_used_in_examples_exists():
    used = set(re.findall(r"\bq\.([A-Za-z_]\w*)", README))
    assert used, "the README shows no q.* usage?"
    missing = sorted(n for n in used if not hasattr(QHQGANLib, n))
    assert not missing, f"README uses q.{missing} that QHQGANLib does not export"


def test_dotted_library_paths_in_readme_resolve():
    for dotted in sorted(set(re.findall(r"`(QHQGANLib(?:\.\w+)+)", README))):
        _resolve(dotted)


def test_files_named_in_the_architecture_note_exist():
    paths = set(re.findall(r"`((?:core|metrics|physics|quantum|nn|training|tasks|apps)/[\w.]+\.py)`", ARCHITECTURE))
    assert len(paths) >= 8
    missing = sorted(p for p in paths if not (REPO / "QHQGANLib" / p).is_file())
    assert not missing, f"docs/architecture.md names missing modules: {missing}"
    dotted = set(re.findall(r"`((?:core|metrics|physics|quantum|nn|training|tasks|apps)\.\w+(?:\.\w+)*)", ARCHITECTURE))
    for name in sorted(dotted):
        _resolve("QHQGANLib." + name)


def test_architecture_note_lists_every_layer_folder():
    folders = {p.name for p in (REPO / "QHQGANLib").iterdir() if p.is_dir() and p.name != "__pycache__"}
    for folder in folders:
        assert f"`{folder}/`" in ARCHITECTURE, f"docs/architecture.md does not describe {folder}/"


def test_dotted_paths_in_docstrings_resolve():
    """Docstrings and comments name ``QHQGANLib.x.y`` paths that exist (none left from an old layout)."""
    pattern = re.compile(r"QHQGANLib(?:\.[A-Za-z_]\w*)+")
    sources = list((REPO / "QHQGANLib").rglob("*.py")) + [REPO / "QHQGAN" / "QHQGAN.py"]
    broken = []
    for path in sources:
        for dotted in sorted(set(pattern.findall(path.read_text()))):
            dotted = dotted.rstrip(".")
            if dotted.endswith((".py", ".json")):
                continue
            try:
                _resolve(dotted)
            except (ImportError, AttributeError):
                broken.append(f"{path.relative_to(REPO)}: {dotted}")
    assert not broken, "\n".join(broken)
