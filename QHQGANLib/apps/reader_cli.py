"""``qhqgan reader-study create|analyze``: blinded reader studies from the command line.

Console usage::

    # two cases, each as files per method (every method of a case on the same grid)
    qhqgan reader-study create study1 --mode pairs --seed 7 --window abdomen \\
        --case liver1 --method low-dose=liver1_25pct.nrrd --method hqgan=liver1_hqgan.nrrd \\
        --case liver2 --method low-dose=liver2_25pct.nrrd --method hqgan=liver2_hqgan.nrrd
    # or listed in a file: JSON {"case": {"method": "path"}} or CSV with columns case,method,path
    qhqgan reader-study create study2 --cases-file cases.csv --key ../keys/study2_key.json
    # or made here from normal-dose scans: simulated 25 % dose, then each model on it
    qhqgan reader-study create study3 --normal-dose liver1=ct1/ --normal-dose liver2=ct2.nrrd \\
        --produce normal-dose,low-dose,hqgan-enhance,redcnn-enhance --dose 0.25
    # readers read in Slicer (module "QHQGAN Reader"); then, with the key:
    qhqgan reader-study analyze study1 [--key KEY] [--reference low-dose] [--output-dir study1-analysis]

The unblinding key never goes into the study folder: ``--key`` elsewhere, or by default
``study1-unblinding-key.json`` beside it (a study folder holding a key is refused for reading).
``analyze`` refuses response files that are not one genuine file per reader (copies, renamed or
re-signed files, two files of one reader, another study's file, edited rows) and answers off their
question's scale, with one line naming the file (and item and value).
A custom window with a negative bound is written ``--window=-160,240``.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict

from ..tasks.reader_study import DISPLAY_WINDOWS, MODES


class _CaseAction(argparse.Action):
    """``--case NAME`` opens a case; the ``--method`` options after it belong to it."""

    def __call__(self, parser, namespace, value, option_string=None):
        cases = list(getattr(namespace, self.dest, None) or [])
        if any(name == value for name, _ in cases):
            parser.error(f"--case {value} is given twice")
        cases.append((value, {}))
        setattr(namespace, self.dest, cases)


class _MethodAction(argparse.Action):
    """``--method METHOD=PATH``: an image of the case named by the last ``--case``."""

    def __call__(self, parser, namespace, value, option_string=None):
        cases = getattr(namespace, self.dest, None)
        if not cases:
            parser.error("--method METHOD=PATH comes after the --case NAME it belongs to")
        method, sep, path = value.partition("=")
        if not sep or not method.strip() or not path.strip():
            parser.error(f"--method {value}: write METHOD=PATH, e.g. --method hqgan=liver1_hqgan.nrrd")
        if method in cases[-1][1]:
            parser.error(f"--method {method} is given twice for case {cases[-1][0]}")
        cases[-1][1][method.strip()] = path.strip()


def add_reader_study_commands(sub, common: argparse.ArgumentParser) -> None:
    """Add ``reader-study create`` and ``reader-study analyze`` to the ``qhqgan`` parser's subcommands."""
    study = sub.add_parser("reader-study", parents=[common],
                           help="blinded reader studies: create a study folder from cases x methods, analyse the answers")
    actions = study.add_subparsers(dest="reader_command", metavar="ACTION")
    study.set_defaults(func=lambda args: study.print_help() or 2)

    p = actions.add_parser("create", parents=[common], help="write a new blinded study folder and its unblinding key")
    p.add_argument("study", help="the new study folder (refused when it exists and is not empty)")
    p.add_argument("--case", dest="cases", action=_CaseAction, metavar="NAME", help="start a case (repeatable)")
    p.add_argument("--method", dest="cases", action=_MethodAction, metavar="METHOD=PATH",
                   help="an image of the last --case: method name and volume file or DICOM folder (repeatable)")
    p.add_argument("--cases-file", help="JSON {case: {method: path}} or CSV with columns case,method,path "
                                        "(paths relative to the file)")
    p.add_argument("--normal-dose", action="append", default=[], metavar="NAME=PATH",
                   help="a case made here from its normal-dose scan with --produce (repeatable)")
    p.add_argument("--produce", default="normal-dose,low-dose,hqgan-enhance",
                   help="methods made for --normal-dose cases: normal-dose, low-dose, enhancement model names "
                        "(MODEL@0.5 for a strength); default %(default)s")
    p.add_argument("--dose", type=float, default=0.25, help="simulated dose fraction for --produce (default 0.25)")
    p.add_argument("--device", default=None, help="compute device for the models (default auto)")
    p.add_argument("--mode", default="single", choices=MODES,
                   help="single: one image per item, 1-5 questions; pairs: two side by side, which is better")
    p.add_argument("--pairs", default="all", choices=("all", "reference"),
                   help="pairs mode: every pair of methods, or each against --reference")
    p.add_argument("--reference", help="the reference method (pairs=reference; the default of analyze)")
    p.add_argument("--seed", type=int, default=0, help="seed of the blinding and order (default 0)")
    p.add_argument("--window", default="abdomen",
                   help=f"display window: {', '.join(DISPLAY_WINDOWS)} or --window=LOW,HIGH in HU")
    p.add_argument("--title", default="", help="shown to the readers (must not name a method)")
    p.add_argument("--key", help="where to write the unblinding key, outside the study folder "
                                 "(default STUDY-unblinding-key.json beside the study)")
    p.add_argument("--reader-order", default="per-reader", choices=("per-reader", "fixed"),
                   help="each reader in their own seeded order (default), or all in the study's order")
    p.add_argument("--compress", action="store_true",
                   help="gzip the images (smaller; file sizes then differ between methods)")
    p.add_argument("--force", action="store_true", help="accept a non-CT modality or non-HU values")
    p.set_defaults(func=cmd_reader_study_create, cases=None)

    p = actions.add_parser("analyze", parents=[common],
                           help="unblind the answers and write a Markdown report, a plot and JSON results")
    p.add_argument("study", help="the study folder (its responses/ hold one CSV per reader)")
    p.add_argument("--key", help="the unblinding key (default STUDY-unblinding-key.json beside the study)")
    p.add_argument("--reference", help="compare every method with this one (default: the study's reference, "
                                       "else low-dose, else the first method)")
    p.add_argument("--output-dir", help="new folder for report.md, results.json, reader_study.png "
                                        "(default STUDY-analysis-<time> beside the study: never inside it)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--resamples", type=int, default=9999, help="bootstrap resamples (default 9999)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=cmd_reader_study_analyze)


def _cases_from_file(path: str) -> Dict[str, Dict[str, str]]:
    file = Path(path).expanduser()
    base = file.parent

    def resolve(p: str) -> str:
        return str(p if Path(p).expanduser().is_absolute() else base / p)

    if file.suffix.lower() == ".json":
        doc = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            raise ValueError(f"{file}: expected a JSON object {{case: {{method: path}}}}")
        return {str(c): {str(m): resolve(str(p)) for m, p in ms.items()} for c, ms in doc.items()}
    cases: Dict[str, Dict[str, str]] = {}
    with open(file, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"case", "method", "path"} <= set(rows[0]):
        raise ValueError(f"{file}: expected a CSV with the columns case,method,path")
    for row in rows:
        methods = cases.setdefault(row["case"].strip(), {})
        if row["method"].strip() in methods:
            raise ValueError(f"{file}: case {row['case']} lists method {row['method']} twice")
        methods[row["method"].strip()] = resolve(row["path"].strip())
    return cases


def cmd_reader_study_create(args: argparse.Namespace) -> int:
    from ..core.io import read_volume
    from ..core.outputs import check_output_path
    from ..core.progress import progress_reporter
    from ..tasks.reader_study import check_key_path, create_study, produce_methods

    check_output_path(args.study, folder=True)  # before any reading or model run
    key = check_key_path(args.study, args.key)
    cases: Dict[str, Dict[str, object]] = {}
    for name, methods in args.cases or []:
        cases[name] = dict(methods)
    if args.cases_file:
        for name, methods in _cases_from_file(args.cases_file).items():
            if name in cases:
                raise ValueError(f"case {name} is given both on the command line and in {args.cases_file}")
            cases[name] = methods
    for spec in args.normal_dose:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--normal-dose {spec}: write NAME=PATH")
        if name in cases:
            raise ValueError(f"case {name} is given twice")
        produced = produce_methods(read_volume(path, force=args.force), args.produce.split(","), dose=args.dose,
                                   seed=args.seed, device=args.device)
        cases[name] = dict(produced)
        _say(args, f"{name}: made {', '.join(produced)}")
    if not cases:
        raise ValueError("no cases: give --case NAME --method METHOD=PATH ..., --cases-file or --normal-dose")
    for name, methods in cases.items():  # files given by path: read with --force when asked
        for method, source in methods.items():
            if isinstance(source, str) and args.force:
                methods[method] = read_volume(source, force=True)
    with progress_reporter("writing the study", "none" if args.quiet else args.progress) as progress:
        folder = create_study(cases, args.study, mode=args.mode, seed=args.seed, window=args.window,
                              pairs=args.pairs, reference=args.reference, title=args.title, key_path=args.key,
                              reader_order=args.reader_order, compress=args.compress, progress=progress)
    manifest = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    _say(args, f"wrote {folder}: {manifest['n_items']} {args.mode} item(s) from {len(cases)} case(s)")
    _say(args, f"unblinding key: {key} (outside the study folder: keep it from the readers)")
    return 0


def cmd_reader_study_analyze(args: argparse.Namespace) -> int:
    from ..core.outputs import check_output_path, claim_output, timestamped_folder
    from ..metrics.reader_report import markdown_report, plot_results, results_for_json, summary_lines
    from ..metrics.reader_stats import analyze_readings
    from ..tasks.reading_session import load_readings

    study = Path(args.study).expanduser()
    if not 0.5 <= args.confidence < 1.0:
        raise ValueError(f"--confidence must be in [0.5, 1), got {args.confidence}")
    if args.resamples < 100:
        raise ValueError(f"--resamples must be at least 100, got {args.resamples}")
    out = Path(args.output_dir).expanduser() if args.output_dir else \
        timestamped_folder(f"{study.resolve().name}-analysis", study.resolve().parent)
    out = check_output_path(out, folder=True)
    if study.resolve() in [out.resolve(), *out.resolve().parents]:
        raise ValueError(f"{out}: the analysis unblinds the study; write it outside the study folder")
    data = load_readings(study, args.key)
    results = analyze_readings(data, reference=args.reference, confidence=args.confidence,
                               n_resamples=args.resamples, seed=args.seed)
    title = json.loads((study / "study.json").read_text(encoding="utf-8")).get("title") or study.name
    with claim_output(out):
        out.mkdir(exist_ok=True)
        (out / "report.md").write_text(markdown_report(results, title=f"Reader study: {title}"), encoding="utf-8")
        (out / "results.json").write_text(json.dumps(results_for_json(results), indent=2) + "\n", encoding="utf-8")
        plot_results(results, out / "reader_study.png")
    for line in summary_lines(results):
        _say(args, line)
    _say(args, f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'reader_study.png'}")
    return 0


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)
