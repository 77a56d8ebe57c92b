"""One option schema (QHQGANLib.core.options), three consumers that must agree with it.

The ``qhqgan`` CLI parser, the background runner's ``TaskRequest`` / ``build_command`` and
the Slicer panel (the parameter node of QHQGAN/QHQGAN.py, read with ``ast``, and the spin
boxes of QHQGAN/Resources/UI/QHQGAN.ui, read as XML) have the schema's defaults and ranges;
the tasks and default models come from QHQGANLib.core.kinds and ship in Resources/Models.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from QHQGANLib.apps.cli import build_parser
from QHQGANLib.apps.request import TaskRequest, build_command
from QHQGANLib.core import kinds
from QHQGANLib.core.options import OPTIONS, TASK_OPTIONS, option_range, task_argv, task_options, validate

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "QHQGAN" / "QHQGAN.py"
UI = REPO / "QHQGAN" / "Resources" / "UI" / "QHQGAN.ui"
RANGED = sorted(name for name, o in OPTIONS.items() if o.minimum is not None)


def parse(argv):
    return build_parser().parse_args(argv)


def task_argv_head(task: str) -> list:
    """The positional words of a task's command (synthesis has no input; a lesion has a mask)."""
    if task == "synthesize":
        return [task, "out_synthetic.nrrd"]
    if task == kinds.LESION_TASK:
        return [task, "in.nrrd", "mask.nrrd", "out_synthetic.nrrd"]
    return [task, "in.nrrd", "out_synthetic.nrrd" if task in kinds.SYNTHETIC_TASKS else "out.nrrd"]


def outside(name: str) -> list:
    """Values just outside the option's range."""
    o = OPTIONS[name]
    step = 1 if o.type is int else 0.01
    return [o.minimum - step, o.maximum + step]


# ---------------------------------------------------------------------------
# the schema itself
# ---------------------------------------------------------------------------
def test_schema_is_consistent():
    assert tuple(TASK_OPTIONS) == kinds.TASKS
    for name, o in OPTIONS.items():
        assert o.name == name and o.help, name
        assert validate(name, o.default) == o.default, name  # every default is allowed
        if o.minimum is not None:
            assert o.minimum <= o.default <= o.maximum and o.type in (int, float), name
    used = {n for names in TASK_OPTIONS.values() for n in names}
    assert used == set(OPTIONS), "an option no task uses"


def test_validate_names_the_option_and_its_range():
    with pytest.raises(ValueError, match=re.escape("tile_size must be in [32, 2048], got 16")):
        validate("tile_size", 16)
    with pytest.raises(ValueError, match=re.escape("overlap must be in [0, 0.75], got 0.8")):
        validate("overlap", 0.8)
    with pytest.raises(ValueError, match=re.escape("n_samples must be an integer in [1, 256], got '4'")):
        validate("n_samples", "4")
    with pytest.raises(ValueError, match=re.escape("device must be auto, cpu or cuda, got 'tpu'")):
        validate("device", "tpu")
    with pytest.raises(KeyError, match="no option 'tile'"):
        validate("tile", 1)
    assert validate("dose", 1) == 1.0 and validate("model", None) is None
    assert validate("model", Path("/w/m.safetensors")) == "/w/m.safetensors"


# ---------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("task", kinds.TASKS)
def test_cli_has_every_task_option_with_the_schema_default(task):
    args = parse(task_argv_head(task))
    assert args.command == task
    for o in task_options(task):
        assert getattr(args, o.name) == o.default, f"{task} {o.flag}"


@pytest.mark.parametrize("task", kinds.TASKS)
def test_cli_takes_the_range_edges_and_refuses_values_outside(task, capsys):
    for o in task_options(task):
        if o.minimum is None:
            continue
        for edge in o.range:
            assert getattr(parse(task_argv_head(task) + [o.flag, str(edge)]), o.name) == edge
        for bad in outside(o.name):
            with pytest.raises(SystemExit):
                parse(task_argv_head(task) + [o.flag, str(bad)])
            err = capsys.readouterr().err
            assert f"argument {o.flag}: {o.name} must be in {o.allowed()}" in err, err


def test_cli_refuses_bad_choices_and_words(capsys):
    for argv, words in ((["--device", "tpu"], "device must be auto, cpu or cuda"),
                        (["--quantum-backend", "qiskit"], "quantum_backend must be 'torch' or 'pennylane:DEVICE'"),
                        (["--tile-size", "big"], "expected an integer in [32, 2048], got 'big'"),
                        (["--scale", "4"], "scale must be 2")):
        with pytest.raises(SystemExit):
            parse(["super-resolve", "in.nrrd", "out.nrrd"] + argv)
        assert words in capsys.readouterr().err


def test_demo_dose_and_seed_use_the_schema(capsys):
    args = parse(["demo"])
    assert (args.dose, args.seed) == (OPTIONS["dose"].default, OPTIONS["seed"].default)
    with pytest.raises(SystemExit):
        parse(["demo", "--dose", "0"])
    assert "dose must be in [0.01, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# TaskRequest and build_command
# ---------------------------------------------------------------------------
def test_task_request_fields_are_the_options():
    fields = {f.name: f.default for f in dataclasses.fields(TaskRequest)}
    assert fields.pop("task") in kinds.TASKS
    assert fields == {name: o.default for name, o in OPTIONS.items()}


@pytest.mark.parametrize("name", RANGED)
def test_task_request_refuses_what_the_cli_refuses(name):
    for bad in outside(name):
        with pytest.raises(ValueError, match=re.escape(f"{name} must be in {OPTIONS[name].allowed()}")):
            TaskRequest(**{name: bad})
    for edge in option_range(name):
        assert getattr(TaskRequest(**{name: edge}), name) == edge


@pytest.mark.parametrize("task", kinds.TASKS)
def test_build_command_parses_back_to_the_same_values(task):
    lows = {name: OPTIONS[name].minimum for name in RANGED}
    highs = {name: OPTIONS[name].maximum for name in RANGED}
    custom = dict(model="/w/my weights.safetensors", device="cpu", quantum_backend="pennylane:lightning.qubit",
                  tile_size=100, overlap=0.3333333333333333, tile_batch=7, n_samples=3, seed=123456789, dose=0.123)
    for values in ({}, lows, highs, custom):
        request = TaskRequest(task, **values)
        mask = {"mask_path": "mask.nrrd"} if task == kinds.LESION_TASK else {}
        args = parse(build_command(request, "in.nrrd", "out_synthetic.nrrd", "python", **mask)[3:])
        assert args.command == task and args.progress == "lines"
        for o in task_options(task):
            assert getattr(args, o.name) == getattr(request, o.name), (task, o.name, values)
        if task == kinds.LABEL_SYNTH_TASK:  # the command's own --samples takes the panel's number of samples
            assert args.samples == request.n_samples


def test_lesion_options_are_the_cli_and_the_library():
    """insert-lesion's --kind/--hu/--texture/--seed/--edge-mm come from the schema and take what insert_lesion does."""
    from QHQGANLib.core.options import LESION_KINDS, LESION_TEXTURES
    from QHQGANLib.tasks.lesion import KINDS, TEXTURES

    assert LESION_KINDS == tuple(KINDS) and LESION_TEXTURES == tuple(TEXTURES)
    args = parse(task_argv_head(kinds.LESION_TASK) + ["--kind", "cyst", "--hu", "-20", "--texture", "noise",
                                                      "--seed", "3", "--edge-mm", "0"])
    assert (args.lesion_kind, args.lesion_hu, args.texture, args.seed, args.edge_mm) == ("cyst", -20.0, "noise", 3, 0.0)
    for bad in (["--hu", "5000"], ["--kind", "tumour"], ["--edge-mm", "-1"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            parse(task_argv_head(kinds.LESION_TASK) + bad)
    with pytest.raises(ValueError, match="needs a mask"):
        build_command(TaskRequest(kinds.LESION_TASK), "in.nrrd", "out_synthetic.nrrd", "python")
    with pytest.raises(ValueError, match="takes no mask"):
        build_command(TaskRequest("enhance"), "in.nrrd", "out.nrrd", "python", mask_path="mask.nrrd")
    from QHQGANLib.core.options import option_from_text

    assert option_from_text("lesion_hu", " ") is None and option_from_text("lesion_hu", "-20") == -20.0
    with pytest.raises(ValueError, match="lesion_hu must be a number"):
        option_from_text("lesion_hu", "dark")
    with pytest.raises(ValueError, match=re.escape("lesion_hu must be in [-1024, 3071]")):
        option_from_text("lesion_hu", "5000")


def test_task_argv_leaves_out_the_default_model():
    assert task_argv("enhance", {})[:2] == ["--device", "auto"]
    assert task_argv("synthesize", {"model": "m", "n_samples": 2})[:2] == ["--model", "m"]
    assert "--n" in task_argv("synthesize", {"n_samples": 2})


# ---------------------------------------------------------------------------
# the Slicer panel: QHQGAN.py's parameter node and the .ui spin boxes
# ---------------------------------------------------------------------------
def _module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(), filename=str(MODULE))


def _parameter_node_fields() -> dict:
    """``@parameterNodeWrapper`` fields of QHQGAN.py: name -> (annotation source, default source)."""
    for node in _module_tree().body:
        if isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            return {s.target.id: (ast.unparse(s.annotation), ast.unparse(s.value) if s.value else None)
                    for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in QHQGAN.py")


def _module_constant(name: str):
    for node in _module_tree().body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} in QHQGAN.py")


def _ui_spin_boxes() -> dict:
    """SlicerParameterName -> (objectName, class, minimum, maximum, value) of the .ui's spin boxes."""
    found = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        if widget.get("class") not in ("QSpinBox", "QDoubleSpinBox"):
            continue
        props = {p.get("name"): p for p in widget.findall("property")}
        numbers = [float(props[key][0].text) for key in ("minimum", "maximum", "value")]  # all explicit
        found[props["SlicerParameterName"].findtext("string")] = (widget.get("name"), widget.get("class"), *numbers)
    return found


#: Ranged options the panel leaves at their default: the "Adapt to this scan first" box gives only
#: ``adapt_steps`` (ADAPT_DEFAULT_STEPS), the adaptation keeps the schema's time budget.
NOT_ON_PANEL = {"adapt_time_limit"}


def test_slicer_parameter_node_takes_ranges_and_defaults_from_the_schema():
    ranged = {}
    for field, (annotation, default) in _parameter_node_fields().items():
        if "WithinRange" not in annotation:
            continue
        match = re.fullmatch(r"Annotated\[(int|float), WithinRange\(\*option_range\('(\w+)'\)\)\]", annotation)
        assert match, f"{field}: {annotation} does not take its range from the schema"
        type_name, name = match.groups()
        assert OPTIONS[name].type.__name__ == type_name, field
        assert default == f"option_default('{name}')", f"{field} = {default}: not the schema's default"
        ranged[field] = name
    assert sorted(ranged.values()) == sorted(set(RANGED) - NOT_ON_PANEL), "every ranged option is on the panel"
    # the .ui spin boxes: bound to those fields, with the schema's range and default, named in SPIN_BOX_OPTIONS
    boxes = _ui_spin_boxes()
    assert set(boxes) == set(ranged)
    spin_box_options = _module_constant("SPIN_BOX_OPTIONS")
    for field, name in ranged.items():
        object_name, cls, low, high, value = boxes[field]
        assert cls == ("QSpinBox" if OPTIONS[name].type is int else "QDoubleSpinBox"), field
        assert (low, high) == option_range(name), f"{object_name}: .ui range {(low, high)}"
        assert value == OPTIONS[name].default, f"{object_name}: .ui value {value}"
        assert spin_box_options[object_name] == name


def test_slicer_choices_match_the_schema():
    tree = _module_tree()
    values = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in ("Task", "ComputeDevice", "LesionKind", "LesionTexture"):
            values[node.name] = tuple(ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.Assign))
    assert values["Task"] == kinds.TASKS
    assert values["ComputeDevice"] == OPTIONS["device"].choices
    assert values["LesionKind"] == OPTIONS["lesion_kind"].choices
    assert values["LesionTexture"] == OPTIONS["texture"].choices


# ---------------------------------------------------------------------------
# kinds: the tasks and their models
# ---------------------------------------------------------------------------
def test_kinds_agree_with_the_library():
    from QHQGANLib.nn.synthesis import ARCH_OF_METHOD, METHODS
    from QHQGANLib.training.enhancement import ARCHS

    assert kinds.SYNTH_METHODS == METHODS and kinds.ENHANCE_ARCHS == ARCHS
    assert set(kinds.KINDS["synthesize"].architectures) == set(ARCH_OF_METHOD.values())
    assert kinds.INPUT_TASKS == ("enhance", "super-resolve", "simulate-low-dose", "insert-lesion",
                                 "synthesize-from-labels")
    assert kinds.MODEL_TASKS == ("enhance", "super-resolve", "synthesize", "synthesize-from-labels")
    from QHQGANLib.nn.label_synthesis import ARCH_OF_METHOD as LABEL_ARCHS, METHODS as LABEL_METHODS

    assert kinds.LABEL_SYNTH_METHODS == LABEL_METHODS
    assert set(kinds.KINDS[kinds.LABEL_SYNTH_TASK].architectures) == set(LABEL_ARCHS.values())
    assert kinds.default_model("simulate-low-dose") is None and kinds.default_model("super-resolve", 3) == "hqgan-sr3"
    with pytest.raises(ValueError, match="unknown task 'denoise'"):
        kinds.default_model("denoise")


def test_default_and_preferred_models_ship_for_their_task():
    folder = REPO / "Resources" / "Models"
    for task in kinds.MODEL_TASKS:
        if task == kinds.LABEL_SYNTH_TASK and not (folder / f"{kinds.default_model(task)}.json").is_file():
            assert kinds.models_for_task(task) == []  # none ships yet: the panel says so (apps.request.NO_LABEL_MODEL)
            continue
        names = (kinds.default_model(task),) + kinds.preferred_models(task)
        assert names[0] == names[1], f"{task}: the default model is the preferred one"
        for name in names:
            card = json.loads((folder / f"{name}.json").read_text())
            assert card["task"] == task and card["config"]["arch"] in kinds.KINDS[task].architectures, name
        assert [c["name"] for c in kinds.models_for_task(task)][0] == names[0]


def test_no_default_model_name_is_written_outside_kinds():
    """Default model names live in core/kinds.py; elsewhere they are looked up (docstrings may show them)."""
    offenders = []
    for path in sorted((REPO / "QHQGANLib").rglob("*.py")) + [MODULE]:
        if path.name == "kinds.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and re.fullmatch(r"hqgan-(enhance|sr\d?|synth)|(ablation|redcnn)-enhance", node.value)):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    # nn/: architecture ids ("hqgan-synth"), not model names
    skipped = {"QHQGANLib/nn/build.py", "QHQGANLib/nn/synthesis.py"}
    offenders = [o for o in offenders if o.split(":")[0] not in skipped]
    assert not offenders, offenders


def test_train_enhance_defaults_are_train_configs():
    """The training command's defaults are TrainConfig's (checked field by field: no drift between the two)."""
    import dataclasses

    from QHQGANLib.apps.cli import build_parser
    from QHQGANLib.training.enhancement import TrainConfig

    args = vars(build_parser().parse_args(["train-enhance", "--input", "ct.nrrd"]))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    defaults["dose_min"], defaults["dose_max"] = TrainConfig.dose_range
    compared = [name for name in args if name in defaults and name not in ("output_dir", "resume")]
    assert len(compared) >= 15, compared
    differing = {name: (args[name], defaults[name]) for name in compared if args[name] != defaults[name]}
    assert not differing, f"CLI default != TrainConfig default: {differing}"
