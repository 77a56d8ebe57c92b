"""Real scanners' noise beside the simulator's (issue #26, item 2): noise power spectra and levels.

Measured with :func:`QHQGANLib.physics.noise_texture.estimate_nps` (ROI-ensemble NPS in uniform soft tissue,
plane-detrended, ring-averaged; level from ``estimate_noise``):

* **real noise**: the GE water phantom (``reference`` split, STANDARD kernel, 0.49 mm); the own noise of the
  training scans: Lung_Dx-A0001 in its smooth (B) and sharp (L) Philips kernels, Pancreas-CT-CB_001 (Philips
  iDose 3 iterative reconstruction), the Siemens Br38f series. Evaluation patients are not measured here:
  nothing about them may shape training.
* **simulator**: the noise ``simulate_low_dose`` inserts at 25 % dose (low dose minus the normal-dose image,
  measured where the normal-dose image is uniform tissue) on the Siemens series and on Pancreas-CT-CB_001, with
  the default reconstruction filter (``hann``) and the sharper ``shepp-logan`` and ``ram-lak``.

The table gives the level and the NPS mean frequency, per pixel and per mm (textures scale with pixel size);
the figure (``Resources/Images/benchmark-noise-spectra.png``) the normalised radial spectra in cycles/mm.

    python Testing/Benchmarks/bench_noise_texture.py        # BENCHMARKS.md section 'noise-texture' + the figure
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import load_split  # noqa: E402
from report import write_section  # noqa: E402

from QHQGANLib import Volume  # noqa: E402
from QHQGANLib.physics.lowdose import ScannerModel, simulate_low_dose  # noqa: E402
from QHQGANLib.physics.noise_texture import NoiseTexture, estimate_nps  # noqa: E402

FIGURE = Path(__file__).resolve().parents[2] / "Resources" / "Images" / "benchmark-noise-spectra.png"
SIM_SLICES = 3


def _pixel(v: Volume) -> float:
    return 0.5 * (v.spacing[0] + v.spacing[1])


def _middle(v: Volume, n: int) -> Volume:
    k = max(0, v.shape[0] // 2 - n // 2)
    return v.with_geometry(v.array[k:k + n].copy(), v.spacing, v.index_to_physical((0, 0, k)))


def measure() -> List[Tuple[str, str, float, NoiseTexture]]:
    rows = []
    for v in load_split("reference"):
        rows.append(("real", f"GE water phantom {Path(v.metadata['protocol']['path']).stem}, STANDARD", _pixel(v),
                     estimate_nps(v)))
    train = {v.metadata["protocol"]["path"]: v for v in load_split("train")}
    names = {"chest-ct-lungdx/A0001-kernel-B": "Lung_Dx-A0001, Philips kernel B (smooth)",
             "chest-ct-lungdx/A0001-kernel-L": "Lung_Dx-A0001, Philips kernel L (sharp)",
             "abdomen-ct-pancreas-cb": "Pancreas-CT-CB_001, Philips iDose 3 (iterative)",
             "abdomen-ct-totalseg/dicom": "Siemens Biograph40 series, Br38f"}
    for path, label in names.items():
        rows.append(("real", f"{label}: the scan's own noise", _pixel(train[path]), estimate_nps(train[path])))
    for path in ("abdomen-ct-totalseg/dicom", "abdomen-ct-pancreas-cb"):
        normal = _middle(train[path], SIM_SLICES)
        for recon in ("hann", "shepp-logan", "ram-lak"):
            low = simulate_low_dose(normal, 0.25, seed=0, scanner=ScannerModel().with_(recon_filter=recon))
            inserted = low.array - normal.array
            rows.append(("simulator", f"inserted at 25 % on {names[path].split(',')[0]}, filter {recon}",
                         _pixel(normal), estimate_nps(inserted, pixel_mm=_pixel(normal), where=normal.array)))
    return rows


def figure(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for kind, label, pixel, t in rows:
        f = np.asarray(t.frequencies) * 0.5 / pixel  # cycles/mm
        p = np.asarray(t.power) / max(np.max(t.power), 1e-30)
        keep = np.asarray(t.frequencies) <= 1.0
        ax.plot(f[keep], p[keep], "-" if kind == "real" else "--", label=f"{label} ({t.std_hu:.1f} HU)")
    ax.set_xlabel("radial frequency (cycles/mm), up to each image's Nyquist")
    ax.set_ylabel("NPS, normalised to its peak")
    ax.set_title("Noise power spectra: real scanners (solid) and the simulator's inserted noise (dashed)")
    ax.legend(fontsize=6.5, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = FIGURE.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(FIGURE)


def main() -> None:
    rows = measure()
    figure(rows)
    lines = ["## Noise texture: real scanners beside the simulator (issue #26)", "",
             "Noise power spectra measured in uniform soft tissue (`QHQGANLib/physics/noise_texture.py`: ROI-ensemble "
             "NPS, plane-detrended, ring-averaged; level from `estimate_noise`). Real noise: the GE water phantom and "
             "the own noise of the training scans (no evaluation patient is measured: nothing about them may shape "
             "training). Simulator: the noise `simulate_low_dose` inserts at 25 % dose, measured as low dose minus "
             "normal dose where the normal-dose image is uniform tissue. Script: "
             "`Testing/Benchmarks/bench_noise_texture.py`; figure: `Resources/Images/benchmark-noise-spectra.png`.", "",
             "| source | noise | pixel (mm) | std (HU) | NPS mean frequency (cycles/pixel) | (cycles/mm) | regions |",
             "|---|---|---|---|---|---|---|"]
    for kind, label, pixel, t in rows:
        mf = t.mean_frequency()
        lines.append(f"| {kind} | {label} | {pixel:.3f} | {t.std_hu:.1f} | {mf:.3f} | {mf / pixel:.3f} | {t.n_rois} |")
    real = {label: (pixel, t) for kind, label, pixel, t in rows if kind == "real"}
    sim = [(label, pixel, t) for kind, label, pixel, t in rows if kind == "simulator"]
    hann = [t.mean_frequency() for label, _p, t in sim if label.endswith("hann")]
    sharpest = [t.mean_frequency() for label, _p, t in sim if label.endswith("ram-lak")]
    real_mf = [t.mean_frequency() for _p, t in real.values()]
    lines += ["", f"Per pixel, the real noise's mean frequency spans {min(real_mf):.3f}-{max(real_mf):.3f} cycles/pixel; "
              f"the simulator's default (`hann`) inserts {min(hann):.3f}-{max(hann):.3f} and its sharpest filter "
              f"(`ram-lak`) {min(sharpest):.3f}-{max(sharpest):.3f}. "
              + ("The sharp clinical kernel lies above every simulator setting: training that covers real scans needs "
                 "finer noise than the simulator makes." if max(real_mf) > max(sharpest) else
                 "The simulator's filters span the real kernels measured here.")]
    write_section("noise-texture", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
