"""``qhqgan demo``: the main job end to end on a real CT, with nothing to download.

It reads a CT (pydicom's bundled ``CT_small.dcm`` unless ``input_path`` is given; the series options
``resample_z``, ``series_block``, ``regularize_tilt`` and ``series_uid`` as for ``qhqgan enhance``),
simulates a lower-dose acquisition, runs an enhancement model (``model``; default the task's default,
:func:`QHQGANLib.core.kinds.default_model`, or the best shipped one when that is not installed; when none
ships the demo says so plainly), and writes into a new folder: ``normal_dose.nrrd``,
``low_dose_<N>pct.nrrd``, ``enhanced_<model>.nrrd``, ``figure.png`` and ``metrics.json`` (naming the model
and the slice shown).

The slice shown (:func:`pick_slice`) is the one with the most uniform soft tissue, where noise and its
removal are visible: the slice of the input with the most pixels in uniform soft-tissue windows (9x9
pixels between -100 and 200 HU whose local standard deviation is in the lowest fifth of the input's
soft tissue: liver, spleen, muscle), ties going to the slice nearest the middle. The demo processes at
most ``max_slices`` slices centred on it. The figure shows normal dose, simulated low dose, enhanced and
their difference, each titled with what it is, in a named window with a colour bar in HU, and the
slice's number in the input (counted from 1 along its slice axis).

Neither the metrics nor the figure name the input: a path such as ``SMITH_JANE/MRN778899.dcm``
is patient information, so they say only ``INPUT_LABEL`` (or that the bundled sample was used), and a
model given as a file appears by its file name alone.

Console usage::

    >>> from QHQGANLib.apps.demo import run_demo
    >>> result = run_demo(dose=0.25, seed=0, model="redcnn-enhance")
    >>> print(result.summary())
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..core.constants import BODY_THRESHOLD_HU, HU_MAX, HU_MIN
from ..core.kinds import default_model, preferred_models
from ..core.volume import Volume


#: Enhancement models the demo falls back on, best first, when the default is not installed.
PREFERRED_MODELS = preferred_models("enhance")
#: How the metrics and the figure name a user's input (never its path or file name: patient information).
INPUT_LABEL = "user-supplied CT"
#: How they name the bundled sample.
SAMPLE_LABEL = "bundled sample CT (pydicom)"
#: The rule :func:`pick_slice` follows, as metrics.json states it.
SLICE_RULE = ("the slice with the most uniform soft tissue: most pixels in 9x9 windows between -100 and 200 HU "
              "whose local standard deviation is in the lowest fifth of the input's soft tissue; ties: nearest "
              "the middle")
#: Display windows of the figure: (low, high) HU and their names.
SOFT_TISSUE = ((-160.0, 240.0), "soft-tissue window")
DIFFERENCE = ((-100.0, 100.0), "difference window")
#: Slices filtered at once by :func:`pick_slice` (bounds its memory on a long series).
CHUNK_SLICES = 16


@dataclass
class DemoResult:
    folder: Path
    files: Dict[str, Path]
    metrics: Dict[str, float]
    model: Optional[str]
    notes: list = field(default_factory=list)
    slice_number: int = 1  #: the figure's slice, counted from 1 along the input's slice axis
    n_input_slices: int = 1

    def summary(self) -> str:
        lines = [f"QHQGAN demo: outputs in {self.folder}"]
        lines += [f"  {name:<10} {path.name}" for name, path in self.files.items()]
        lines.append(f"  figure: slice {self.slice_number} of {self.n_input_slices} (the most uniform soft tissue)"
                     + (f", enhanced by {self.model}" if self.model else ""))
        lines += [f"  {key}: {value:.3f}" for key, value in self.metrics.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _local_std(chunk: np.ndarray, size: int = 9):
    """(local mean, local standard deviation) over ``size`` x ``size`` windows of each slice."""
    from scipy.ndimage import uniform_filter

    chunk = chunk.astype(np.float64)
    mean = uniform_filter(chunk, size=(1, size, size))
    sq = uniform_filter(chunk ** 2, size=(1, size, size))
    return mean, np.sqrt(np.maximum(sq - mean ** 2, 0))


def pick_slice(volume: Volume) -> int:
    """The index of the slice with the most uniform soft tissue (the rule: module doc, :data:`SLICE_RULE`)."""
    n = volume.shape[0]
    soft_std = []  # pass 1: local std in soft tissue over the whole input, for the threshold
    for a in range(0, n, CHUNK_SLICES):
        chunk = np.clip(volume.array[a:a + CHUNK_SLICES], HU_MIN, HU_MAX)
        mean, std = _local_std(chunk)
        soft_std.append(std[(mean > -100) & (mean < 200) & (chunk > -100) & (chunk < 200)].astype(np.float32))
    values = np.concatenate(soft_std)
    if not values.size:
        return n // 2
    threshold = float(np.percentile(values, 20))
    counts = np.zeros(n, dtype=np.int64)
    for a in range(0, n, CHUNK_SLICES):  # pass 2: uniform windows per slice
        chunk = np.clip(volume.array[a:a + CHUNK_SLICES], HU_MIN, HU_MAX)
        mean, std = _local_std(chunk)
        uniform = (mean > -100) & (mean < 200) & (chunk > -100) & (chunk < 200) & (std <= threshold)
        counts[a:a + chunk.shape[0]] = uniform.reshape(chunk.shape[0], -1).sum(axis=1)
    middle = (n - 1) / 2.0
    return int(max(range(n), key=lambda k: (int(counts[k]), -abs(k - middle))))


def slices_around(volume: Volume, k: int, max_slices: int) -> Volume:
    """At most ``max_slices`` slices centred on slice ``k`` (geometry kept exact)."""
    if max_slices < 1:
        raise ValueError("max_slices must be at least 1")
    n = volume.shape[0]
    if n <= max_slices:
        return volume
    start = first_of_slices_around(n, k, max_slices)
    origin = volume.index_to_physical((0, 0, start))
    return volume.with_geometry(volume.array[start:start + max_slices], volume.spacing, origin,
                                note=f"slices {start}..{start + max_slices - 1} of {n}")


def first_of_slices_around(n: int, k: int, max_slices: int) -> int:
    """The first of the (at most) ``max_slices`` slices of ``n`` that :func:`slices_around` keeps."""
    return 0 if n <= max_slices else int(min(max(k - max_slices // 2, 0), n - max_slices))


def central_slices(volume: Volume, max_slices: int) -> Volume:
    """At most ``max_slices`` slices from the middle of the volume (geometry kept exact)."""
    return slices_around(volume, max(volume.shape[0] - max_slices, 0) // 2 + max_slices // 2, max_slices)


def model_label(model: Any) -> str:
    """A model for figures and metrics: a shipped name as it is, a file by its name alone (no folders)."""
    text = str(model)
    if "/" in text or "\\" in text or text.endswith((".json", ".safetensors")):
        name = Path(text.replace("\\", "/")).name
        return name.rsplit(".", 1)[0] if name.endswith((".json", ".safetensors")) else name
    return text


def _choose_model(model: Optional[str]) -> Optional[str]:
    """``model`` when given, else the task's default when installed, else the best installed one, else None."""
    from ..core.resources import model_cards

    if model is not None:
        return model
    available = [c["name"] for c in model_cards() if c.get("task") == "enhance"]
    preferred = (default_model("enhance"),) + tuple(PREFERRED_MODELS)
    return next((m for m in preferred if m in available), available[0] if available else None)


def run_demo(input_path: Optional[str] = None, dose: float = 0.25, seed: int = 0,
             output_dir: Optional[str] = None, max_slices: int = 8, show_progress: bool = True,
             force: bool = False, model: Optional[str] = None,
             read_options: Optional[Dict[str, Any]] = None) -> DemoResult:
    """Run the demo and return where its outputs went and what it measured.

    ``model``: a shipped enhancement model's name or a weights file (default: module doc);
    ``read_options``: ``series_uid``, ``regularize_tilt``, ``resample_z``, ``series_block`` for
    :func:`QHQGANLib.core.io.read_volume` (an uneven series needs one of the last two: the demo
    writes NRRD files, one regular grid each).
    """
    from ..core.io import read_volume
    from ..core.progress import tqdm_progress
    from ..physics.lowdose import simulate_low_dose

    if output_dir:  # checked before any work (again when writing: it may have changed meanwhile)
        _check_output_folder(Path(output_dir))
    label = INPUT_LABEL if input_path is not None else SAMPLE_LABEL  # never the path: patient information
    if input_path is None:
        from pydicom.data import get_testdata_file

        input_path = get_testdata_file("CT_small.dcm")
    if max_slices < 1:
        raise ValueError("max_slices must be at least 1")
    source = read_volume(input_path, force=force, **(read_options or {}))
    notes = [f"input {h}" for h in source.metadata.get("history", [])]  # tilt, block, resampling: never a path
    shown = pick_slice(source)
    normal = slices_around(source, shown, max_slices)
    k = shown - first_of_slices_around(source.shape[0], shown, max_slices)  # within the slices processed
    with tqdm_progress(f"simulating {dose:.0%} dose", enabled=show_progress) as progress:
        low = simulate_low_dose(normal, dose, seed=seed, progress=progress)

    model = _choose_model(model)
    enhanced, name = None, (model_label(model) if model is not None else None)
    if model is None:
        notes.append("no trained enhancement model ships yet, so no enhanced output was made; "
                     "this demo shows the physics-based low-dose simulation and the metrics")
    else:
        from ..tasks.enhance import enhance

        with tqdm_progress(f"enhancing with {name}", enabled=show_progress) as progress:
            enhanced = enhance(low, model=model, progress=progress)
    metrics = _metrics(normal, low, enhanced, notes)
    pct = int(round(dose * 100))
    panels = [("normal dose", normal.array[k]), (f"simulated low dose at {pct} %", low.array[k])]
    if enhanced is not None:
        panels += [(f"enhanced by {name}", enhanced.array[k]),
                   ("difference: enhanced minus normal dose", enhanced.array[k] - normal.array[k])]
    else:
        panels.append(("difference: low minus normal dose", low.array[k] - normal.array[k]))
    windows = [SOFT_TISSUE] * (len(panels) - 1) + [DIFFERENCE]
    footer = (f"{label}: slice {shown + 1} of {source.shape[0]} (the slice with the most uniform soft tissue); "
              + (f"enhancement model {name}" if name else "no enhancement model ships yet"))
    report = {"input": label, "dose_fraction": dose, "seed": seed, "model": name,
              "figure_slice": {"number": shown + 1, "of": source.shape[0], "counted": "from 1 along the input's "
                               "slice axis", "rule": SLICE_RULE},
              "slices_processed": normal.shape[0], "metrics": metrics, "notes": notes}
    folder = _write_outputs(output_dir, normal, low, enhanced, name, pct, panels, windows, footer, report)
    files = {key: folder / file for key, file in (("normal", "normal_dose.nrrd"), ("low", f"low_dose_{pct}pct.nrrd"),
                                                 ("enhanced", f"enhanced_{name}.nrrd"), ("figure", "figure.png"),
                                                 ("metrics", "metrics.json")) if (folder / file).exists()}
    return DemoResult(folder=folder, files=files, metrics=metrics, model=name, notes=notes,
                      slice_number=shown + 1, n_input_slices=source.shape[0])


def _metrics(normal: Volume, low: Volume, enhanced: Optional[Volume], notes: list) -> Dict[str, float]:
    """PSNR, SSIM and noise of the low-dose and enhanced images against the normal dose."""
    from ..metrics.image import noise_in_uniform_regions, psnr, ssim, uniform_region_mask

    body = normal.array > BODY_THRESHOLD_HU  # patient, not air: noise measured where there is tissue
    added = low.array - normal.array
    metrics = {
        "psnr_low_vs_normal_db_full_window": psnr(low, normal),
        "ssim_low_vs_normal_full_window": ssim(low, normal),
        "psnr_low_vs_normal_db_abdomen_window": psnr(low, normal, window="abdomen"),
        "ssim_low_vs_normal_abdomen_window": ssim(low, normal, window="abdomen"),
        "added_noise_std_hu_in_body": float(added[body].std()) if body.any() else float("nan"),
    }
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
    return metrics


def _check_output_folder(folder: Path) -> None:
    """The demo's folder: new, or an empty folder (never a file, never one holding anything)."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another --output-dir")
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; choose another --output-dir")


def _write_outputs(output_dir, normal, low, enhanced, name, pct, panels, windows, footer, report) -> Path:
    """Everything into a private staging folder first, then moved into place at once; named after this
    process (core.outputs), so that a later run removes it when this one is killed."""
    from ..core import figures
    from ..core.io import write_volume
    from ..core.outputs import make_temp_folder, timestamped_folder

    folder = Path(output_dir) if output_dir else timestamped_folder("qhqgan-demo")
    _check_output_folder(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_folder(folder.parent)
    try:
        write_volume(normal, staging / "normal_dose.nrrd")
        write_volume(low, staging / f"low_dose_{pct}pct.nrrd")
        if enhanced is not None:
            write_volume(enhanced, staging / f"enhanced_{name}.nrrd")
        figures.save_panels_png(panels, staging / "figure.png", windows=[w for w, _ in windows],
                                window_names=[figures.window_name(w, n) for w, n in windows], colorbar=True,
                                footer=footer)
        (staging / "metrics.json").write_text(json.dumps(report, indent=2))
        if folder.exists():
            folder.rmdir()
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
