"""Where outputs go, and the checks that keep them from harming the input or passing as real.

Console usage::

    >>> from QHQGANLib.core.outputs import timestamped_folder, check_not_input, require_synthetic_name
    >>> timestamped_folder("qhqgan-demo")          # Path('qhqgan-demo-20261125-101500'), not yet created
    >>> check_not_input("ct.nrrd", "ct.nrrd")      # ValueError: QHQGAN never overwrites its input
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def timestamped_folder(prefix: str, parent: Optional[PathLike] = None) -> Path:
    """A new folder path ``<prefix>-YYYYmmdd-HHMMSS`` (suffixed when it exists); not created."""
    base = Path(parent or ".") / f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_not_input(input_path: PathLike, output_path: PathLike) -> None:
    """Refuse an output path that is the input itself."""
    if Path(output_path).resolve() == Path(input_path).resolve():
        raise ValueError(f"the output {output_path} is the input: QHQGAN never overwrites its input")


def check_new_output(output_path: PathLike, overwrite: bool = False) -> None:
    """Refuse an existing output file (or non-empty folder) unless ``overwrite``."""
    out = Path(output_path)
    if overwrite or not out.exists():
        return
    if out.is_dir():
        if any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
        return
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")


def require_synthetic_name(path: PathLike) -> None:
    """Synthetic images are marked synthetic in their names too: refuse a name without 'synthetic'."""
    if "synthetic" not in Path(path).name.lower():
        raise ValueError(f"{path}: synthetic images are marked synthetic in their names too; "
                         "use a name containing 'synthetic', e.g. liver_synthetic.nrrd")
