"""The voxel sha256 of the training volumes, added to the cards of models whose training runs did not record
them (issue #27 item 5): the synthesis models (64 and 128) and the two super-resolution models (the
earlier no-circuit-enhance was here too; its retrained run records its own data).

Newer training runs write ``training_data.json`` themselves (``QHQGANLib.training.provenance``) and their
cards carry it. For these older models the files are the ones their cards and benchmark scripts name; the
hashes are computed now, from the same files read the same way (``protocol.load_split``), and the card says
so (``"hashes_computed": "afterwards, ..."``). Only the JSON cards change; the weights and their sha256 do not.

    python Testing/Benchmarks/card_provenance.py            # rewrites the cards in Resources/Models
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import load_split  # noqa: E402

from QHQGANLib.core.resources import models_dir  # noqa: E402
from QHQGANLib.training.provenance import training_data  # noqa: E402

SYNTH = ("abdomen-ct-totalseg/example_ct.nii.gz", "abdomen-ct-totalseg/dicom")
#: model -> the training-split files it was trained on (synth_data.py: the abdomen volumes of the split at the
#: time; bench_sr / bench_through_plane: the split's volumes, example_ct held out for the through-plane model)
TRAINED_ON = {
    **{f"{m}-synth{s}": SYNTH for m in ("hqgan", "mlp-control", "wgangp", "dcgan") for s in ("", "-128")},
    "hqgan-sr2": SYNTH + ("head-ct-vtk/headsq_quarter_hu.nii.gz",),
    "hqgan-srz2": ("abdomen-ct-totalseg/dicom", "head-ct-vtk/headsq_quarter_hu.nii.gz"),
}
PATIENTS = {"abdomen-ct-totalseg/example_ct.nii.gz": "TotalSegmentator example subject",
            "abdomen-ct-totalseg/dicom": "Siemens Biograph40 example series",
            "head-ct-vtk/headsq_quarter_hu.nii.gz": 'VTK "headsq" subject'}


def main() -> None:
    volumes = {v.metadata["protocol"]["path"]: v for v in load_split("train")}
    for name, paths in TRAINED_ON.items():
        card_path = models_dir() / f"{name}.json"
        card = json.loads(card_path.read_text())
        previous = card.get("training_data")
        description = previous if isinstance(previous, str) else (previous or {}).get("description", "")
        recorded = (previous or {}).get("voxel_sha256_16") if isinstance(previous, dict) else None
        computed = training_data([volumes[p] for p in paths])
        if recorded and recorded != computed["voxel_sha256_16"]:
            raise SystemExit(f"{name}: the files named do not match the hashes its run recorded")
        card["training_data"] = {
            "description": description, "files": list(paths),
            "patients": [PATIENTS[p] for p in paths],
            **computed,
            "hashes_computed": "afterwards (2026-12-08), from the files named, read as protocol.load_split reads "
                               "them; " + ("they match the 16-character prefixes its training run recorded" if recorded
                                           else "this model's training run did not record them"),
        }
        if name.endswith(("-synth", "-synth-128")):  # the evaluation slices were never trained on: say so
            card["training_data"]["description"] = (
                "the training patients' abdomen volumes of protocol.json (files below), body-cropped and resampled; "
                "design and learning rate tuned on the tuning patient (KiTS); scored on the evaluation patients' "
                "abdomen slices (validation_data)")
        tmp = card_path.with_name(f".{card_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, card_path)
        print(f"{name}: {len(paths)} volumes, {card['training_data']['n_slices']} slices")


if __name__ == "__main__":
    main()
