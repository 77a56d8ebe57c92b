"""The tasks and the kinds of model that serve them, defined once.

Which tasks exist, which read an input volume, the model each task uses when
none is named, the architectures (``config["arch"]`` of a model card) and training
methods that make models for it, and the shipped models to prefer. The CLI, the
background runner, the demo, the task functions and the Slicer panel look their
default model names up here. No torch at import time.

Console usage::

    >>> from QHQGANLib.core.kinds import TASKS, default_model, models_for_task
    >>> default_model("super-resolve", scale=2)
    'hqgan-sr2'
    >>> default_model("super-resolve", scale=3, axis="z")      # through-plane (thick -> thin slices)
    'hqgan-srz3'
    >>> [card["name"] for card in models_for_task("enhance")]   # shipped, default first
    ['hqgan-film-enhance', 'hqgan-enhance', 'mlp-control-film-enhance', 'mlp-control-enhance', 'no-circuit-enhance', 'redcnn-enhance']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

#: ``train-enhance --arch``: the enhancement / super-resolution architectures (QHQGANLib.training.enhancement):
#: HQGAN, its controls (``mlp-control``: the circuit replaced by a fair MLP; ``no-circuit``: the block
#: removed; ``bottleneck-ablation``: the legacy 8 -> 1 -> 8 MLP, not a fair control), RED-CNN, and the
#: modulating placement of the circuit and its MLP control (``hqgan-film``, ``mlp-control-film``; issue #26).
ENHANCE_ARCHS: Tuple[str, ...] = ("hqgan", "mlp-control", "no-circuit", "bottleneck-ablation", "redcnn", "hqgan-film",
                                  "mlp-control-film")
#: ``train-synth --method``: the synthesis methods (QHQGANLib.nn.synthesis.METHODS), the same controls.
SYNTH_METHODS: Tuple[str, ...] = ("hqgan", "mlp-control", "no-circuit", "bottleneck-ablation", "wgan-gp", "dcgan")
#: ``train-from-labels --method``: the label-conditioned generators (QHQGANLib.nn.label_synthesis.METHODS): HQGAN
#: (the circuit makes each sample's style), its fair MLP control in the circuit's place, the classical SPADE
#: baseline (Gaussian noise through a linear layer); and the ``config["arch"]`` of their cards (issue #30).
LABEL_SYNTH_METHODS: Tuple[str, ...] = ("hqgan", "mlp-control", "spade")
LABEL_SYNTH_ARCHS: Tuple[str, ...] = ("hqgan-labels", "mlp-control-labels", "spade-labels")
#: The task of those cards and its command; the model ``synthesize-from-labels`` uses when none is named (none is
#: shipped yet: ``qhqgan train-from-labels`` makes one). The panel's "Synthesize from segmentation".
LABEL_SYNTH_TASK = "synthesize-from-labels"
#: ``qhqgan insert-lesion``: a synthetic lesion rendered into a real CT (issue #30); the panel's "Insert lesion".
LESION_TASK = "insert-lesion"
LABEL_SYNTH_DEFAULT_MODEL = "hqgan-labels"
#: Names of earlier versions, still accepted by ``TrainConfig.arch`` / ``SynthConfig.method`` and
#: stored in the retired ``ablation-synth`` card: "ablation" is the legacy bottleneck.
LEGACY_NAMES: Dict[str, str] = {"ablation": "bottleneck-ablation"}
#: ``config["arch"]`` of enhancement cards: the architectures and the legacy name.
_ENHANCE_CARD_ARCHS: Tuple[str, ...] = ENHANCE_ARCHS + ("ablation",)


@dataclass(frozen=True)
class TaskKind:
    """A task: its CLI command name, whether it reads an input volume, and its models.

    ``default_model`` may hold ``{scale}`` (super-resolution models are per factor);
    ``preferred_models`` are shipped names, best first; ``architectures`` are the
    ``arch`` values of model cards that serve the task; ``methods`` the training
    choices that make them. A task without models (``simulate-low-dose``) has none.
    """

    name: str
    needs_input: bool
    default_model: Optional[str] = None
    preferred_models: Tuple[str, ...] = ()
    architectures: Tuple[str, ...] = ()
    methods: Tuple[str, ...] = ()

    @property
    def uses_model(self) -> bool:
        return self.default_model is not None


#: The tasks, by their CLI command name, in the order the panel lists them.
KINDS: Dict[str, TaskKind] = {k.name: k for k in (
    # the default: the shipped model with the highest mean gain on the evaluation patients under realistic noise
    # (BENCHMARKS.md 'realnoise', the rule of Testing/Benchmarks/bench_realnoise.py; issue #26 item 6)
    TaskKind("enhance", True, "hqgan-film-enhance", ("hqgan-film-enhance", "hqgan-enhance", "mlp-control-film-enhance",
                                                     "mlp-control-enhance", "no-circuit-enhance", "redcnn-enhance"),
             architectures=_ENHANCE_CARD_ARCHS, methods=ENHANCE_ARCHS),
    TaskKind("super-resolve", True, "hqgan-sr{scale}", ("hqgan-sr{scale}",),
             architectures=_ENHANCE_CARD_ARCHS, methods=ENHANCE_ARCHS),
    TaskKind("synthesize", False, "hqgan-synth", ("hqgan-synth", "mlp-control-synth", "wgangp-synth", "dcgan-synth",
                                                  "hqgan-synth-128", "mlp-control-synth-128", "wgangp-synth-128",
                                                  "dcgan-synth-128"),
             architectures=("hqgan-synth", "mlp-control-synth", "no-circuit-synth", "bottleneck-ablation-synth",
                            "wgan-gp", "dcgan", "ablation-synth"), methods=SYNTH_METHODS),
    TaskKind("simulate-low-dose", True),
    # issue #30 item 4: the input is a CT and a segment, or a segmentation / label map of tissue classes
    TaskKind(LESION_TASK, True),
    TaskKind(LABEL_SYNTH_TASK, True, LABEL_SYNTH_DEFAULT_MODEL, (LABEL_SYNTH_DEFAULT_MODEL,),
             architectures=LABEL_SYNTH_ARCHS, methods=LABEL_SYNTH_METHODS),
)}

#: Super-resolution axes (option ``axis``): in-plane pixels, or slices (through-plane, along z).
SR_AXES: Tuple[str, ...] = ("in-plane", "z")
#: The model through-plane super-resolution uses when none is named (one per scale; a missing one
#: is an error that says to fine-tune on the volume or train one: QHQGANLib.tasks.through_plane).
Z_DEFAULT_MODEL = "hqgan-srz{scale}"

TASKS: Tuple[str, ...] = tuple(KINDS)
#: Tasks that read an input volume (synthesis makes new images from noise).
INPUT_TASKS: Tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.needs_input)
#: Tasks that run a trained model.
MODEL_TASKS: Tuple[str, ...] = tuple(k.name for k in KINDS.values() if k.uses_model)
#: Tasks that read a segment or label map (the panel's segmentation selector: a segmentation node or a labelmap
#: node) and always make NEW synthetic nodes, never written into an existing volume (apps.segment_task).
SEGMENT_TASKS: Tuple[str, ...] = (LESION_TASK, LABEL_SYNTH_TASK)
#: Tasks whose results are synthetic images (named and marked so: core.naming).
SYNTHETIC_TASKS: Tuple[str, ...] = ("synthesize",) + SEGMENT_TASKS
#: What ``train-enhance --task`` trains.
TRAINABLE_IMAGE_TASKS: Tuple[str, ...] = ("enhance", "super-resolve")


def task_kind(task: str) -> TaskKind:
    """The :class:`TaskKind` of ``task``; ValueError naming the known tasks otherwise."""
    try:
        return KINDS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}") from None


def default_model(task: str, scale: int = 2, axis: str = "in-plane") -> Optional[str]:
    """The model ``task`` uses when none is named (None for a task without a model); ``axis="z"``:
    through-plane super-resolution."""
    name = task_kind(task).default_model
    if task == "super-resolve" and axis != "in-plane":
        if axis not in SR_AXES:
            raise ValueError(f"axis must be one of {', '.join(SR_AXES)}, got {axis!r}")
        return Z_DEFAULT_MODEL.format(scale=scale)
    return None if name is None else name.format(scale=scale)


#: Name prefixes of the research controls (listed in the panel only on request; the CLI lists all).
RESEARCH_PREFIXES = ("mlp-control", "no-circuit", "bottleneck-ablation", "ablation")


def is_research_model(name: str) -> bool:
    """A control the benchmarks compare the quantum models with, not a model for clinical use."""
    return str(name).startswith(RESEARCH_PREFIXES)


def preferred_models(task: str, scale: int = 2) -> Tuple[str, ...]:
    """Shipped model names for ``task``, best first (the demo and ``qhqgan evaluate`` use them)."""
    return tuple(name.format(scale=scale) for name in task_kind(task).preferred_models)


def card_tasks(card: Dict) -> Optional[List[str]]:
    """The tasks a model card declares (``task`` or ``tasks``); None when it declares none."""
    tasks = card.get("tasks", card.get("task"))
    if tasks is None:
        return None
    return [tasks] if isinstance(tasks, str) else list(tasks)


def card_axis(card: Dict) -> str:
    """The super-resolution axis a model card serves (``"in-plane"`` unless it says ``"z"``)."""
    return str(card.get("axis", "in-plane"))


def models_for_task(task: str, axis: Optional[str] = None) -> List[Dict]:
    """Shipped model cards usable for ``task`` (a card declaring no task fits all), the task's
    default model first, then by name. ``axis`` (super-resolution): only the cards of that axis."""
    from .resources import model_cards

    default = default_model(task, axis=axis or "in-plane") if task in KINDS else None
    fitting = [card for card in model_cards() if card_tasks(card) is None or task in card_tasks(card)]
    if axis is not None and task == "super-resolve":
        fitting = [card for card in fitting if card_axis(card) == axis]
    return sorted(fitting, key=lambda card: (card["name"] != default, card["name"]))
