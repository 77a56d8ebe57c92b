"""``qhqgan demo``: the main job end to end on a real CT, with nothing to download.

It reads a CT (pydicom's bundled ``CT_small.dcm`` unless ``input_path`` is given),
simulates a lower-dose acquisition, runs the best enhancement model that ships
(``hqgan-enhance``; when none ships the demo says so plainly), and writes into a
new folder: ``normal_dose.nrrd``, ``low_dose_<N>pct.nrrd``, ``enhanced_<model>.nrrd``,
``figure.png`` (normal dose / low dose / enhanced / difference) and ``metrics.json``.
Neither the metrics nor the figure name the input: a path such as ``SMITH_JANE/MRN778899.dcm``
is patient information, so they say only ``INPUT_LABEL`` (or that the bundled sample was used).

Console usage::

    >>> from QHQGANLib.apps.demo import run_demo
    >>> result = run_demo(dose=0.25, seed=0)
    >>> print(result.summary())
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..core.constants import BODY_THRESHOLD_HU, HU_MAX, HU_MIN
from ..core.kinds import preferred_models
from ..core.volume import Volume


#: Enhancement models the demo prefers, best first (the first one that ships is used).
PREFERRED_MODELS = preferred_models("enhance")
#: How the metrics and the figure name a user's input (never its path or file name: patient information).
INPUT_LABEL = "user-supplied CT"
#: How they name the bundled sample.
SAMPLE_LABEL = "bundled sample CT (pydicom)"


@dataclass
class DemoResult:
    folder: Path
    files: Dict[str, Path]
    metrics: Dict[str, float]
    model: Optional[str]
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"QHQGAN demo: outputs in {self.folder}"]
        lines += [f"  {name:<10} {path.name}" for name, path in self.files.items()]
        lines += [f"  {key}: {value:.3f}" for key, value in self.metrics.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def central_slices(volume: Volume, max_slices: int) -> Volume:
    """At most ``max_slices`` slices from the middle of the volume (geometry kept exact)."""
    if max_slices < 1:
        raise ValueError("max_slices must be at least 1")
    n = volume.shape[0]
    if n <= max_slices:
        return volume
    start = (n - max_slices) // 2
    origin = volume.index_to_physical((0, 0, start))
    return volume.with_geometry(volume.array[start:start + max_slices], volume.spacing, origin,
                                note=f"slices {start}..{start + max_slices - 1} of {n}")


def run_demo(input_path: Optional[str] = None, dose: float = 0.25, seed: int = 0,
             output_dir: Optional[str] = None, max_slices: int = 8, show_progress: bool = True,
             force: bool = False) -> DemoResult:
    """Run the demo and return where its outputs went and what it measured."""
    from ..core.outputs import make_temp_folder, timestamped_folder
    from ..core.figures import save_panels_png
    from ..core.io import read_volume, write_volume
    from ..physics.lowdose import simulate_low_dose
    from ..metrics.image import psnr, ssim
    from ..core.progress import tqdm_progress
    from ..core.resources import model_cards

    label = INPUT_LABEL if input_path is not None else SAMPLE_LABEL  # never the path: patient information
    if input_path is None:
        from pydicom.data import get_testdata_file

        input_path = get_testdata_file("CT_small.dcm")
    normal = central_slices(read_volume(input_path, force=force), max_slices)
    with tqdm_progress(f"simulating {dose:.0%} dose", enabled=show_progress) as progress:
        low = simulate_low_dose(normal, dose, seed=seed, progress=progress)

    notes = []
    available = [c["name"] for c in model_cards() if c.get("task") == "enhance"]
    model = next((m for m in PREFERRED_MODELS if m in available), available[0] if available else None)
    enhanced = None
    if model is None:
        notes.append("no trained enhancement model ships yet, so no enhanced output was made; "
                     "this demo shows the physics-based low-dose simulation and the metrics")
    else:
        from ..tasks.enhance import enhance

        with tqdm_progress(f"enhancing with {model}", enabled=show_progress) as progress:
            enhanced = enhance(low, model=model, progress=progress)

    body = normal.array > BODY_THRESHOLD_HU  # patient, not air: noise measured where there is tissue
    added = low.array - normal.array
    metrics = {
        "psnr_low_vs_normal_db_full_window": psnr(low, normal),
        "ssim_low_vs_normal_full_window": ssim(low, normal),
        "psnr_low_vs_normal_db_abdomen_window": psnr(low, normal, window="abdomen"),
        "ssim_low_vs_normal_abdomen_window": ssim(low, normal, window="abdomen"),
        "added_noise_std_hu_in_body": float(added[body].std()) if body.any() else float("nan"),
    }
    from ..metrics.image import noise_in_uniform_regions, uniform_region_mask

    mask = uniform_region_mask(np.clip(normal.array, HU_MIN, HU_MAX))
    metrics["noise_hu_uniform_tissue_normal"] = noise_in_uniform_regions(normal.array, mask)
    metrics["noise_hu_uniform_tissue_low"] = noise_in_uniform_regions(low.array, mask)
    if enhanced is not None:
        metrics["noise_hu_uniform_tissue_enhanced"] = noise_in_uniform_regions(enhanced.array, mask)
        notes.append("PSNR/SSIM compare with the normal-dose image, which carries its own noise: a model "
                     "that also removes that noise scores lower there; the noise_hu_uniform_tissue_* "
                     "lines measure the noise of each image in its most uniform soft tissue")
        residual = enhanced.array - normal.array
        metrics.update({
            "psnr_enhanced_vs_normal_db_full_window": psnr(enhanced, normal),
            "ssim_enhanced_vs_normal_full_window": ssim(enhanced, normal),
            "psnr_enhanced_vs_normal_db_abdomen_window": psnr(enhanced, normal, window="abdomen"),
            "ssim_enhanced_vs_normal_abdomen_window": ssim(enhanced, normal, window="abdomen"),
            "remaining_noise_std_hu_in_body": float(residual[body].std()) if body.any() else float("nan"),
        })

    folder = Path(output_dir) if output_dir else timestamped_folder("qhqgan-demo")
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; choose another --output-dir")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # everything is written into a private folder first, then moved into place at once; named after this
    # process (core.outputs), so that a later run removes it when this one is killed
    staging = make_temp_folder(folder.parent)
    try:
        pct = int(round(dose * 100))
        files = {
            "normal": write_volume(normal, staging / "normal_dose.nrrd"),
            "low": write_volume(low, staging / f"low_dose_{pct}pct.nrrd"),
        }
        k = normal.shape[0] // 2
        panels = [("normal dose", normal.array[k]), (f"simulated {pct}% dose", low.array[k])]
        windows = [(-160, 240), (-160, 240)]
        if enhanced is not None:
            files["enhanced"] = write_volume(enhanced, staging / f"enhanced_{model}.nrrd")
            panels.append((f"enhanced ({model})", enhanced.array[k]))
            panels.append(("difference (enhanced - normal)", enhanced.array[k] - normal.array[k]))
        else:
            panels.append(("difference (low - normal)", added[k]))
        windows.extend([(-160, 240)] * (len(panels) - 3) + [(-100, 100)])
        files["figure"] = save_panels_png(
            panels, staging / "figure.png", windows=windows,
            footer=f"{label}, slice {k}; " + (
                f"model {model}" if model else "no enhancement model ships yet"))
        files["metrics"] = staging / "metrics.json"
        files["metrics"].write_text(json.dumps(
            {"input": label, "dose_fraction": dose, "seed": seed, "model": model,
             "metrics": metrics, "notes": notes}, indent=2))
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = {name: folder / path.name for name, path in files.items()}
    return DemoResult(folder=folder, files=files, metrics=metrics, model=model, notes=notes)
