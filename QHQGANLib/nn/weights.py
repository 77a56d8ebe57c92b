"""Shipped and custom model weights: list, load (checked against sha256), save with a model card.

Weights are ``safetensors`` files (plain tensors, nothing is unpickled); the
architecture is rebuilt from the configuration stored in the model card and in
the file's own safetensors metadata, so a custom weights file is self-describing.

Console usage::

    >>> from QHQGANLib.nn.weights import list_models, load_model
    >>> [card["name"] for card in list_models()]
    ['hqgan-enhance', ...]
    >>> model = load_model("hqgan-enhance")                 # checked against its sha256
    >>> model = load_model("/path/to/my_model.safetensors") # a custom model saved by save_model
Importing this module is cheap (no torch): listing models works where torch is not installed yet.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..core.constants import __version__
from ..core.resources import model_cards, models_dir


class ModelIntegrityError(ValueError, RuntimeError):
    """A weights file does not match the sha256 in its model card, or is not a valid weights file."""


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_models(task: Optional[str] = None) -> List[Dict[str, Any]]:
    """Model cards of the shipped models (optionally only those of ``task``)."""
    return [c for c in model_cards() if task is None or c.get("task") == task]


def model_paths(path: Union[str, Path]) -> List[Path]:
    """The two files ``save_model(model, path)`` writes: ``<path>.safetensors`` and ``<path>.json``."""
    path = Path(path)
    return [path.with_suffix(".safetensors"), path.with_suffix(".json")]


def save_model(model, path: Union[str, Path], card: Optional[Dict[str, Any]] = None, *,
               overwrite: bool = False) -> Dict[str, Any]:
    """Write ``model`` as ``<path>.safetensors`` plus the card ``<path>.json`` (sha256 filled in).

    Existing files are refused unless ``overwrite=True``; both files are written beside the
    target under temporary names and moved into place only when complete.
    """
    import os

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..core.outputs import check_output_path, claim_output, write_failed
    from .build import model_config

    path = Path(path)
    weights, card_path = model_paths(path)
    for target in (weights, card_path):
        check_output_path(target, overwrite=overwrite)
    config = model_config(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with claim_output(weights):
        tmp_weights = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
        tmp_card = card_path.with_name(f".{card_path.name}.{os.getpid()}.tmp")
        try:
            try:
                save_file(state, str(tmp_weights), metadata={"qhqgan_config": json.dumps(config)})
            except (OSError, SafetensorError) as exc:  # a full disk is a SafetensorError "I/O error: ..."
                if isinstance(exc, OSError) or "I/O error" in str(exc):
                    raise write_failed(weights, exc) from None
                raise
            card = _card(model, config, card, weights.name, sha256_of(tmp_weights), path.stem)
            tmp_card.write_text(json.dumps(card, indent=2) + "\n")
            for target in (weights, card_path):
                check_output_path(target, overwrite=overwrite)  # nothing appeared meanwhile
            os.replace(tmp_weights, weights)
            os.replace(tmp_card, card_path)
        finally:
            tmp_weights.unlink(missing_ok=True)
            tmp_card.unlink(missing_ok=True)
    return card


def _card(model, config, card, weights_name: str, sha256: str, stem: str) -> Dict[str, Any]:
    card = dict(card or {})
    card.setdefault("name", stem)
    card.update({
        "config": config,
        "weights": weights_name,
        "sha256": sha256,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),  # trainable; not batch-norm statistics
        "qhqgan_version": __version__,
        "created": card.get("created") or _dt.date.today().isoformat(),
    })
    return card


def _find_card(name: str) -> Optional[Dict[str, Any]]:
    for card in model_cards():
        if card.get("name") == name:
            return card
    return None


def load_model(name_or_path: Union[str, Path], device: Optional[str] = None,
               quantum_backend: Optional[str] = None):
    """Load a shipped model by name, or a ``.safetensors`` / ``.json`` card from a path.

    The sha256 in the card is checked before anything is loaded; a mismatch raises
    :class:`ModelIntegrityError`. ``quantum_backend`` is ``"torch"`` or
    ``"pennylane:<device>"`` (e.g. ``"pennylane:lightning.qubit"``). Returns the model
    in eval mode with its card as ``model.card``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..core.file_checks import require_regular_file
    from .build import build_from_config, set_quantum_backend

    text = str(name_or_path)
    card = None
    if text.endswith((".json", ".safetensors")) or Path(text).exists():
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model file")
        if path.suffix.lower() not in (".json", ".safetensors"):
            # never another file of the same stem in its place (``X.pt`` is not ``X.safetensors``)
            raise ValueError(f"{path.name}: QHQGAN loads .safetensors weights with their .json card, not "
                             f"{path.suffix or 'suffix-less'} files (pickled weights can run code when loaded)")
        card_path = path.with_suffix(".json")
        if card_path.exists():
            require_regular_file(card_path, role="model card")  # a FIFO would block for ever
            card = json.loads(card_path.read_text())
        weights = path.with_suffix(".safetensors")
    else:
        card = _find_card(text)
        if card is None:
            names = [c["name"] for c in model_cards()]
            raise ValueError(f"no model named {text!r}; available: {', '.join(names) if names else 'none'} "
                             f"(in {models_dir()})")
        weights = models_dir() / card["weights"]
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: the weights file is missing")
    require_regular_file(weights, role="model weights file")
    if card is not None and "sha256" in card:
        actual = sha256_of(weights)
        if actual != card["sha256"]:
            raise ModelIntegrityError(
                f"{weights.name}: sha256 {actual[:12]}... does not match the model card's "
                f"{card['sha256'][:12]}...; the file is corrupt or was replaced. Reinstall the model.")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
        config = (card or {}).get("config") or json.loads(meta.get("qhqgan_config", "null") or "null")
        state = load_file(str(weights))
    except Exception as exc:  # SafetensorError, JSON errors: a damaged or foreign file
        raise ModelIntegrityError(f"{weights}: not a valid QHQGAN weights file ({str(exc).splitlines()[0][:200]}); "
                                  "reinstall the model or save it again") from None
    if not config:
        raise ValueError(f"{weights}: no architecture description (model card or safetensors metadata)")
    try:
        model = build_from_config(config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ModelIntegrityError(f"{weights}: the weights do not fit the architecture in the card "
                                  f"({str(exc).splitlines()[0][:200]}); the file or its card was changed") from None
    model.eval()
    if quantum_backend:
        set_quantum_backend(model, quantum_backend)
    if device:
        model.to(device)
    model.card = card or {"name": weights.stem, "config": config}
    return model
