"""Where the shipped resources (model weights and their cards) live.

The models folder is ``Resources/Models`` of the extension (beside ``QHQGANLib``
in a source checkout and in the Slicer extension package), or the folder named
by the environment variable ``QHQGAN_MODELS_DIR``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List


def models_dir() -> Path:
    """The folder holding ``<name>.json`` model cards and their weight files."""
    override = os.environ.get("QHQGAN_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / "Resources" / "Models"


def model_cards() -> List[Dict]:
    """The model cards found in :func:`models_dir` (an empty list when none ship yet)."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    cards = []
    for path in sorted(folder.glob("*.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and "name" in card:
            cards.append(card)
    return cards
