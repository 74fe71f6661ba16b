"""Regression gate: compare two sides' run-level samples case by case and decide pass, fail or no verdict.

Pure logic behind `python -m attnbench gate BASELINE NEW` (or `gate A1 A2 -- B1 B2`): load, align, test,
decide; the CLI prints `format_rows(result)`, `result.summary()` and `result.notes`, and exits with
`result.exit_code`.

Why rounds. Repeats measured in one process share its memory layout, frequency state and neighbour load,
so two runs of identical code differ "significantly" by any test on pooled repeats. The unit of evidence
here is the round: `attnbench run` measures every case in `rounds` rounds, each in a fresh worker process
with a shuffled case order, and the gate sees one value per case and round, the round's median
(`attnbench.stats.round_medians`). Several files per side are accepted; each file contributes its rounds,
so `gate A1.csv A2.csv -- B1.csv B2.csv` pools two runs per side.

Inputs, all of one kind: results CSVs from `attnbench run`, whose raw repeats are read from the
FILE.samples.csv beside them (the chosen metric; per case and round the last block of repeats), aligned by
case_id and named from FILE.csv's rows; or pytest-benchmark JSONs with raw data (`--benchmark-save-data`;
`stats.data`, seconds per iteration, converted to ms; latency only), aligned by `fullname`, else by `name`
when no fullname matches and names are unique. A pytest-benchmark file is one process, hence one round:
gate needs at least `min_rounds` saved runs per side and refuses fewer with a message saying so.
Non-finite samples are dropped. Cases on one side only are listed, never failures.

Per case with >= min_rounds (default 3) round medians on both sides: ratio = median(new rounds) /
median(base rounds), change = ratio - 1; p_raw and the interval from Welch's t on log round medians
(`attnbench.stats.log_ratio_test`), so a case's own between-round noise sets how large a change must be to
count. Before testing, the run-wide shift (median over >= 8 judged cases of the ratio, `estimate_run_shift`) is divided
out of the new side: two runs minutes apart differ as a whole (frequency, host load), which rounds inside one run
cannot see; `absolute=True` (CLI --absolute) judges changes as measured. vs_run = the change after that;
p_holm by Holm's step-down method over all judged cases (one family for both directions), so
identical code flags any case with probability <= alpha however large the suite. Verdict: regression if
worse by more than `threshold` and p_holm <= alpha, improvement if better by more than `threshold` and
p_holm <= alpha, else unchanged ("worse" = larger, or smaller for HIGHER_IS_BETTER metrics).
too_few_rounds: under `min_rounds` on a side; unsteady: a case whose latency rows are marked contended on
either side (attnbench.contention: its repeats waited for CPU cores even after retries); both kinds are shown,
kept out of the Holm family and the run-wide shift, and never pass or fail (a note says why). When no case
could be judged the result has no verdict: the summary says so, exit code 0, and the notes say what to supply
(more rounds or more files). noise: the larger side's standard deviation of log
round medians (~ relative spread of one round). exit_code: 1 if any case regressed, else 0; usage errors
raise `GateError` (exit 2).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import stats
from attnbench.errors import AttnbenchError, GateError
from attnbench.gate_inputs import align_names, load_side, side_hardware

VERDICTS = ("regression", "improvement", "unsteady", "too_few_rounds", "unchanged")  # display order
NOT_JUDGED = ("too_few_rounds", "unsteady")  # kept out of the Holm family and the run-wide shift
MIN_ROUNDS = 3  # below this a side's noise is not estimable enough for a verdict
MIN_SHIFT_CASES = 8  # the run-wide shift is removed only when at least this many cases estimate it
HIGHER_IS_BETTER = frozenset(
    {"throughput", "tokens_per_s", "achieved_tflops", "achieved_gbps", "frac_bandwidth", "frac_flops", "top1", "top5"}
)


@dataclass(frozen=True)
class CaseRef:
    """A case seen on one side only."""

    key: str
    name: str


@dataclass(frozen=True)
class GateCase:
    """The comparison of one case over round medians; ratio and CI are new/base."""

    key: str  # case_id, or pytest-benchmark fullname/name
    name: str  # for display: "rala_eager op fwd fp32 b1 14x14" or the benchmark name
    n_base: int  # rounds
    n_new: int
    median_base: float  # median of the round medians
    median_new: float
    ratio: float
    change: float  # ratio - 1; positive = larger values in new
    ci_low: float  # of the ratio (Welch on logs, confidence 1 - alpha); nan for too_few_rounds
    ci_high: float
    noise: float  # larger side's std of log round medians; nan below 2 rounds
    vs_run: float  # change relative to the run-wide shift (what the verdict judges); = change when not removed
    p_raw: float  # nan for too_few_rounds
    p_holm: float
    verdict: str  # one of VERDICTS


@dataclass(frozen=True)
class GateResult:
    """A gate's outcome: the options it ran with, one GateCase per common case, one-sided cases, notes."""

    baseline: str
    new: str
    metric: str
    unit: str
    threshold: float
    alpha: float
    min_rounds: int
    higher_is_better: bool
    cases: tuple[GateCase, ...]  # cases on both sides, in baseline order
    only_in_baseline: tuple[CaseRef, ...] = ()
    only_in_new: tuple[CaseRef, ...] = ()
    notes: tuple[str, ...] = ()  # warnings worth printing under the table
    run_shift: float = 0.0  # run-wide change removed before judging (median over cases), 0 when not removed
    absolute: bool = False  # changes judged as measured (no run-wide shift removed)
    across_hardware: bool = False  # sides measured on different hardware were allowed

    def with_verdict(self, verdict: str) -> tuple[GateCase, ...]:
        return tuple(c for c in self.cases if c.verdict == verdict)

    @property
    def regressions(self) -> tuple[GateCase, ...]:
        return self.with_verdict("regression")

    @property
    def improvements(self) -> tuple[GateCase, ...]:
        return self.with_verdict("improvement")

    @property
    def judged(self) -> tuple[GateCase, ...]:
        return tuple(c for c in self.cases if c.verdict not in NOT_JUDGED)

    @property
    def has_verdict(self) -> bool:
        """False when no case had enough rounds on both sides: the gate could not decide anything."""
        return bool(self.judged)

    @property
    def passed(self) -> bool:
        return not self.regressions

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def summary(self) -> str:
        """One line: verdict counts and one-sided cases, e.g. for under the CLI table."""
        labels = {
            "regression": "regressed",
            "improvement": "improved",
            "too_few_rounds": "too few rounds",
            "unsteady": "unsteady (contended, not judged)",
        }
        counts = ", ".join(f"{len(self.with_verdict(v))} {labels.get(v, v)}" for v in VERDICTS)
        head = "FAIL" if self.regressions else "PASS" if self.has_verdict else "NO VERDICT"
        line = f"{head}: {len(self.cases)} cases compared ({counts})"
        if self.only_in_baseline or self.only_in_new:
            line += f"; {len(self.only_in_baseline)} only in baseline, {len(self.only_in_new)} only in new"
        return line

    def to_frame(self) -> pd.DataFrame:
        columns = list(GateCase.__dataclass_fields__)
        return pd.DataFrame([asdict(c) for c in self.cases], columns=columns)


def parse_threshold(value: str | float) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a plain number must be a fraction below 1 (write '150%' for 1.5)."""
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise GateError(f"threshold {text!r} is not a number; write it like 5% or 0.05") from None
    if not math.isfinite(number) or number < 0:
        raise GateError(f"threshold {text!r} must be a non-negative change; write it like 5% or 0.05")
    if not text.endswith("%") and number >= 1:
        raise GateError(f"threshold {text!r} reads as {number:.0%}; write {text}% for {text} percent, or a fraction")
    return number


def _check_options(alpha: float, min_rounds: int) -> float:
    if not 0 < alpha < 1:
        raise GateError(f"alpha {alpha} must lie strictly between 0 and 1, e.g. 0.05")
    if min_rounds < 2:
        raise GateError(f"min_rounds {min_rounds} must be at least 2 (one round has no noise estimate)")
    return float(alpha)


def gate_rounds(
    base: Mapping[str, Sequence[float] | np.ndarray],
    new: Mapping[str, Sequence[float] | np.ndarray],
    *,
    threshold: float | str = 0.05,
    alpha: float = 0.05,
    metric: str = "latency",
    min_rounds: int = MIN_ROUNDS,
    names: Mapping[str, str] | None = None,
    unit: str = "",
    absolute: bool = False,
    unsteady: Collection[str] = (),
) -> GateResult:
    """Judge every case in both mappings (case key -> round medians); see the module docstring. Cases in
    `unsteady` (contended on a side) get that verdict and are not judged."""
    threshold = parse_threshold(threshold)
    alpha = _check_options(alpha, min_rounds)
    names = names or {}
    common = [k for k in base if k in new]
    if not common:
        raise GateError("no case is in both baseline and new; compare runs of the same suite")

    higher_is_better = metric in HIGHER_IS_BETTER
    arrays = {k: (stats.finite(base[k]), stats.finite(new[k])) for k in common}
    unsteady = set(unsteady)
    judged = [k for k in common if min(arrays[k][0].size, arrays[k][1].size) >= min_rounds and k not in unsteady]
    shift = 0.0 if absolute else estimate_run_shift(arrays, judged)
    tests = {k: stats.log_ratio_test(arrays[k][0], arrays[k][1] / (1 + shift), confidence=1 - alpha) for k in judged}
    p_holm = dict(zip(judged, stats.holm([tests[k][0] for k in judged])))

    cases = []
    for key in common:
        b, n = arrays[key]
        median_base = float(np.median(b)) if b.size else math.nan
        median_new = float(np.median(n)) if n.size else math.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.divide(median_new, median_base))
        p_raw, ci_low, ci_high = tests.get(key, (math.nan, math.nan, math.nan))
        vs_run = ratio / (1 + shift) - 1
        if key in p_holm:
            verdict = _verdict(vs_run, p_holm[key], threshold, alpha, higher_is_better)
        else:
            verdict = "unsteady" if key in unsteady else "too_few_rounds"
        cases.append(
            GateCase(
                key=key,
                name=names.get(key, key),
                n_base=int(b.size),
                n_new=int(n.size),
                median_base=median_base,
                median_new=median_new,
                ratio=ratio,
                change=ratio - 1,
                ci_low=ci_low,
                ci_high=ci_high,
                noise=max(stats.log_sd(b), stats.log_sd(n)),
                vs_run=vs_run,
                p_raw=p_raw,
                p_holm=p_holm.get(key, math.nan),
                verdict=verdict,
            )
        )

    return GateResult(
        baseline="baseline",
        new="new",
        metric=metric,
        unit=unit,
        threshold=threshold,
        alpha=alpha,
        min_rounds=min_rounds,
        higher_is_better=higher_is_better,
        cases=tuple(cases),
        only_in_baseline=tuple(CaseRef(k, names.get(k, k)) for k in base if k not in new),
        only_in_new=tuple(CaseRef(k, names.get(k, k)) for k in new if k not in base),
        notes=_unsteady_notes(cases) + _round_notes(cases, min_rounds) + _shift_notes(shift, len(judged), absolute),
        run_shift=shift,
        absolute=absolute,
    )


def estimate_run_shift(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], judged: Sequence[str]) -> float:
    """The run-wide change: median over the judged cases of median(new) / median(base), minus 1; 0 below
    MIN_SHIFT_CASES cases. Two runs made minutes apart differ as a whole (CPU frequency, the host's load, a
    neighbouring VM): that moves every case together, and the rounds of one run cannot see it. A median over
    cases is not moved by a regression in fewer than half of them."""
    if len(judged) < MIN_SHIFT_CASES:
        return 0.0
    logs = [math.log(np.median(arrays[k][1]) / np.median(arrays[k][0])) for k in judged]
    return math.exp(float(np.median(logs))) - 1


def _shift_notes(shift: float, n_judged: int, absolute: bool) -> tuple[str, ...]:
    if absolute or not n_judged:
        return ()
    if n_judged < MIN_SHIFT_CASES:
        return (f"only {n_judged} judged cases: changes are judged as measured (no run-wide shift removed)",)
    return (
        f"run-wide shift {shift:+.1%} (median over {n_judged} cases) removed before judging each case; a change "
        "that slows every case alike is not flagged here: check it with `attnbench ab` or --absolute",
    )


def _verdict(change: float, p_holm: float, threshold: float, alpha: float, higher_is_better: bool) -> str:
    if p_holm > alpha:
        return "unchanged"
    worse_by = -change if higher_is_better else change
    return "regression" if worse_by > threshold else "improvement" if worse_by < -threshold else "unchanged"


def _unsteady_notes(cases: list[GateCase]) -> tuple[str, ...]:
    flagged = [c for c in cases if c.verdict == "unsteady"]
    if not flagged:
        return ()
    return (
        f"{len(flagged)} of {len(cases)} cases are unsteady: contended on a side (most repeats waited for a CPU "
        "core, or the GPU throttled, even after retries), so their times say nothing about the code and they "
        "were neither passed nor failed; re-run them on a quiet machine or with fewer threads",
    )


def _round_notes(cases: list[GateCase], min_rounds: int) -> tuple[str, ...]:
    few = [c for c in cases if c.verdict == "too_few_rounds"]
    if not few:
        return ()
    least = min(min(c.n_base, c.n_new) for c in few)
    what = (
        f"{len(few)} of {len(cases)} cases have fewer than {min_rounds} rounds on a side (down to {least}) and "
        "were not judged"
    )
    if len(few) == len(cases):
        what = f"no verdict: every case has fewer than {min_rounds} rounds on a side (down to {least})"
    return (
        f"{what}; run with --rounds {max(5, min_rounds)} or pass several files per side "
        "(gate A1.csv A2.csv A3.csv -- B1.csv B2.csv B3.csv)",
    )


def gate(
    baseline: str | Path | Sequence[str | Path],
    new: str | Path | Sequence[str | Path],
    *,
    threshold: float | str = 0.05,
    alpha: float = 0.05,
    metric: str = "latency",
    min_rounds: int = MIN_ROUNDS,
    across_hardware: bool = False,
    absolute: bool = False,
) -> GateResult:
    """Compare NEW against BASELINE (each one file or several: results CSVs or pytest-benchmark JSONs).
    Results CSVs whose env files name different hardware on the two sides are refused unless `across_hardware`."""
    threshold = parse_threshold(threshold)
    alpha = _check_options(alpha, min_rounds)
    base_set, new_set = load_side(baseline, metric), load_side(new, metric)
    if not across_hardware and base_set.kind == new_set.kind == "results":
        from attnbench.compare import check_same_hardware

        try:
            check_same_hardware(base_set.label, side_hardware(base_set), new_set.label, side_hardware(new_set))
        except AttnbenchError as exc:
            raise GateError(str(exc)) from None
    if base_set.kind != new_set.kind:
        raise GateError(
            f"{base_set.label} holds {base_set.kind} data but {new_set.label} holds {new_set.kind} data; "
            "compare files of the same kind"
        )
    if base_set.kind == "pytest-benchmark":
        for side in (base_set, new_set):
            if len(side.paths) < min_rounds:
                raise GateError(
                    f"a pytest-benchmark JSON is one process (one round) and {side.label} gives "
                    f"{len(side.paths)}; save at least {min_rounds} runs per side and pass them all: "
                    "gate A1.json A2.json A3.json -- B1.json B2.json B3.json"
                )
    base_set, new_set = align_names(base_set, new_set)
    if not set(base_set.samples) & set(new_set.samples):
        raise GateError(
            f"no case is in both {base_set.label} ({len(base_set.samples)} cases) and {new_set.label} "
            f"({len(new_set.samples)} cases); compare runs of the same suite"
        )
    result = gate_rounds(
        base_set.samples,
        new_set.samples,
        threshold=threshold,
        alpha=alpha,
        metric=metric,
        min_rounds=min_rounds,
        names={**new_set.names, **base_set.names},
        unit=base_set.unit or new_set.unit,
        absolute=absolute,
        unsteady=base_set.contended | new_set.contended,
    )
    return replace(result, baseline=base_set.label, new=new_set.label, across_hardware=across_hardware)


def format_rows(result: GateResult) -> list[dict[str, str]]:
    """Display rows (all values strings, same keys in every row): regressions, improvements, unsteady, too_few_rounds,
    unchanged, each by size of change. Keys: case, id, rounds, baseline, new, change, ci, vs run, noise, p,
    p_holm, verdict."""
    rank = {v: i for i, v in enumerate(VERDICTS)}
    ordered = sorted(result.cases, key=lambda c: (rank[c.verdict], -abs(np.nan_to_num(c.change))))
    unit = f" {result.unit}" if result.unit else ""
    return [
        {
            "case": c.name,
            "id": c.key,
            "rounds": f"{c.n_base}/{c.n_new}",
            "baseline": f"{c.median_base:.4g}{unit}",
            "new": f"{c.median_new:.4g}{unit}",
            "change": _percent(c.change),
            "ci": "-" if math.isnan(c.ci_low) else f"[{_percent(c.ci_low - 1)}, {_percent(c.ci_high - 1)}]",
            "vs run": _percent(c.vs_run),
            "noise": "-" if math.isnan(c.noise) else f"{c.noise:.1%}",
            "p": _p(c.p_raw),
            "p_holm": _p(c.p_holm),
            "verdict": c.verdict,
        }
        for c in ordered
    ]


def _percent(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.1%}"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")
