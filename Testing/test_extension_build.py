"""The Slicer extension build files: everything is packaged, and the CMake files configure.

In a Slicer extension only the files listed in CMake are packaged: a QHQGANLib
module or a resource missing from the lists would work in a source checkout and
fail in the Extensions Manager build. The configure test runs the real ``cmake``
with a stand-in Slicer config whose macros record their arguments.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_CMAKE = REPO / "CMakeLists.txt"
MODULE_CMAKE = REPO / "QHQGAN" / "CMakeLists.txt"


def _git_tracked(folder: str):
    """Files under ``folder`` known to git (committed or staged); None outside a git checkout.

    Untracked files are someone's work in progress: they must be listed once they are committed.
    """
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--", folder], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {REPO / line for line in out.splitlines() if line and (REPO / line).is_file()}


def shipped_files(folder: str, pattern: str = "*"):
    """The files under ``folder`` (relative to the repository) that the extension must package."""
    on_disk = {p for p in (REPO / folder).rglob(pattern)
               if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
               and p.suffix not in (".pyc", ".md")}
    tracked = _git_tracked(folder)
    files = on_disk if tracked is None else on_disk & tracked
    return sorted(p.relative_to(REPO).as_posix() for p in files)


def library_scripts():
    return shipped_files("QHQGANLib", "*.py")


def module_resources():
    return [f[len("QHQGAN/"):] for f in shipped_files("QHQGAN/Resources")]


def top_resources():
    return [f for f in shipped_files("Resources") if f.startswith("Resources/Models/") or f == "Resources/requirements.txt"]


def cmake_text() -> str:
    return TOP_CMAKE.read_text() + "\n" + MODULE_CMAKE.read_text()


# ---------------------------------------------------------------------------
# listed
# ---------------------------------------------------------------------------
def test_every_qhqganlib_module_is_listed():
    text = MODULE_CMAKE.read_text()
    scripts = library_scripts()
    assert "QHQGANLib/__init__.py" in scripts and "QHQGANLib/apps/background.py" in scripts
    missing = [s for s in scripts if not re.search(rf"^\s*{re.escape(s)}\s*$", text, re.M)]
    assert not missing, f"add these lines to QHQGANLIB_PYTHON_SCRIPTS in QHQGAN/CMakeLists.txt: {missing}"


def test_every_module_resource_is_listed():
    text = MODULE_CMAKE.read_text().replace("${MODULE_NAME}", "QHQGAN")
    resources = module_resources()
    assert {"Resources/UI/QHQGAN.ui", "Resources/Icons/QHQGAN.png"} <= set(resources)
    missing = [r for r in resources if r not in text]
    assert not missing, f"add to MODULE_PYTHON_RESOURCES in QHQGAN/CMakeLists.txt: {missing}"


def test_extension_metadata():
    text = TOP_CMAKE.read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(QHQGAN)" in text
    # the pictures the catalog shows are files of this repository
    for url in re.findall(r'https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/([^" ]+)', text):
        assert (REPO / url).is_file(), f"{url} is referenced by the extension metadata but absent"
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', text).group(1)
    entry = json.loads((REPO / "QHQGAN.json").read_text())
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier"}, "the catalog schema allows no other keys"
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["category"] == category and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://github.com/") and entry["build_subdirectory"] == "."
    module_source = (REPO / "QHQGAN" / "QHQGAN.py").read_text()
    assert f'self.parent.categories = ["{category}"]' in module_source


# ---------------------------------------------------------------------------
# configured with the real cmake and a stand-in Slicer
# ---------------------------------------------------------------------------
STAND_IN_SLICER_CONFIG = r"""
# A stand-in for Slicer's build tree: just enough for an extension to configure.
set(Slicer_FOUND TRUE)
set(Slicer_USE_PYTHONQT TRUE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/CPack.cmake")
set(QHQGAN_RECORD "${CMAKE_BINARY_DIR}/macro-calls.txt")
file(WRITE "${QHQGAN_RECORD}" "")

function(_record_call name)
  file(APPEND "${QHQGAN_RECORD}" "${name}")
  foreach(arg IN LISTS ARGN)
    file(APPEND "${QHQGAN_RECORD}" "|${arg}")
  endforeach()
  file(APPEND "${QHQGAN_RECORD}" "|@SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}\n")
endfunction()

macro(slicerMacroBuildScriptedModule)
  _record_call(slicerMacroBuildScriptedModule ${ARGN})
  # like Slicer's macro: every listed file must exist
  cmake_parse_arguments(_S "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f IN LISTS _S_SCRIPTS _S_RESOURCES)
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${f}")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${f}'")
    endif()
  endforeach()
endmacro()

macro(ctkMacroCompilePythonScript)
  _record_call(ctkMacroCompilePythonScript ${ARGN})
  cmake_parse_arguments(_C "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
                        "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f IN LISTS _C_SCRIPTS)
    if(NOT EXISTS "${_C_SOURCE_DIR}/${f}")
      message(FATAL_ERROR "ctkMacroCompilePythonScript given nonexistent script '${f}'")
    endif()
  endforeach()
endmacro()
"""


def _parse_calls(path: Path):
    """[(macro name, {keyword: [values]}, flags, source dir)] from the recording."""
    keywords = {"NAME", "SCRIPTS", "RESOURCES", "TARGET_NAME", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR"}
    flags_known = {"WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE", "NO_INSTALL_SUBDIR", "GLOBAL_TARGET"}
    calls = []
    for line in path.read_text().splitlines():
        name, *args = line.split("|")
        source_dir = args.pop()[len("@SOURCE_DIR="):]
        values, flags, current = {}, set(), None
        for arg in args:
            if arg in keywords:
                current = arg
                values.setdefault(arg, [])
            elif arg in flags_known:
                flags.add(arg)
            elif current is not None:
                values[current].append(arg)
        calls.append((name, values, flags, source_dir))
    return calls


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    root = tmp_path_factory.mktemp("cmake")
    slicer_dir, build = root / "Slicer", root / "build"
    slicer_dir.mkdir()
    build.mkdir()
    (slicer_dir / "SlicerConfig.cmake").write_text(STAND_IN_SLICER_CONFIG)
    for name in ("UseSlicer.cmake", "GenerateConfig.cmake", "CPack.cmake"):
        (slicer_dir / name).write_text("# stand-in: empty\n")
    result = subprocess.run([cmake, "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={slicer_dir}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"cmake failed:\n{result.stdout}\n{result.stderr}"
    return build, _parse_calls(build / "macro-calls.txt")


def test_cmake_configures_and_builds_the_module(configured):
    build, calls = configured
    modules = {c[1]["NAME"][0]: c for c in calls if c[0] == "slicerMacroBuildScriptedModule"}
    assert set(modules) == {"QHQGAN", "QHQGANReader"}
    _, values, flags, source_dir = modules["QHQGAN"]
    assert Path(source_dir).resolve() == (REPO / "QHQGAN").resolve()
    assert values["SCRIPTS"] == ["QHQGAN.py"]
    assert sorted(values["RESOURCES"]) == module_resources()
    assert "WITH_GENERIC_TESTS" in flags
    _, values, flags, source_dir = modules["QHQGANReader"]  # the reading panel of reader studies (issue #14)
    assert Path(source_dir).resolve() == (REPO / "QHQGANReader").resolve()
    assert values["SCRIPTS"] == ["QHQGANReader.py"]
    assert sorted(values["RESOURCES"]) == [f[len("QHQGANReader/"):] for f in shipped_files("QHQGANReader/Resources")]
    assert "WITH_GENERIC_TESTS" in flags


def test_cmake_packages_all_of_qhqganlib_beside_the_module(configured):
    build, calls = configured
    libs = [c for c in calls if c[0] == "ctkMacroCompilePythonScript"]
    assert len(libs) == 1
    _, values, flags, _ = libs[0]
    assert Path(values["SOURCE_DIR"][0]).resolve() == REPO.resolve()
    assert sorted(values["SCRIPTS"]) == library_scripts()
    modules_dir = build / "lib/Slicer-5.8/qt-scripted-modules"
    assert Path(values["DESTINATION_DIR"][0]).resolve() == modules_dir.resolve()
    assert values["INSTALL_DIR"] == ["lib/Slicer-5.8/qt-scripted-modules"] and "NO_INSTALL_SUBDIR" in flags


def test_cmake_copies_the_top_level_resources(configured):
    build, _ = configured
    modules_dir = build / "lib/Slicer-5.8/qt-scripted-modules"
    expected = top_resources()
    assert "Resources/requirements.txt" in expected
    for resource in expected:
        copied = modules_dir / resource
        assert copied.is_file(), f"{resource} is not copied beside the module"
        assert copied.read_bytes() == (REPO / resource).read_bytes()
