"""Words for the panel: what a shipped model measurably does, in one line (the summary ``list-models``
prints and the panel's model selector shows as its tooltip, from the card's held-out ``validation``), and
the worker's error messages reworded for a panel that has no command-line flags (:func:`panel_wording`),
and what the panel says when the scene closes during a run (:func:`scene_closed_message`)."""
from __future__ import annotations

import re

#: command-line advice in library and CLI messages -> what to do in the panel instead (issue #29 item 9)
_PANEL_ADVICE = (
    (r"use --device cpu", "choose Device: cpu in the Model section"),
    (r"[Pp]ass force=True \(--force\)( to read it anyway)?",
     "the panel does not read such a volume; if it is CT in HU, convert it or use the command line's --force"),
    (r" \(exit status -?\d+\)$", ""),
)


def panel_wording(message: str) -> str:
    """A worker's one-line error as the panel says it: command-line flags replaced by the control to change."""
    text = str(message)
    for pattern, replacement in _PANEL_ADVICE:
        text = re.sub(pattern, replacement, text)
    return text


def scene_closed_message(task: str) -> str:
    """What the panel and Slicer's error log say when the scene closes while ``task`` (its label) runs.

    Slicer offers a module no way to veto a scene close (``qSlicerMainWindow`` asks only about unsaved
    data), so the run is cancelled and nothing is written: one line saying so.
    """
    return f"the scene was closed while {task} ran: the run was cancelled and nothing was written"


def validation_summary(card: dict) -> str:
    """One line of a model card's held-out validation: PSNR of the model (and of its input) per
    dose, scale or noise condition for enhancement / SR cards (a list of rows), the headline numbers of a
    synthesis card (a dict), or the card's scalar metrics."""
    validation = card.get("validation")
    if isinstance(validation, list):
        rows = [r for r in validation if isinstance(r, dict)]
        gains = [r for r in rows if "mean_gain_db_over_patients" in r]
        if gains:  # patients as the unit (BENCHMARKS.md 'realnoise'): the mean gain over the noisy input
            return "; ".join(f"{r.get('condition')}: {r['mean_gain_db_over_patients']:+.2f} dB"
                             + (f" [{r['ci95_t'][0]:+.2f}, {r['ci95_t'][1]:+.2f}]" if r.get("ci95_t") else "")
                             for r in gains) + f" (gain over the input, soft-tissue window, mean over " \
                                               f"{gains[0].get('patients', '?')} held-out patients)"
        parts = []
        for row in rows:
            if row.get("method") != "model" or "psnr_abdomen" not in row:
                continue
            setting = next((k for k in ("dose", "scale", "condition") if k in row), "scale")
            baseline = next((r for r in rows if r is not row and r.get(setting) == row.get(setting)
                             and "psnr_abdomen" in r), None)
            value = row.get(setting)
            value = f"{value:g}" if isinstance(value, (int, float)) else str(value)
            text = f"{setting} {value}: PSNR {row['psnr_abdomen']:.2f} dB"
            if baseline is not None:
                text += f" ({baseline.get('method', 'input')} {baseline['psnr_abdomen']:.2f})"
            parts.append(text)
        return "; ".join(parts) + (" (abdomen window, held out)" if parts else "")
    if isinstance(validation, dict):
        names = {"frd": "FRD", "kid_mean": "KID", "diversity_samples": "MS-SSIM among samples",
                 "memorization_max": "max SSIM to training"}
        chosen = [(names[k], validation[k]) for k in names if isinstance(validation.get(k), (int, float))]
        chosen = chosen or [(k, v) for k, v in validation.items() if isinstance(v, (int, float))]
        return ", ".join(f"{k} {v:.3g}" for k, v in chosen)
    return ""


#: What each ``evaluate-synth`` number means and which direction is better (issue #31)
SYNTH_METRIC_NOTES = {
    "frd": "lower is better; compare with frd_real_reference (two halves of the real slices)",
    "frd_real_reference": "FRD between two halves of the real slices: what 'as real as real' scores",
    "kid_mean": "lower is better; compare with kid_real_reference",
    "kid_real_reference": "KID between two halves of the real slices",
    "precision": "0-1, higher: samples lie where real slices lie (realism)",
    "recall": "0-1, higher: real slices are covered by samples (diversity)",
    "density": "higher: samples sit in dense real regions (about 1 for real vs real)",
    "coverage": "0-1, higher: share of real slices with a sample nearby",
    "hu_wasserstein": "HU, lower: the samples' HU histogram is nearer the real one",
    "diversity_samples": "MS-SSIM among samples: lower is more diverse; compare with diversity_real",
    "diversity_real": "MS-SSIM among real slices",
}
