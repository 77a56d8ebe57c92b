"""The Markdown report and the figure of a reader study's analysis (:mod:`QHQGANLib.metrics.reader_stats`).

Console usage::

    >>> from QHQGANLib.metrics.reader_report import markdown_report, plot_results
    >>> text = markdown_report(results, title="Liver study")
    >>> plot_results(results, "reader_study.png")     # matplotlib, Agg canvas (no display, no pyplot state)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _ci(pair: Sequence[float], digits: int = 2) -> str:
    low, high = pair
    return f"[{_f(low, digits)}, {_f(high, digits)}]"


def _p(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _agreement_line(agreement: Mapping[str, Any]) -> str:
    if agreement["n_readers"] < 2:
        return f"Agreement: {agreement.get('note', 'needs two readers')}."
    kappa_name = ("Cohen's kappa" if agreement["n_readers"] == 2 else "mean pairwise Cohen's kappa") + \
        (f" ({agreement['kappa_weights']} weights)" if agreement.get("kappa_weights") not in (None, "none") else "")
    text = (f"Agreement ({agreement['n_readers']} readers, {agreement['n_units']} items): {kappa_name} "
            f"{_f(agreement['kappa'])}, Krippendorff's alpha ({agreement['level']}) {_f(agreement['alpha'])}.")
    return text + (f" {agreement['note']}." if agreement.get("note") else "")


def markdown_report(results: Mapping[str, Any], title: str = "Reader study") -> str:
    """The analysis as Markdown: what was read, then one section per question, then 2AFC preferences."""
    level = f"{results['confidence']:.0%}"
    lines = [f"# {title}", "",
             f"{results['n_readings']} readings of {results['n_cases']} cases by {len(results['readers'])} "
             f"reader(s) ({', '.join(results['readers'])}); mode: {results['mode']}; methods: "
             f"{', '.join(results['methods'])}; reference: {results['reference']}.", ""]
    if results.get("skipped_rows"):
        lines += [f"**{results['skipped_rows']} damaged response row(s) were ignored** (CRC mismatch).", ""]
    lines += [f"Intervals are {level} bootstrap intervals resampling cases (the readings of one case are not "
              "independent). Comparisons: per case, the mean over readers of the paired difference (method - "
              "reference, same reader and case); Wilcoxon signed-rank test on those differences, p adjusted "
              "(Benjamini-Hochberg) over the methods compared.", ""]
    for key, q in results["questions"].items():
        if q["type"] == "scale":
            lines += [f"## {q['text']} ({q['min']}-{q['max']}, higher is better)", ""]
            lines += _table(["method", "readings", "cases", "mean", f"{level} CI", "median", f"{level} CI",
                             "seconds / item"],
                            [[r["method"], r["n_readings"], r["n_cases"], _f(r["mean"]), _ci(r["mean_ci"]),
                              _f(r["median"], 1), _ci(r["median_ci"], 1), _f(r["mean_seconds"], 1)]
                             for r in q["summary"]])
            lines += ["", f"Against {results['reference']}:", ""]
            lines += _table(["method", "cases", "mean difference", f"{level} CI", "Wilcoxon p", "adjusted p",
                             "verdict"],
                            [[r["method"], r["n_cases"], f"{r['mean_difference']:+.2f}" if math.isfinite(
                                r["mean_difference"]) else "n/a", _ci(r["ci"]), _p(r["p_wilcoxon"]),
                              _p(r.get("p_adjusted", math.nan)), r.get("verdict", r.get("note", ""))]
                             for r in q["comparisons"]])
        elif q["type"] == "yesno":
            lines += [f"## {q['text']} (yes / no)", ""]
            lines += _table(["method", "readings", "yes", "proportion", f"{level} CI (Wilson)"],
                            [[r["method"], r["n_readings"], r["yes"], _f(r["proportion"]), _ci(r["ci"])]
                             for r in q["summary"]])
        elif q["type"] == "choice":
            lines += [f"## {q['text']} (two-alternative forced choice)", ""]
            lines += _table(["A", "B", "readings", "cases", "A preferred", "rate A", f"{level} CI (Wilson)",
                             "binomial p", "verdict"],
                            [[r["method_a"], r["method_b"], r["n_readings"], r["n_cases"], r["a_preferred"],
                              _f(r["rate_a"]), _ci(r["ci"]), _p(r["p_binomial"]), r["verdict"]]
                             for r in results["preferences"]])
            lines += ["", "Readings of one case by several readers are counted separately in these rates."]
        else:
            continue
        lines += ["", _agreement_line(q["agreement"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def plot_results(results: Mapping[str, Any], path) -> Path:
    """A PNG: per 1-5 question, each method's mean with its interval; for pairs, the preference rates."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scales = [(k, q) for k, q in results["questions"].items() if q["type"] == "scale"]
    panels = len(scales) + (1 if results["preferences"] else 0)
    if not panels:
        raise ValueError("nothing to plot: no 1-5 questions and no preferences")
    fig = Figure(figsize=(4.2 * panels, 3.2 + 0.25 * len(results["methods"])), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, (key, q) in zip(axes, scales):
        rows = [r for r in q["summary"] if r["n_readings"]]
        means = [r["mean"] for r in rows]
        errors = [[max(0.0, r["mean"] - r["mean_ci"][0]) for r in rows],
                  [max(0.0, r["mean_ci"][1] - r["mean"]) for r in rows]]
        ax.barh(range(len(rows)), means, xerr=errors, color="#5b8db8", capsize=4)
        ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
        ax.set_xlim(q["min"] - 0.5 if q["min"] > 1 else 0, q["max"])
        ax.invert_yaxis()
        ax.set_title(q["text"], fontsize=10)
        ax.set_xlabel(f"mean score, {results['confidence']:.0%} CI")
    if results["preferences"]:
        ax = axes[-1]
        rows = results["preferences"]
        rates = [r["rate_a"] for r in rows]
        errors = [[r["rate_a"] - r["ci"][0] for r in rows], [r["ci"][1] - r["rate_a"] for r in rows]]
        ax.barh(range(len(rows)), rates, xerr=errors, color="#c07a4a", capsize=4)
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [f"{r['method_a']} vs {r['method_b']}" for r in rows])
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_title("Preferred (2AFC)", fontsize=10)
        ax.set_xlabel(f"rate of the first, {results['confidence']:.0%} CI")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out


def summary_lines(results: Mapping[str, Any]) -> List[str]:
    """A few lines for a terminal: the main question's means and comparisons, or the preferences."""
    out: List[str] = []
    for key, q in results["questions"].items():
        if q["type"] != "scale":
            continue
        means = ", ".join(f"{r['method']} {_f(r['mean'])}" for r in q["summary"])
        out.append(f"{q['text']}: mean {means}")
        for r in q["comparisons"]:
            out.append(f"  {r['method']} - {r['reference']}: {_f(r['mean_difference'])} {_ci(r['ci'])}, "
                       f"Wilcoxon p {_p(r['p_wilcoxon'])}")
        break
    for r in results["preferences"]:
        out.append(f"{r['method_a']} preferred over {r['method_b']} in {r['a_preferred']}/{r['n_readings']} "
                   f"({_f(r['rate_a'])} {_ci(r['ci'])}), p {_p(r['p_binomial'])}")
    return out


def results_for_json(results: Mapping[str, Any]) -> Dict[str, Any]:
    """The results with tuples as lists and NaN as None (strict JSON)."""
    def clean(value):
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return clean(results)
