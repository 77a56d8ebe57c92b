"""Seed-to-seed spread of the enhancement models: a table from model cards of several seeds.

Each card's validation rows come from ``train_shipped_models.py`` (same held-out slices, same
simulated doses, same evaluation seed), so cards of runs that differ only in ``--seed`` can be
set side by side. Writes the "enhance-seeds" section of BENCHMARKS.md.

    python Testing/Benchmarks/train_shipped_models.py --model hqgan-enhance --lr 0.001 --seed 1 --out /tmp/seed1
    python Testing/Benchmarks/seed_table.py Resources/Models /tmp/seed1
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402


def main(folders) -> None:
    results = {}  # (model, dose) -> [psnr per seed]
    seeds = {}
    for folder in folders:
        for card_path in sorted(Path(folder).glob("*-enhance.json")):
            card = json.loads(card_path.read_text())
            seed = card["training"]["seed"]
            seeds.setdefault(card["name"], []).append(seed)
            for row in card["validation"]:
                if row["method"] == "model":
                    results.setdefault((card["name"], row["dose"]), []).append(
                        (row["psnr_abdomen"], row["ssim_abdomen"]))
    lines = ["## Enhancement: seed-to-seed spread", "",
             "Held-out abdomen slices as in the table above (PSNR / SSIM in the abdomen window), one row per "
             "model and dose, one value per training seed (same data, updates and learning rate; only the seed "
             "differs).", "",
             "| model | dose | seeds | PSNR per seed (dB) | mean PSNR | SSIM per seed |", "|---|---|---|---|---|---|"]
    for (name, dose), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        psnrs = [v[0] for v in values]
        lines.append(f"| {name} | {dose:.0%} | {', '.join(map(str, seeds[name]))} | "
                     f"{', '.join(f'{p:.2f}' for p in psnrs)} | {np.mean(psnrs):.2f} | "
                     f"{', '.join(f'{v[1]:.4f}' for v in values)} |")
    write_section("enhance-seeds", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:] or ["Resources/Models"])
