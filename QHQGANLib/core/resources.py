"""Where the shipped resources (model weights and their cards) live.

The models folder is ``Resources/Models`` of the extension (beside ``QHQGANLib``
in a source checkout and in the Slicer extension package), ``<prefix>/share/qhqgan/Models``
after a wheel install (``pip install .``), or the folder named by the environment
variable ``QHQGAN_MODELS_DIR``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List


def installed_models_dirs() -> List[Path]:
    """Where a wheel install puts the shipped models: ``<prefix>/share/qhqgan/Models`` of this
    environment (``sys.prefix``) or of a ``--user`` install."""
    import site
    import sys

    prefixes = [sys.prefix, getattr(site, "USER_BASE", None) or ""]
    return [Path(p) / "share" / "qhqgan" / "Models" for p in prefixes if p]


def models_dir() -> Path:
    """The folder holding ``<name>.json`` model cards and their weight files.

    In order: ``QHQGAN_MODELS_DIR`` when set; ``Resources/Models`` beside the package (a source
    checkout, an editable install, the Slicer extension); the folder a wheel install fills
    (:func:`installed_models_dirs`). When none exists, the checkout's path is returned.
    """
    override = os.environ.get("QHQGAN_MODELS_DIR")
    if override:
        return Path(override).expanduser()
    beside = Path(__file__).resolve().parents[2] / "Resources" / "Models"
    if beside.is_dir():
        return beside
    for folder in installed_models_dirs():
        if folder.is_dir():
            return folder
    return beside


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
