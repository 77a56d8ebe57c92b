"""Write one benchmark's section into BENCHMARKS.md, keeping the other sections.

Each benchmark script calls ``write_section(name, markdown)``. The file starts with
the machine and the versions it was measured with (refreshed on every write); each
section sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` and states
the date it was measured.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from importlib import metadata
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
_PACKAGES = ["QHQGANLib", "torch", "pennylane", "pennylane-lightning", "numpy", "astra-toolbox",
             "scikit-image", "SimpleITK", "torchmetrics"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_header() -> str:
    """Markdown lines naming the machine and the package versions."""
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = "n/a"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for name in _PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return (
        "# Benchmarks\n\n"
        "Written by the scripts in `Testing/Benchmarks/` (rerun them to refresh a section). "
        "These are measurements, not timed tests.\n\n"
        f"- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, {mem_gb:.0f} GiB RAM, "
        f"torch threads {threads}, {platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()}; " + ", ".join(versions) + "\n"
    )


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or add) the section ``name`` of BENCHMARKS.md with ``body``."""
    text = path.read_text() if path.exists() else ""
    sections = dict(re.findall(r"<!-- BEGIN (\S+) -->\n(.*?)<!-- END \1 -->\n", text, flags=re.S))
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sections[name] = body.rstrip() + f"\n\n_Measured {stamp}._\n"
    parts = [machine_header()]
    for key in sorted(sections):
        parts.append(f"<!-- BEGIN {key} -->\n{sections[key]}<!-- END {key} -->\n")
    path.write_text("\n".join(parts))
