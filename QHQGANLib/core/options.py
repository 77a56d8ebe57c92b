"""The options of the QHQGAN tasks, defined once: types, defaults, allowed ranges and help.

The ``qhqgan`` command line (:mod:`QHQGANLib.apps.cli`), the background runner's
``TaskRequest`` (:mod:`QHQGANLib.apps.request`) and the Slicer panel's parameter
node (``QHQGAN/QHQGAN.py``) all read their options from :data:`OPTIONS`, so an
option has one name, one default and one range everywhere. Ranges are inclusive.

Console usage::

    >>> from QHQGANLib.core.options import OPTIONS, option_range, validate, task_argv
    >>> option_range("tile_size")                     # what every consumer allows
    (32, 2048)
    >>> validate("dose", 1.5)
    ValueError: dose must be in [0.01, 1], got 1.5
    >>> task_argv("simulate-low-dose", {"dose": 0.25, "seed": 0})
    ['--dose', '0.25', '--seed', '0']
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .constants import HU_MAX, HU_MIN
from .devices import DEVICES
from .kinds import LABEL_SYNTH_TASK, SR_AXES
from .pixel_types import OUTPUT_TYPES

#: ``insert-lesion --kind`` and ``--texture``: what :func:`QHQGANLib.tasks.lesion.insert_lesion` renders (its
#: ``KINDS`` and ``TEXTURES``; core cannot import tasks, ``Testing/test_options.py`` checks they agree).
LESION_KINDS: Tuple[str, ...] = ("hypodense", "hyperdense", "cyst", "calcification")
LESION_TEXTURES: Tuple[str, ...] = ("matched", "smooth", "noise")
#: The widest soft edge of an inserted lesion (mm): half the largest lesion accepted (80 mm across).
MAX_EDGE_MM = 40.0


def check_quantum_backend(value: str) -> None:
    """Refuse anything but ``"torch"`` or ``"pennylane:DEVICE"``."""
    if not (value == "torch" or (value.startswith("pennylane:") and len(value) > len("pennylane:"))):
        raise ValueError(f"quantum_backend must be 'torch' or 'pennylane:DEVICE', got {value!r}")


@dataclass(frozen=True)
class Option:
    """One task option: its Python name, type, default and allowed values.

    ``minimum``/``maximum`` bound numbers (inclusive), ``choices`` lists the allowed
    values, ``check`` is a further test that raises ValueError. ``cli`` is the
    command-line flag (default ``--`` + the name with dashes). ``default=None``
    means "the task decides" (e.g. the task's default model).
    """

    name: str
    type: type
    default: Any
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None
    help: str = ""
    cli: Optional[str] = None
    check: Optional[Callable[[Any], None]] = None

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace("_", "-")

    @property
    def range(self) -> Tuple[Any, Any]:
        return (self.minimum, self.maximum)

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``[32, 2048]`` or ``auto, cpu or cuda``."""
        if self.choices is not None:
            names = [str(c) for c in self.choices]
            return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        if self.minimum is not None and self.maximum is not None:
            return f"[{_text(self.minimum)}, {_text(self.maximum)}]"
        if self.minimum is not None:
            return f">= {_text(self.minimum)}"
        return "any " + self.type.__name__

    def validate(self, value: Any) -> Any:
        """``value`` converted to the option's type; a one-line ValueError naming the option if not allowed."""
        if value is None and self.default is None:
            return None
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{self.name} must be an integer in {self.allowed()}, got {value!r}")
            value = int(value)
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{self.name} must be a number in {self.allowed()}, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{self.name} must be a number in {self.allowed()}, got {value!r}")
        elif self.type is str and isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif not isinstance(value, self.type):
            raise ValueError(f"{self.name} must be a {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be {self.allowed()}, got {value!r}")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise ValueError(f"{self.name} must be in {self.allowed()}, got {_text(value)}")
        if self.check is not None:
            self.check(value)
        return value

    def parse(self, text: str) -> Any:
        """The value of a command-line word (argparse's ``type=``): refuses what :meth:`validate` refuses."""
        try:
            value = self.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if self.type is int else 'a number'} "
                                             f"in {self.allowed()}, got {text!r}") from None
        try:
            return self.validate(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def to_cli(self, value: Any) -> List[str]:
        """``[flag, text]`` for a value, ``[]`` for None."""
        if value is None:
            return []
        return [self.flag, repr(float(value)) if self.type is float else str(value)]


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_between(name: str, value: float, low: float, high: float) -> None:
    """The range check of an optional number (``reference_noise_hu``, ``photons``)."""
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{_text(low)}, {_text(high)}], got {_text(value)}")


#: Every task option, by its Python name (also the attribute name of parsed CLI arguments).
OPTIONS: Dict[str, Option] = {o.name: o for o in (
    Option("model", str, None,
           help="a shipped model name (qhqgan list-models) or a .safetensors file (default: the task's model)"),
    Option("device", str, "auto", choices=DEVICES, help="compute device (auto: CUDA when available)"),
    Option("quantum_backend", str, "torch", check=check_quantum_backend,
           help="torch (fast built-in simulator) or pennylane:DEVICE, e.g. pennylane:lightning.qubit"),
    Option("axis", str, "in-plane", choices=SR_AXES,
           help="super-resolution axis: in-plane (pixels, x2) or z (thick slices to thin slices, x2, x3 or x4; "
                "through-plane)"),
    Option("scale", int, 2, choices=(2, 3, 4),
           help="super-resolution factor: 2 in-plane; 2, 3 or 4 along z (--axis z)"),
    Option("fine_tune_steps", int, 0, check=lambda v: _check_between("fine_tune_steps", v, 0, 5000),
           help="through-plane (--axis z): first train the model this many steps on the input's own in-plane "
                "data with its slice profile, in [0, 5000] (0: apply the shipped model as it is; about 200 "
                "steps take minutes on a CPU; with no shipped model for the scale, a fresh one is trained)"),
    Option("tile_size", int, 512, minimum=32, maximum=2048,
           help="largest tile (output pixels) computed at once; smaller saves memory"),
    Option("overlap", float, 0.0, minimum=0.0, maximum=0.75,
           help="extra context around each tile as a fraction of the tile (0: the network's receptive "
                "field, which already makes tiling seamless)"),
    Option("tile_batch", int, 4, minimum=1, maximum=64,
           help="tiles computed per forward pass; more is faster on a GPU and needs more memory"),
    Option("n_samples", int, 8, minimum=1, maximum=256, cli="--n", help="number of synthetic slices"),
    Option("seed", int, 0, minimum=0, maximum=2 ** 31 - 1, help="random seed: same seed, same result"),
    Option("dose", float, 0.25, minimum=0.01, maximum=1.0,
           help="simulated dose as a fraction of the input's dose (0.25 = quarter dose)"),
    # optional numbers: None (the default) means "decide from the image", so their range is a check,
    # not minimum/maximum (which the Slicer panel turns into spin boxes with a numeric default)
    Option("reference_noise_hu", float, None, check=lambda v: _check_between("reference_noise_hu", v, 0.5, 200.0),
           help="the input's own noise (HU, std in uniform soft tissue) that the simulated dose is calibrated "
                "to, in [0.5, 200] (default: estimated from the image)"),
    Option("strength", float, 1.0, minimum=0.0, maximum=1.0,
           help="enhancement strength: output = input + strength x (model - input); 0 = the input unchanged, "
                "1 = the full model (default); in between the noise falls steadily and keeps its natural texture"),
    Option("adapt_steps", int, 0, check=lambda v: _check_between("adapt_steps", v, 0, 5000),
           help="adapt to this scan first: fine-tune the model this many updates on the input's own noise "
                "(self-supervised: the scan recorrupted with noise of its own measured texture and level), in "
                "[0, 5000] (0: the model as shipped; 300, the panel's 'Adapt to this scan', take 1-2 minutes on a CPU)"),
    Option("adapt_time_limit", float, 600.0, minimum=10.0, maximum=7200.0,
           help="time budget of the adaptation in seconds: it stops there and the model adapted so far is used"),
    Option("target_noise_hu", float, None, check=lambda v: _check_between("target_noise_hu", v, 0.5, 200.0),
           help="auto strength: the strength whose output has this noise (HU, std in uniform soft tissue), "
                "in [0.5, 200]; replaces --strength"),
    Option("photons", float, None, check=lambda v: _check_between("photons", v, 1e3, 1e9),
           help="a fixed incident photon count per 1 mm detector element per view, in [1e3, 1e9]: no "
                "calibration to the input's noise (1e6 was the fixed default before calibration)"),
    # insert-lesion (issue #30): what tasks.lesion.insert_lesion renders; --kind, --hu, --texture, --edge-mm
    Option("lesion_kind", str, "hypodense", choices=LESION_KINDS, cli="--kind",
           help="hypodense / hyperdense: 40 HU below / above the surrounding tissue's median; cyst: 10 HU; "
                "calcification: 400 HU"),
    Option("lesion_hu", float, None, cli="--hu", check=lambda v: _check_between("lesion_hu", v, HU_MIN, HU_MAX),
           help=f"the lesion's mean HU, in [{HU_MIN:g}, {HU_MAX:g}] (default: the kind's)"),
    Option("texture", str, "matched", choices=LESION_TEXTURES,
           help="matched: the scan's own noise kept; smooth: no noise; noise: noise drawn with the scan's "
                "spectrum and level (uses --seed)"),
    Option("edge_mm", float, 1.5, check=lambda v: _check_between("edge_mm", v, 0.0, MAX_EDGE_MM),
           help=f"width of the soft edge inside the mask, in [0, {MAX_EDGE_MM:g}] mm"),
    Option("output_type", str, "auto", choices=OUTPUT_TYPES,
           help="pixel type of the output file: auto = int16 (whole HU, rounded) when the input stored integer "
                "pixels (DICOM; integer NRRD/NIfTI/MHA) and every value fits, else float32 (as a float input); "
                "int16 or float32 force it; recorded in the output's history (a --dicom series is always int16)"),
)}

#: The options of each task, in command-line order.
TASK_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "enhance": ("model", "device", "quantum_backend", "tile_size", "overlap", "tile_batch", "strength",
                "target_noise_hu", "adapt_steps", "adapt_time_limit", "output_type"),
    "super-resolve": ("model", "device", "quantum_backend", "axis", "scale", "fine_tune_steps", "tile_size", "overlap",
                      "tile_batch", "output_type"),
    "synthesize": ("model", "device", "quantum_backend", "n_samples", "seed"),
    "simulate-low-dose": ("dose", "seed", "reference_noise_hu", "photons", "output_type"),
    "insert-lesion": ("lesion_kind", "lesion_hu", "texture", "seed", "edge_mm", "output_type"),
    # the number of samples is the command's own --samples (apps.request.build_command gives n_samples there)
    LABEL_SYNTH_TASK: ("model", "device", "quantum_backend", "seed"),
}


#: ``fine_tune_steps`` when the Slicer panel's "Fine-tune on this volume" box is ticked (minutes on a CPU).
FINE_TUNE_DEFAULT_STEPS = 200
#: ``adapt_steps`` when the Slicer panel's "Adapt to this scan" box is ticked (chosen on the tuning patient,
#: BENCHMARKS.md 'adapt'; about a minute on a CPU).
ADAPT_DEFAULT_STEPS = 300
#: Super-resolution factors per axis (``scale`` allows their union; :func:`check_task_values` the pair).
SCALES_BY_AXIS: Dict[str, Tuple[int, ...]] = {"in-plane": (2,), "z": (2, 3, 4)}


def check_task_values(task: str, values: Mapping[str, Any]) -> None:
    """The checks between options of one task (each option alone is checked by :func:`validate`):
    super-resolution's ``scale`` must suit its ``axis``, and ``fine_tune_steps`` needs ``axis="z"``.
    A one-line ValueError otherwise."""
    if task != "super-resolve":
        return
    axis = values.get("axis", OPTIONS["axis"].default)
    scale = values.get("scale", OPTIONS["scale"].default)
    allowed = SCALES_BY_AXIS.get(axis, ())
    if scale not in allowed:
        if axis == "in-plane":
            raise ValueError(f"scale must be 2 for in-plane super-resolution, got {scale} "
                             "(2, 3 or 4 with axis z: thick slices to thin slices)")
        raise ValueError(f"scale must be {', '.join(map(str, allowed))} along {axis}, got {scale}")
    if axis != "z" and values.get("fine_tune_steps", 0):
        raise ValueError("fine_tune_steps is for through-plane super-resolution (axis z) only")


def option(name: str) -> Option:
    """The option called ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return OPTIONS[name]
    except KeyError:
        raise KeyError(f"no option {name!r}; known: {', '.join(OPTIONS)}") from None


def option_default(name: str) -> Any:
    return option(name).default


def option_from_text(name: str, text: str) -> Any:
    """The value of option ``name`` typed as text in a field (the panel's "Mean HU"): None for an empty
    text (the option's "decide for me"), else the number checked like :func:`validate`; a ValueError
    naming the option otherwise."""
    opt = option(name)
    text = str(text or "").strip()
    if not text:
        return None if opt.default is None else opt.default
    try:
        value = opt.type(text)
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if opt.type is int else 'a number'}, got {text!r}") from None
    return opt.validate(value)


def option_range(name: str) -> Tuple[Any, Any]:
    """``(minimum, maximum)`` of a numeric option (what the Slicer spin boxes allow)."""
    return option(name).range


def task_options(task: str) -> List[Option]:
    """The options of ``task``, in command-line order."""
    if task not in TASK_OPTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_OPTIONS)}")
    return [OPTIONS[name] for name in TASK_OPTIONS[task]]


def validate(name: str, value: Any) -> Any:
    """``value`` checked against option ``name`` (converted to its type); ValueError otherwise."""
    return option(name).validate(value)


def add_option_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """Add option ``name`` to ``parser``: its flag, the schema's default, a ``type`` that refuses values
    out of range with the allowed range, and help naming the default and the range."""
    opt = option(name)
    words = [opt.help]
    if opt.default is not None:
        words.append(f"default {_text(opt.default)}")
    if opt.choices is None and opt.minimum is not None:
        words.append(f"allowed {opt.allowed()}")
    help_text = "; ".join(w for w in words if w).replace("%", "%%")
    if opt.type is str and opt.check is None and opt.choices is None:
        parser.add_argument(opt.flag, dest=opt.name, default=opt.default, help=help_text)
        return
    parser.add_argument(opt.flag, dest=opt.name, type=opt.parse, default=opt.default, choices=opt.choices,
                        metavar=None if opt.choices else opt.name.upper(), help=help_text)


def add_task_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """Add every option of ``task`` to a command's ``parser``."""
    for opt in task_options(task):
        add_option_argument(parser, opt.name)


def task_argv(task: str, values: Mapping[str, Any]) -> List[str]:
    """The command-line words giving ``values`` to ``task``'s options (None values are left out)."""
    argv: List[str] = []
    for opt in task_options(task):
        argv += opt.to_cli(values.get(opt.name, opt.default))
    return argv
