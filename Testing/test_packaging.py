"""A wheel install (not editable) carries the shipped models and finds them."""
from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

from QHQGANLib.core.resources import model_cards

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_finds_the_shipped_models(tmp_path):
    where = [sys.executable, "-c", "import QHQGANLib; print(QHQGANLib.__file__)"]
    installed_here = subprocess.run(where, capture_output=True, text=True).stdout
    shipped = sorted(card["name"] for card in model_cards())
    if not shipped:
        pytest.skip("no models ship in Resources/Models")
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels)], capture_output=True, text=True)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    # the new environment sees this one's packages (torch, safetensors, ...) after its own, as plain
    # paths: the .pth files there (this checkout's editable install) are not run, so only the
    # wheel's QHQGANLib can be imported; this works whether this Python is a venv or not
    env_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    env_site.mkdir(parents=True, exist_ok=True)
    (env_site / "_parent_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next(wheels.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--ignore-installed", "-q",
                    "--prefix", str(env),  # --ignore-installed: leave this environment's QHQGANLib installed
                    str(wheel)], check=True, capture_output=True)
    probe = ("import json, QHQGANLib, QHQGANLib.core.resources as r, QHQGANLib.nn.weights as g; "
             "names = sorted(c['name'] for c in g.list_models()); g.load_model(names[0]); "  # sha256-checked load
             "print(json.dumps([QHQGANLib.__file__, str(r.models_dir()), names]))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    package, folder, names = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(package).is_relative_to(env), package  # the wheel's copy, not the checkout
    assert Path(folder) == env / "share" / "qhqgan" / "Models"
    assert names == shipped
    # and this environment's own install is untouched (pip must not have uninstalled it)
    assert subprocess.run(where, capture_output=True, text=True).stdout == installed_here
