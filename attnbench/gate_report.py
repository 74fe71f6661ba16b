"""A gate's result for machines and pull requests: `to_json` (the object docs/gate.schema.json describes) and
`to_markdown` (a short summary: regressions, improvements and cases not judged, fit for a pull-request comment
or $GITHUB_STEP_SUMMARY). `gate --format json|md` and `ab --format json|md` print them."""

from __future__ import annotations

import math
from typing import Any

from attnbench.gate import MIN_SHIFT_CASES, VERDICTS, GateCase, GateResult

JSON_SCHEMA_ID = "attnbench-gate/1"  # the `schema` field: bumped when a field changes meaning or goes away
SHOWN = ("regression", "improvement", "unsteady", "too_few_rounds")  # Markdown rows; unchanged cases are counted
MAX_LABEL = 200  # characters of a side's file list in the Markdown summary


def verdict(result: GateResult) -> str:
    """fail (a case regressed), pass, or no_verdict (no case had enough rounds on both sides)."""
    return "fail" if result.regressions else "pass" if result.has_verdict else "no_verdict"


def shift_removed(result: GateResult) -> bool:
    """Whether the run-wide shift was divided out before judging (not --absolute, enough judged cases)."""
    return not result.absolute and len(result.judged) >= MIN_SHIFT_CASES


def _num(x: float) -> float | None:
    """A finite float, or None (JSON null) for nan and inf."""
    return float(x) if math.isfinite(x) else None


def _case(c: GateCase) -> dict[str, Any]:
    interval = None if math.isnan(c.ci_low) else [_num(c.ci_low - 1), _num(c.ci_high - 1)]
    return {
        "case_id": c.key,
        "name": c.name,
        "status": c.verdict,
        "rounds_baseline": c.n_base,
        "rounds_new": c.n_new,
        "median_baseline": _num(c.median_base),
        "median_new": _num(c.median_new),
        "ratio": _num(c.ratio),
        "effect": _num(c.change),
        "effect_interval": interval,
        "vs_run": _num(c.vs_run),
        "p": _num(c.p_raw),
        "p_holm": _num(c.p_holm),
        "noise": _num(c.noise),
    }


def to_json(result: GateResult) -> dict[str, Any]:
    """The gate as a JSON-able object (docs/gate.schema.json): verdict, options, run-wide shift, one entry per
    case (effect = new/baseline - 1 with its interval at confidence 1 - alpha, p, p_holm, status, noise), the
    cases on one side only, and the notes. Non-finite numbers are null."""
    return {
        "schema": JSON_SCHEMA_ID,
        "verdict": verdict(result),
        "exit_code": result.exit_code,
        "summary": result.summary(),
        "baseline": result.baseline,
        "new": result.new,
        "metric": result.metric,
        "unit": result.unit,
        "higher_is_better": result.higher_is_better,
        "options": {
            "threshold": result.threshold,
            "alpha": result.alpha,
            "min_rounds": result.min_rounds,
            "absolute": result.absolute,
            "across_hardware": result.across_hardware,
        },
        "run_shift": {"change": _num(result.run_shift), "removed": shift_removed(result), "cases": len(result.judged)},
        "counts": {v: len(result.with_verdict(v)) for v in VERDICTS},
        "cases": [_case(c) for c in result.cases],
        "only_in_baseline": [{"case_id": c.key, "name": c.name} for c in result.only_in_baseline],
        "only_in_new": [{"case_id": c.key, "name": c.name} for c in result.only_in_new],
        "notes": list(result.notes),
    }


def _md(text: str) -> str:
    """A table cell: one line, pipes and backticks escaped."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.1%}"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _label(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def to_markdown(result: GateResult, title: str = "attnbench gate") -> str:
    """A short Markdown summary: a heading with the verdict, one line of counts and options, a table of the
    regressions, improvements and cases not judged (unchanged cases are only counted), then the notes."""
    head = {"fail": "FAIL", "pass": "PASS", "no_verdict": "NO VERDICT"}[verdict(result)]
    counts = {
        "regression": "regressed",
        "improvement": "improved",
        "unsteady": "unsteady (not judged)",
        "too_few_rounds": "with too few rounds (not judged)",
        "unchanged": "unchanged",
    }
    said = ", ".join(f"{len(result.with_verdict(v))} {counts[v]}" for v in VERDICTS if result.with_verdict(v))
    shift = (
        f"run-wide shift {result.run_shift:+.1%} removed"
        if shift_removed(result)
        else "changes judged as measured (no run-wide shift removed)"
    )
    confidence = f"{1 - result.alpha:.0%}"
    lines = [
        f"### {title}: {head}",
        "",
        f"{len(result.cases)} cases compared: {said or 'none'}. Metric {_md(result.metric)}"
        f"{' (higher is better)' if result.higher_is_better else ''}, threshold {result.threshold:.1%}, "
        f"alpha {result.alpha:g} (Welch t on log round medians, Holm-corrected); {shift}.",
        "",
        f"Baseline: {_md(_label(result.baseline))}; new: {_md(_label(result.new))}.",
    ]
    shown = [c for v in SHOWN for c in sorted(result.with_verdict(v), key=lambda c: -abs(_zero(c.change)))]
    if shown:
        unit = f" {result.unit}" if result.unit else ""
        lines += [
            "",
            f"| status | case | baseline | new | change | {confidence} interval | p (Holm) | rounds |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in shown:
            interval = "-" if math.isnan(c.ci_low) else f"[{_pct(c.ci_low - 1)}, {_pct(c.ci_high - 1)}]"
            cells = [
                c.verdict.replace("_", " "),
                _md(c.name),
                f"{c.median_base:.4g}{unit}",
                f"{c.median_new:.4g}{unit}",
                _pct(c.change),
                interval,
                _p(c.p_holm),
                f"{c.n_base}/{c.n_new}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    n_unchanged = len(result.with_verdict("unchanged"))
    if n_unchanged:
        lines += ["", f"{n_unchanged} unchanged case{'s' if n_unchanged != 1 else ''} not listed."]
    if result.only_in_baseline or result.only_in_new:
        lines += [
            "",
            f"{len(result.only_in_baseline)} cases only in the baseline, {len(result.only_in_new)} only in new "
            "(not compared).",
        ]
    if result.notes:
        lines += [""] + [f"- note: {_md(note)}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _zero(x: float) -> float:
    return 0.0 if math.isnan(x) else x
