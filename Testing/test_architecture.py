"""The library's layers, as docs/architecture.md describes them: imports point down, no cycles, small modules.

Every import in QHQGANLib is read with ``ast`` (module level and inside functions, relative and
absolute), resolved to the module it names, and checked against the layer table below.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "QHQGANLib"
MAX_LINES = 450

#: folder -> the folders its modules may import from (besides their own folder); docs/architecture.md
ALLOWED: Dict[str, Set[str]] = {
    "core": set(),
    "quantum": set(),
    "metrics": {"core"},
    "physics": {"core"},
    "nn": {"core", "quantum"},
    "training": {"core", "physics", "quantum", "nn"},
    "tasks": {"core", "metrics", "physics", "quantum", "nn"},
    "apps": {"core", "metrics", "physics", "quantum", "nn", "training", "tasks"},
}


def _modules() -> Dict[str, Path]:
    """Dotted name (``QHQGANLib.core.io``) -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[Tuple[str, int]]:
    """(imported QHQGANLib module, line) for every import statement in the module."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "QHQGANLib":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "QHQGANLib":
                continue
            for alias in node.names:  # "from pkg import module" names a module
                candidate = f"{target}.{alias.name}"
                yield (candidate if candidate in MODULES else target), node.lineno


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else ""


def test_every_folder_is_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(ALLOWED), "a new folder needs a row in ALLOWED and in docs/architecture.md"
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}, f"modules outside the layers: {sorted(top)}"


def test_imports_point_down_only():
    wrong = []
    for name, path in MODULES.items():
        folder = _folder(name)
        if not folder:
            continue  # the package root re-exports the public API lazily; __main__ runs apps.cli
        for target, line in _imports(name, path):
            if target not in MODULES:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {target}, which does not exist")
                continue
            to = _folder(target)
            if to and to != folder and to not in ALLOWED[folder]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({folder}) imports {target} ({to})")
            if not to and target != "QHQGANLib":
                wrong.append(f"{path.relative_to(REPO)}:{line} imports the package root module {target}")
            if target == "QHQGANLib":
                wrong.append(f"{path.relative_to(REPO)}:{line} imports the package root (import from core instead)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {name: {t for t, _ in _imports(name, path) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    graph["QHQGANLib"] = set()  # the root imports lazily by name (PEP 562), not by import statements
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_core_and_model_listing_import_no_torch():
    """The Slicer panel imports these while Slicer loads the module, before torch may be installed."""
    probe = ("import sys, QHQGANLib, QHQGANLib.core.options, QHQGANLib.core.kinds, QHQGANLib.core.resources, "
             "QHQGANLib.core.io, QHQGANLib.nn.weights, QHQGANLib.apps.background; "
             "print(sorted(m for m in ('torch', 'pennylane', 'SimpleITK') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_slicer_module_holds_no_science():
    """QHQGAN/QHQGAN.py reaches the library only through core (options, kinds) and apps."""
    source = REPO / "QHQGAN" / "QHQGAN.py"
    used = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("QHQGANLib"):
            used.add(node.module)
        elif isinstance(node, ast.Import):
            used |= {a.name for a in node.names if a.name.startswith("QHQGANLib")}
    assert used, "the module no longer uses QHQGANLib?"
    layers = {m.split(".")[1] if "." in m else "" for m in used}
    assert layers <= {"core", "apps"}, f"QHQGAN.py imports {sorted(used)}"
