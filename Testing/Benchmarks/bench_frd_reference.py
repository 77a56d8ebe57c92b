"""Benchmark: the reference FRD implementation (``frd-score`` on PyPI, Osuala, Konz et al.) beside the project's FRD.

Two parts, both measured on this machine, results kept as JSON in ``--work-dir``:

1. ``--install-check``: for every Python 3.9-3.12 found (pyenv, /usr/bin), a throwaway venv and a plain
   ``pip install frd-score``: the frd-score version pip picks, the exit status, whether pyradiomics
   came with it and imports, and whether ``import frd_score`` works (minutes: it downloads).
2. ``--frd-python PY`` (repeatable, an interpreter with frd-score and pyradiomics importable, e.g. set
   up by hand as the section says): the same real and synthetic 64x64 slice sets scored by the
   project's FRD (``metrics.distances.frechet_distance`` on ``metrics.features.radiomic_features``) and
   by frd-score (its default version: v0 for 0.0.x, v1 for 1.x), the slices written as float32 HU
   TIFFs (1 mm pixels) into folders frd-score reads.

Sets: D1 = the training slices of ``synth_data.py`` (132 abdomen slices); D2 = a random half of D1
against the other half (real vs real), D1 + 50 HU Gaussian noise, D1 blurred (Gaussian, 1 px), and
samples of the shipped ``hqgan-synth``, ``dcgan-synth``, ``wgangp-synth`` (132 each, seed 0).

    python Testing/Benchmarks/bench_frd_reference.py --install-check
    python Testing/Benchmarks/bench_frd_reference.py --frd-python /tmp/frdvenv-3.9.18/bin/python \\
           --frd-python /tmp/frdvenv-3.11.7/bin/python

Writes the "frd-reference" section of BENCHMARKS.md from whatever JSON is in ``--work-dir``.
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import write_section  # noqa: E402

DIFFERENCES = """\
How the two differ (read from frd-score's code and configs, frd-score 0.0.2 and 1.0.1, and `QHQGANLib/metrics/features.py`):

- **Features.** Project: 23 features from scikit-image on the HU slice (mean, sd, skewness, kurtosis, 10/50/90th percentiles, entropy of 16-HU bins, energy; GLCM contrast, dissimilarity, homogeneity, ASM, energy, correlation at 1 and 2 px, 32 levels in [-1024, 1024] HU, 4 angles averaged; mean and sd of the Sobel gradient). frd-score v1 (1.x default): pyradiomics firstorder, GLCM (22 features), GLRLM, GLSZM, NGTDM on the original image, LoG (sigma 2, 3, 4, 5 mm) and 8 wavelet sub-bands (~464 features, its README says); v0 (0.0.x): pyradiomics' 8 classes (including shape / shape2D of a whole-image mask) on the original image only.
- **Intensities.** Project: absolute HU (a 100 HU shift changes the first-order features). frd-score v1: pyradiomics `normalize: true` (each image z-scored, times 100) and resampling to 2 mm pixels before binning (bin width 5), so absolute HU and the pixel grid of a 64x64 slice written with 1 mm pixels (32x32 after resampling) are not what it compares; v0: pyradiomics defaults (no image normalisation, bin width 25, no resampling).
- **Feature normalisation and value.** Project: z-score with the mean and sd of the real slices (all real slices at hand in `evaluate_synthetic`), then the squared Fréchet distance (no log). frd-score v1: z-score with D1's statistics, columns with NaN/Inf dropped, then log of the squared Fréchet distance; v0: min-max to [0, 7.4567] over both sets together, squared Fréchet distance.
- **Masks.** Project: whole slice (optional mask). frd-score: whole image (v1 leaves out one corner pixel, a pyradiomics work-around), optional mask folders.
"""

SMOKE = r"""
import json, sys, tempfile, numpy as np, SimpleITK as sitk
from importlib import metadata
out = {"frd_score": metadata.version("frd-score"), "numpy": metadata.version("numpy")}
try:
    import frd_score
    import radiomics
    from radiomics import featureextractor
    out["pyradiomics"] = radiomics.__version__
except Exception as exc:
    out["pyradiomics_error"] = f"{type(exc).__name__}: {exc}"[:300]
print(json.dumps(out))
"""

SCORE = r"""
import json, logging, sys
from importlib import metadata
import frd_score
from frd_score import frd as F
version = metadata.version("frd-score")
a, b = sys.argv[1], sys.argv[2]
if version.startswith("0."):
    value = F.compute_frd([a, b], save_features=False, num_workers=1)
    how = "FRDv0 (frd-score 0.0.x defaults: Original image, 8 feature classes, min-max over both sets)"
else:
    value = F.compute_frd([a, b], num_workers=1)
    how = "FRDv1 (frd-score 1.x defaults: Original + LoG + Wavelet, z-score w.r.t. D1, log)"
print("RESULT " + json.dumps({"frd": float(value), "frd_score": version, "how": how,
                              "pyradiomics": __import__("radiomics").__version__,
                              "numpy": metadata.version("numpy"), "python": sys.version.split()[0]}))
"""


def find_pythons() -> List[str]:
    """Interpreters of Python 3.9-3.12 on this machine (pyenv versions, /usr/bin)."""
    found: Dict[str, str] = {}
    for path in sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python3")) + sorted(glob.glob("/usr/bin/python3.*")):
        if not Path(path).exists() or path.endswith("-config"):
            continue
        try:
            version = subprocess.run([path, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                                     capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if version and (3, 9) <= tuple(int(v) for v in version.split(".")[:2]) <= (3, 12):
            found.setdefault(version, path)
    return [found[v] for v in sorted(found, key=lambda s: tuple(int(x) for x in s.split(".")))]


def _smoke(py: str, cwd: str) -> dict:
    smoke = subprocess.run([py, "-c", SMOKE], capture_output=True, text=True, cwd=cwd)
    return json.loads(smoke.stdout) if smoke.returncode == 0 else {"smoke_error": smoke.stderr.strip().splitlines()[-1:]}


def _pip_install(py: str, *requirements: str) -> dict:
    t0 = time.time()
    run = subprocess.run([py, "-m", "pip", "install", "--no-cache-dir", *requirements], capture_output=True, text=True)
    lines = [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip() and "WARNING: Location" not in ln]
    errors = [ln for ln in lines if "rror" in ln or "inconsistent version" in ln or "No module named" in ln]
    return {"rc": run.returncode, "seconds": round(time.time() - t0, 1), "errors": errors[:4] if run.returncode else []}


def install_check(work: Path) -> List[dict]:
    """``pip install frd-score`` into a fresh venv of every Python 3.9-3.12, with the pip the venv comes with
    and with pip upgraded first: what it installs, whether pyradiomics comes with it or can be added, and
    whether ``import frd_score, radiomics`` then works. No pip cache (every build is a real one)."""
    rows = []
    for python in find_pythons():
        for upgrade in (False, True):
            with tempfile.TemporaryDirectory(prefix="frdvenv-") as tmp:
                venv = Path(tmp) / "venv"
                subprocess.run([python, "-m", "venv", str(venv)], check=True)
                py = str(venv / "bin" / "python")
                if upgrade:
                    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], capture_output=True)
                version = subprocess.run([py, "-c", "import platform; from importlib import metadata; "
                                          "print(platform.python_version(), metadata.version('pip'))"],
                                         capture_output=True, text=True).stdout.split()
                row = {"python": version[0], "pip": version[1], "pip_upgraded": upgrade}
                row["pip install frd-score"] = _pip_install(py, "frd-score")
                if row["pip install frd-score"]["rc"] == 0:
                    row.update(_smoke(py, tmp))
                    # frd-score 1.x leaves pyradiomics out of its requirements: the PyPI release, then a fork
                    # on PyPI; pyradiomics 3.0.1a3 (frd-score 0.0.x) was built against numpy 1
                    missing = "No module named 'radiomics'" in row.get("pyradiomics_error", "")
                    for extra in (("pyradiomics", "pyradiomics-bhklab") if missing else ("numpy<2",)):
                        if "pyradiomics" in row:
                            break
                        row[f"then pip install {extra}"] = _pip_install(py, extra)
                        row.setdefault("first_import_error", row.pop("pyradiomics_error", None))
                        row.update(_smoke(py, tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
                (work / "installs.json").write_text(json.dumps(rows, indent=1))
    return rows


def slice_sets(n_seed: int = 0) -> Dict[str, np.ndarray]:
    """D1 (real training slices) and the D2 sets, (n, 64, 64) HU."""
    from scipy.ndimage import gaussian_filter
    from synth_data import load_slices

    from QHQGANLib.tasks.synthesize import synthesize

    real = load_slices(64)["train"].astype(np.float64)
    rng = np.random.default_rng(n_seed)
    perm = rng.permutation(real.shape[0])
    half = real.shape[0] // 2
    sets = {"D1": real, "real half A": real[np.sort(perm[:half])], "real half B": real[np.sort(perm[half:])],
            "noise 50 HU": real + rng.normal(0.0, 50.0, real.shape),
            "blur 1 px": np.stack([gaussian_filter(s, 1.0) for s in real])}
    for model in ("hqgan-synth", "dcgan-synth", "wgangp-synth"):
        sets[model] = synthesize(model, real.shape[0], seed=n_seed).array.astype(np.float64)
    return sets


PAIRS = [("real half A", "real half B"), ("D1", "noise 50 HU"), ("D1", "blur 1 px"), ("D1", "hqgan-synth"),
         ("D1", "dcgan-synth"), ("D1", "wgangp-synth")]


def project_frd(sets: Dict[str, np.ndarray]) -> Dict[str, float]:
    from QHQGANLib.metrics.distances import frechet_distance
    from QHQGANLib.metrics.features import radiomic_features

    feats = {name: radiomic_features(x) for name, x in sets.items()}
    # standardised with the first set's (the real reference's) mean and sd, as frechet_distance does by default
    return {f"{a} vs {b}": frechet_distance(feats[a], feats[b]) for a, b in PAIRS}


def write_tiffs(sets: Dict[str, np.ndarray], root: Path) -> Dict[str, Path]:
    import SimpleITK as sitk

    folders = {}
    for name, x in sets.items():
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(x):
            image = sitk.GetImageFromArray(s.astype(np.float32))
            image.SetSpacing((1.0, 1.0))
            sitk.WriteImage(image, str(folder / f"{i:04d}.tif"))
        folders[name] = folder
    return folders


def reference_frd(python: str, folders: Dict[str, Path]) -> dict:
    out: Dict[str, object] = {"interpreter": python, "values": {}, "errors": {}}
    for a, b in PAIRS:
        t0 = time.time()
        run = subprocess.run([python, "-c", SCORE, str(folders[a]), str(folders[b])], capture_output=True,
                             text=True, cwd=tempfile.gettempdir())
        key = f"{a} vs {b}"
        result = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT ")]
        if run.returncode == 0 and result:
            info = json.loads(result[-1][7:])
            out["values"][key] = info.pop("frd")
            out.update(info)
            out.setdefault("seconds", {})[key] = round(time.time() - t0, 1)
        else:
            out["errors"][key] = (run.stderr.strip().splitlines() or ["?"])[-1][:300]
        print(python, key, out["values"].get(key), out["errors"].get(key), flush=True)
    return out


def spearman(x: List[float], y: List[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).correlation)


def _short_errors(lines: List[str]) -> List[str]:
    """The telling part of pip's and Python's error lines (file names instead of URLs)."""
    import re

    out = []
    for line in lines:
        line = re.sub(r"https?://\S+/([^/\s]+?)(?=[\s)]|$)", r"\1", line).replace("|", "/")
        match = re.search(r"(\S+\.tar\.gz) has (inconsistent version.*)", line)
        if match:
            out.append(f"{match.group(1)}: {match.group(2)}")
        elif re.search(r"No module named|ImportError|fatal error|failed to import", line):
            out.append(line.strip()[:160])
    return list(dict.fromkeys(out))


def section(work: Path) -> str:
    installs = json.loads((work / "installs.json").read_text()) if (work / "installs.json").exists() else []
    values = json.loads((work / "values.json").read_text()) if (work / "values.json").exists() else None
    lines = ["## The reference FRD implementation (frd-score on PyPI) beside the project's FRD", ""]
    if installs:
        lines += ["`pip install frd-score` into a fresh venv of every Python 3.9-3.12 on this machine (PyPI is the "
                  "only index: no conda-forge, no GitHub; no pip cache), with the pip the venv comes with and with "
                  "pip upgraded first; then, when pyradiomics is missing or does not import, the next step shown:", "",
                  "| Python | pip | `pip install frd-score` | frd-score | next step | pyradiomics imports | errors |",
                  "|---|---|---|---|---|---|---|"]
        for row in installs:
            first = row["pip install frd-score"]
            steps = [(k[len("then pip install "):], v) for k, v in row.items() if k.startswith("then pip install ")]
            step = "; ".join(f"`pip install {name}`: exit {v['rc']} ({v['seconds']:.0f} s)" for name, v in steps) or "-"
            errors = first["errors"] + [e for _, v in steps for e in v["errors"]]
            errors += [row[k] for k in ("first_import_error", "pyradiomics_error") if row.get(k)]
            errors += row.get("smoke_error", [])
            cleaned = "; ".join(_short_errors(errors)) or "-"
            lines.append(f"| {row['python']} | {row['pip']} | exit {first['rc']} ({first['seconds']:.0f} s) | "
                         f"{row.get('frd_score', '-')} | {step} | {row.get('pyradiomics', 'no')} | {cleaned} |")
        lines.append("")
    if values:
        lines += [values["setup"], "",
                  "| D1 vs D2 | project FRD (23 features) | " +
                  " | ".join(f"frd-score {r['frd_score']} (Python {r['python']})" for r in values["reference"]) + " |",
                  "|---|---|" + "---|" * len(values["reference"])]
        for key, ours in values["project"].items():
            cells = [f"{r['values'][key]:.4g}" if key in r["values"] else "failed" for r in values["reference"]]
            lines.append(f"| {key} | {ours:.4g} | " + " | ".join(cells) + " |")
        lines.append("")
        for r in values["reference"]:
            keys = [k for k in values["project"] if k in r["values"]]
            if len(keys) >= 3:
                rho = spearman([values["project"][k] for k in keys], [r["values"][k] for k in keys])
                lines.append(f"- frd-score {r['frd_score']}, {r['how']}, pyradiomics {r['pyradiomics']}, numpy "
                             f"{r['numpy']}: Spearman rank correlation with the project's FRD over the "
                             f"{len(keys)} pairs {rho:.2f}; {np.mean(list(r.get('seconds', {}).values()) or [0]):.0f} s "
                             "per pair on this machine.")
        lines.append("")
    lines += [DIFFERENCES.strip(), ""]
    notes = work / "notes.md"  # conclusions from the measurements, written by hand after a run
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "qhqgan-frd-reference")
    ap.add_argument("--install-check", action="store_true")
    ap.add_argument("--frd-python", action="append", default=[],
                    help="an interpreter with frd-score and pyradiomics importable (repeatable)")
    ap.add_argument("--setup", default="", help="one sentence: how the --frd-python environments were made")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.install_check:
        install_check(args.work_dir)
    if args.frd_python:
        import torch

        torch.set_num_threads(1)
        sets = slice_sets()
        folders = write_tiffs(sets, args.work_dir / "slices")
        old = json.loads((args.work_dir / "values.json").read_text()) if (args.work_dir / "values.json").exists() else {}
        kept = [r for r in old.get("reference", []) if r["interpreter"] not in args.frd_python]
        values = {"project": project_frd(sets),
                  "reference": kept + [reference_frd(p, folders) for p in args.frd_python],
                  "setup": (f"Sets: D1 = {sets['D1'].shape[0]} training slices of synth_data.py (64x64 HU); real "
                            f"halves: {sets['real half A'].shape[0]} vs {sets['real half B'].shape[0]} of them; "
                            "noise / blur: D1 with 50 HU Gaussian noise, D1 blurred 1 px; models: "
                            f"{sets['hqgan-synth'].shape[0]} samples of each shipped model, seed 0. frd-score reads "
                            "the slices as float32 HU TIFFs with 1 mm pixels. " + args.setup).strip()}
        (args.work_dir / "values.json").write_text(json.dumps(values, indent=1))
    text = section(args.work_dir)
    if args.no_write:
        print(text)
    else:
        write_section("frd-reference", text)
        print(text)


if __name__ == "__main__":
    main()
